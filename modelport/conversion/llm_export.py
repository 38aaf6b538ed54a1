"""A keras_hub causal LM exported for generation: one ONNX *step* with a key/value cache.

Each call of the step reads the token ids of this step (a whole prompt, or one new token per
sequence), the number of tokens each sequence already has in its cache, and the per-layer caches;
it returns the next-token logits of each sequence and the keys/values of the step's tokens, which
the caller writes into its caches. A new token costs one step instead of a re-run of the prefix.

How the model is traced: keras_hub's own serving contract. Its attention layers (GPT-2 and OPT
through ``CachedMultiHeadAttention``; Llama, Llama 3, Mistral, Qwen, Qwen 3, Gemma, Gemma 3) call
an attention function published in ``keras_hub.src.vllm.context`` with the projected (and rotated)
queries/keys/values of each token at its own position; learned position embeddings read the same
positions. Here that function is TensorFlow code: attention over the cache of each sequence (keys
before its own length) plus causal attention among the step's tokens, with the layer's sliding
window and logit soft cap. So the model's every detail (norms, embedding scale, RoPE variant, GQA)
stays keras_hub's, while each sequence in a batch sits at its own position: what continuous
batching needs. The step is traced as a pure function of the weights (``keras.StatelessScope``),
so tf2onnx sees a graph without weights and no 2 GiB protobuf limit applies; the weights are
written as initializers straight from the Keras variables, one at a time, optionally to one
external data file (``model.onnx.data``) for models of any size.

Step interface (``B`` sequences, ``T`` tokens each, ``L`` cache capacity, ``n`` layers):
  inputs   ``input_ids`` int32 [B, T]; ``past_lengths`` int32 [B] (tokens already cached);
           ``past_key_<i>`` [B, kv_heads, head_dim, L] (keys stored transposed, so scores are one
           MatMul); ``past_value_<i>`` [B, kv_heads, L, head_dim]
  outputs  ``logits`` float32 [B, vocab] (of each sequence's last step token);
           ``new_key_<i>`` / ``new_value_<i>`` [B, T, kv_heads, head_dim]
A ``generation.json`` beside the model describes it (``modelport.generation_model``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import FailedPrecondition, InvalidArgument
from modelport.generation_model import CONFIG_FILE, DATA_FILE, MODEL_FILE, GenerationConfig

log = logging.getLogger("modelport.conversion.llm")

EXTERNAL_MIN_BYTES = 1024  # tensors from this size go to the data file when writing external data
ALIGN_FROM = 1 << 20
ALIGNMENT = 64 << 10
NEG_INF = -1e9
DEFAULT_PARITY_TOKENS = 32
SUPPORTED = ("GPT2CausalLM", "OPTCausalLM", "LlamaCausalLM", "Llama3CausalLM", "MistralCausalLM",
             "QwenCausalLM", "Qwen3CausalLM", "GemmaCausalLM", "Gemma3CausalLM")


# ---- the model side ---------------------------------------------------------------------------

def _keras_hub_context():
    try:
        from keras_hub.src.vllm.context import get_vllm_context, vllm_context_scope
    except ImportError as e:
        raise FailedPrecondition(
            f"exporting a causal LM for generation needs keras-hub >= 0.32 ({e}); install it where the converter "
            "runs: pip install 'keras-hub==0.32.0'", details={"reason": "missing_package", "package": "keras-hub"},
        ) from None
    return vllm_context_scope, get_vllm_context


def is_causal_lm(model: Any) -> bool:
    """A keras_hub ``CausalLM`` task model (has a backbone with a token embedding)."""
    names = {c.__name__ for c in type(model).__mro__}
    return "CausalLM" in names and any(c.__module__.startswith("keras_hub.") for c in type(model).__mro__) \
        and hasattr(getattr(model, "backbone", None), "token_embedding")


def as_causal_lm(model: Any) -> Any:
    """A keras_hub causal LM as it is; a decoder backbone (e.g. ``GPT2Backbone``) wrapped in its ``CausalLM`` task
    (``preprocessor=None``; the LM head is the backbone's own reversible token embedding, no new weights); anything
    else unchanged (``is_causal_lm`` then refuses it)."""
    if is_causal_lm(model) or not hasattr(model, "token_embedding"):
        return model
    try:
        from keras_hub.src.models.causal_lm import CausalLM
    except ImportError:
        return model

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    tasks = [c for c in subclasses(CausalLM) if getattr(c, "backbone_cls", None) is type(model)]
    tasks.sort(key=lambda c: (c.__name__ not in SUPPORTED, c.__name__))  # the plain task before e.g. assistants
    if not tasks:
        return model
    return tasks[0](backbone=model, preprocessor=None)


def _backbone_call(backbone, token_ids):
    import tensorflow as tf

    return backbone({"token_ids": token_ids, "padding_mask": tf.ones_like(token_ids)}, training=False)


def describe(lm: Any) -> GenerationConfig:
    """Probe the attention layers once (one token, eager) for the cache shape: layers, kv heads, head dim."""
    import tensorflow as tf

    if not is_causal_lm(lm):
        raise InvalidArgument(
            f"the {type(lm).__name__} model is not a keras_hub CausalLM; generation export takes a causal LM task "
            f"model (e.g. keras_hub.models.GPT2CausalLM(backbone=..., preprocessor=None)); architectures whose attention takes keras_hub's serving route: "
            f"{', '.join(SUPPORTED)}")
    scope, get_ctx = _keras_hub_context()
    seen: list[dict] = []

    def probe(kv_cache, q, k, v, scale, head_size, num_heads, num_kv_heads, sliding_window=None, soft_cap=None):
        seen.append({"head_dim": int(head_size), "heads": int(num_heads), "kv_heads": int(num_kv_heads)})
        return kv_cache, q

    backbone = lm.backbone
    limit = 100_000
    with scope(paged_attention_func=probe, positions=tf.constant([0], tf.int32), kv_caches=[None] * limit):
        try:
            _backbone_call(backbone, tf.constant([[1]], tf.int32))
        except Exception as e:  # noqa: BLE001 - the architecture does not take the serving route
            raise FailedPrecondition(
                f"the {type(lm).__name__} architecture cannot be exported for generation: keras_hub's serving route "
                f"failed on it ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); architectures whose attention takes keras_hub's serving route: "
                f"{', '.join(SUPPORTED)}") from None
        calls = get_ctx().layer_index
    layers = len(getattr(backbone, "transformer_layers", []) or [])
    if not seen or calls != len(seen) or (layers and calls != layers):
        raise FailedPrecondition(
            f"the {type(lm).__name__} architecture's attention layers do not all take keras_hub's serving route "
            f"({calls} of {layers} did), so its cache cannot be exported; architectures whose attention takes it: {', '.join(SUPPORTED)}")
    shapes = {(s["head_dim"], s["kv_heads"]) for s in seen}
    if len(shapes) != 1:
        raise FailedPrecondition(f"the {type(lm).__name__} model has layers of different cache shapes {sorted(shapes)}; "
                                 "generation export needs one key/value shape for every layer")
    dtype = str(getattr(lm, "compute_dtype", "float32"))
    if dtype != "float32":
        raise FailedPrecondition(f"the {type(lm).__name__} model computes in {dtype}; generation export supports "
                                 "float32 models (load it with dtype='float32')")
    max_positions = 0
    if not any("rotary" in type(layer).__name__.lower() or "rope" in type(layer).__name__.lower()
               for layer in _sublayers(backbone)):
        max_positions = int(getattr(backbone, "max_sequence_length", 0) or 0)
    end_id = None
    pre = getattr(lm, "preprocessor", None)
    tokenizer = getattr(pre, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "end_token_id", None) is not None:
        end_id = int(tokenizer.end_token_id)
    return GenerationConfig(
        architecture=type(lm).__name__, vocabulary_size=int(backbone.vocabulary_size), num_layers=calls,
        num_kv_heads=seen[0]["kv_heads"], num_heads=seen[0]["heads"], head_dim=seen[0]["head_dim"],
        max_positions=max_positions, end_id=end_id, parameters=int(lm.count_params()))


def _sublayers(layer) -> list:
    try:
        return list(layer._flatten_layers(include_self=False, recursive=True))
    except Exception:  # noqa: BLE001 - older API
        return list(getattr(layer, "layers", []))


def _attention(kv_cache, q, k, v, scale, head_size, num_heads, num_kv_heads, sliding_window=None, soft_cap=None,
               *, batch, steps, past_lengths):
    """keras_hub's attention contract in TensorFlow: each sequence attends to its cache (positions before
    ``past_lengths``) and causally to this step's tokens. Returns ((new keys, new values), output)."""
    import tensorflow as tf

    key_cache, value_cache = kv_cache  # [B, kvh, D, L], [B, kvh, L, D]
    b, t, kvh, d = batch, steps, int(num_kv_heads), int(head_size)
    g = int(num_heads) // kvh
    q = tf.reshape(q, [b, t, kvh, g, d])
    q = tf.reshape(tf.transpose(q, [0, 2, 3, 1, 4]), [b, kvh, g * t, d]) * tf.cast(scale, q.dtype)
    k = tf.reshape(k, [b, t, kvh, d])
    v = tf.reshape(v, [b, t, kvh, d])
    scores_cache = tf.matmul(q, key_cache)  # [B, kvh, g*T, L]
    scores_new = tf.matmul(q, tf.transpose(k, [0, 2, 3, 1]))  # [B, kvh, g*T, T]
    if soft_cap is not None:
        scores_cache = tf.tanh(scores_cache / soft_cap) * soft_cap
        scores_new = tf.tanh(scores_new / soft_cap) * soft_cap
    length = tf.shape(key_cache)[-1]
    key_pos = tf.range(length)
    step_pos = tf.range(t)
    visible_cache = key_pos[None, None, :] < past_lengths[:, None, None]  # [B, 1, L]
    visible_new = step_pos[:, None] >= step_pos[None, :]  # [T, T]
    if sliding_window is not None:
        query_pos = past_lengths[:, None] + step_pos[None, :]  # [B, T]
        visible_cache = visible_cache & (query_pos[:, :, None] - key_pos[None, None, :] < sliding_window)
        visible_new = visible_new & (step_pos[:, None] - step_pos[None, :] < sliding_window)
    visible_cache = tf.broadcast_to(visible_cache, [b, t, length])
    visible_new = tf.broadcast_to(visible_new[None], [b, t, t])

    def per_head(mask):  # [B, T, X] -> [B, 1, g*T, X], row order (g, T) as the queries
        mask = tf.tile(mask[:, None], [1, g, 1, 1])
        return tf.reshape(mask, [b, 1, g * t, tf.shape(mask)[-1]])

    neg = tf.constant(NEG_INF, scores_cache.dtype)
    scores = tf.concat([tf.where(per_head(visible_cache), scores_cache, neg),
                        tf.where(per_head(visible_new), scores_new, neg)], axis=-1)
    probs = tf.nn.softmax(scores, axis=-1)
    out = tf.matmul(probs[..., :length], value_cache) + tf.matmul(probs[..., length:], tf.transpose(v, [0, 2, 1, 3]))
    out = tf.transpose(tf.reshape(out, [b, kvh, g, t, d]), [0, 3, 1, 2, 4])  # [B, T, kvh, g, D]
    return (k, v), tf.reshape(out, [b * t, kvh * g * d])


class _ReshapeNoneAsInferred:
    """keras_hub's serving route restores each attention output with ``ops.reshape(x, query.shape)``,
    static shapes it only has under JAX; traced with a dynamic batch a ``None`` stands in it. While
    tracing, a single ``None`` in a reshape target means "inferred" (-1), as it does in numpy."""

    def __enter__(self):
        import keras

        self._ops = keras.ops
        self._reshape = keras.ops.reshape
        original = self._reshape

        def reshape(x, newshape):
            if isinstance(newshape, (tuple, list)) and sum(d is None for d in newshape) == 1:
                newshape = [-1 if d is None else d for d in newshape]
            return original(x, newshape)

        keras.ops.reshape = reshape
        return self

    def __exit__(self, *exc):
        self._ops.reshape = self._reshape


def step_function(lm: Any, config: GenerationConfig):
    """(tf.function of (input_ids, past_lengths, *caches, *weights), signature, weight variables)."""
    import keras
    import tensorflow as tf

    scope, get_ctx = _keras_hub_context()
    backbone = lm.backbone
    variables = list(lm.variables)
    n = config.num_layers
    kvh, d = config.num_kv_heads, config.head_dim
    signature = [tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                 tf.TensorSpec([None], tf.int32, name="past_lengths")]
    for i in range(n):
        signature.append(tf.TensorSpec([None, kvh, d, None], tf.float32, name=f"past_key_{i}"))
        signature.append(tf.TensorSpec([None, kvh, None, d], tf.float32, name=f"past_value_{i}"))
    n_step = len(signature)
    for j, v in enumerate(variables):
        signature.append(tf.TensorSpec(tuple(int(s) for s in v.shape), tf.as_dtype(v.dtype), name=f"weight_{j}"))

    def step(input_ids, past_lengths, *rest):
        caches, weights = rest[:2 * n], rest[2 * n:]
        batch, steps = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
        positions = tf.reshape(past_lengths[:, None] + tf.range(steps)[None, :], [-1])
        attention = functools.partial(_attention, batch=batch, steps=steps, past_lengths=past_lengths)
        with keras.StatelessScope(state_mapping=list(zip(variables, weights, strict=True))):
            with scope(paged_attention_func=attention, positions=positions,
                       kv_caches=[(caches[2 * i], caches[2 * i + 1]) for i in range(n)]):
                hidden = _backbone_call(backbone, tf.reshape(input_ids, [-1, 1]))
                ctx = get_ctx()
                if ctx.layer_index != n:
                    raise FailedPrecondition(f"{ctx.layer_index} of {n} attention layers took the cache route")
                updated = list(ctx.updated_kv_caches)
            last = tf.reshape(hidden, [batch, steps, -1])[:, -1]
            logits = backbone.token_embedding(last, reverse=True)
        out = {"logits": tf.identity(tf.cast(logits, tf.float32), name="logits")}
        for i, (k, v) in enumerate(updated):
            out[f"new_key_{i}"] = tf.identity(k, name=f"new_key_{i}")
            out[f"new_value_{i}"] = tf.identity(v, name=f"new_value_{i}")
        return out

    fn = tf.function(step, input_signature=signature)
    with _ReshapeNoneAsInferred():
        fn.get_concrete_function()
    return fn, signature, n_step, variables


# ---- the ONNX side ----------------------------------------------------------------------------

class _DataFile:
    """Tensors appended to one external data file (64 KiB aligned from 1 MiB, so onnxruntime can map them)."""

    def __init__(self, path: Path):
        self.path = path
        self.location = path.name
        self._f = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.offset = 0

    def write(self, tensor, array: np.ndarray) -> None:
        from onnx import TensorProto

        array = np.ascontiguousarray(array)
        if array.nbytes >= ALIGN_FROM and self.offset % ALIGNMENT:
            pad = ALIGNMENT - self.offset % ALIGNMENT
            self._f.write(b"\0" * pad)
            self.offset += pad
        self._f.write(memoryview(array.reshape(-1)).cast("B"))
        del tensor.external_data[:]
        for key, value in (("location", self.location), ("offset", str(self.offset)), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = TensorProto.EXTERNAL
        self.offset += array.nbytes

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def _initializer(name: str, array: np.ndarray, data: _DataFile | None):
    from onnx import TensorProto, helper, numpy_helper

    if data is None or array.nbytes < EXTERNAL_MIN_BYTES:
        return numpy_helper.from_array(np.ascontiguousarray(array), name)
    tensor = TensorProto(name=name, dims=list(array.shape), data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
    data.write(tensor, array)
    return tensor


def _bind_weights(proto, fn, n_step: int, variables: list, data: _DataFile | None) -> int:
    """Weight inputs (and constants the trace captured) become initializers, read one at a time."""
    import tensorflow as tf

    sources: dict[str, Callable[[], np.ndarray]] = {
        f"weight_{j}": (lambda v=v: np.asarray(v.numpy())) for j, v in enumerate(variables)}
    cf = fn.get_concrete_function()
    for ph, value in zip(cf.inputs[len(cf.structured_input_signature[0]):], cf.captured_inputs, strict=False):
        if ph.dtype != tf.resource:
            sources[ph.name.split(":")[0]] = lambda value=value: np.asarray(value.numpy())
    used = {i for node in proto.graph.node for i in node.input}
    keep, bound = [], 0
    for vi in proto.graph.input:
        arg = vi.name.split(":")[0]
        if arg not in sources:
            keep.append(vi)
            continue
        if vi.name in used:
            proto.graph.initializer.append(_initializer(vi.name, sources[arg](), data))
            bound += 1
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    names = [i.name for i in keep]
    if names[:2] != ["input_ids", "past_lengths"] or len(names) != n_step:
        raise FailedPrecondition(f"the exported step has unexpected inputs {names[:6]}...; expected input_ids, "
                                 f"past_lengths and {n_step - 2} cache inputs")
    return bound


def export_generation(lm: Any, out_dir: str | os.PathLike, opset: int = 17, external: bool | None = None,
                      config: GenerationConfig | None = None) -> GenerationConfig:
    """Write ``model.onnx`` (+ ``model.onnx.data`` when ``external``) and ``generation.json`` into ``out_dir``.

    ``external`` None: external data from 256 MiB of weights (a single file is capped at 2 GiB).
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    from modelport.conversion.onnx_export import name_batch_dims

    if not 13 <= int(opset) <= 18:
        raise InvalidArgument(f"ONNX opset {opset} is not supported: choose 13..18 (default 17)")
    config = config or describe(lm)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in lm.variables)
    if external is None:
        external = weight_bytes >= (256 << 20)
    fn, signature, n_step, variables = step_function(lm, config)
    with tf.device("/cpu:0"), _ReshapeNoneAsInferred():
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=int(opset))
    data = _DataFile(out / DATA_FILE) if external else None
    try:
        bound = _bind_weights(proto, fn, n_step, variables, data)
    finally:
        if data is not None:
            data.close()
    name_batch_dims(proto)
    proto.doc_string = f"modelport generation step of a keras_hub {config.architecture}"
    path = out / MODEL_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(proto.SerializeToString())
    os.replace(tmp, path)
    del proto
    onnx.checker.check_model(str(path))
    config.external_data = bool(external)
    config.weight_bytes = int(weight_bytes)
    config.save(out / CONFIG_FILE)
    log.info("exported %s for generation: %d weights bound, external data %s", config.architecture, bound, external)
    return config


# ---- parity -------------------------------------------------------------------------------------

def keras_greedy(lm: Any, prompt: list[int], max_new_tokens: int) -> list[int]:
    """keras_hub's own ``generate()`` with the greedy sampler: the ``max_new_tokens`` ids after ``prompt``."""
    import keras_hub

    lm.compile(sampler=keras_hub.samplers.GreedySampler())
    length = len(prompt) + max_new_tokens
    token_ids = np.zeros((1, length), "int32")
    token_ids[0, :len(prompt)] = prompt
    padding_mask = np.zeros((1, length), bool)
    padding_mask[0, :len(prompt)] = True
    out = lm.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=None)
    return [int(t) for t in np.asarray(out["token_ids"])[0][len(prompt):]]


def greedy_parity(lm: Any, folder: str | os.PathLike, prompt: list[int] | None = None,
                  max_new_tokens: int = DEFAULT_PARITY_TOKENS, seed: int = 0) -> dict:
    """Greedy decoding from the exported step vs keras_hub ``generate()``: the token ids must be equal.

    Returns {"prompt", "keras", "onnx", "agreement"}; raises FailedPrecondition on a mismatch.
    """
    from modelport.generation_model import StepModel, greedy_decode

    step = StepModel(folder, threads=0)
    if prompt is None:
        rng = np.random.default_rng(seed)
        prompt = [int(t) for t in rng.integers(0, step.config.vocabulary_size, 6)]
    if step.config.max_positions and len(prompt) + max_new_tokens > step.config.max_positions:
        max_new_tokens = step.config.max_positions - len(prompt)
    ours = greedy_decode(step, prompt, max_new_tokens)
    del step
    reference = keras_greedy(lm, prompt, max_new_tokens)
    same = sum(a == b for a, b in zip(ours, reference, strict=True))
    report = {"prompt": prompt, "keras": reference, "onnx": ours, "agreement": same / max(1, len(reference))}
    if ours != reference:
        first = next(i for i, (a, b) in enumerate(zip(ours, reference, strict=True)) if a != b)
        raise FailedPrecondition(
            f"greedy decoding from the exported step differs from keras_hub generate() at token {first} of "
            f"{len(reference)} (onnx {ours[first]}, keras {reference[first]})", details={"first_mismatch": str(first)})
    return report


# ---- the converter's "generation" target ----------------------------------------------------------

def convert_for_generation(store, src, source_info, opset: int, allow_mismatch: bool, progress, t0: float):
    """ConvertResult of a Keras causal LM exported for generation (a tar artifact of the folder); parity is
    greedy decoding from the step against keras_hub ``generate()`` (reported as output ``output_ids``)."""
    import shutil
    import time

    from modelport import media
    from modelport.v1 import artifacts_pb2, jobs_pb2

    model = getattr(src, "model", None)
    wrapped_from = type(model).__name__ if model is not None and not is_causal_lm(model) else ""
    model = as_causal_lm(model) if model is not None else None
    if model is None or not is_causal_lm(model):
        raise InvalidArgument(
            f"the generation target takes a keras_hub causal LM or its decoder backbone (.keras of e.g. GPT2CausalLM, "
            f"LlamaCausalLM, GPT2Backbone); this "
            f"model is a {source_info.details.get('model_class', src.format)}; convert it to onnx instead")
    workdir = store.mkdtemp("generation")
    try:
        folder = workdir / "generation"
        progress("converting", 0.2, f"exporting the {type(model).__name__} step with its KV cache (opset {opset})")
        config = export_generation(model, folder, opset=opset)
        progress("verifying", 0.6, f"greedy decoding of {DEFAULT_PARITY_TOKENS} tokens vs keras_hub generate()")
        report = jobs_pb2.ParityReport(samples=DEFAULT_PARITY_TOKENS)
        try:
            result = greedy_parity(model, folder)
            same = True
        except FailedPrecondition as e:
            if not allow_mismatch:
                raise
            result, same = {"agreement": float("nan"), "prompt": []}, False
            report.inputs_source = e.message
        report.passed = same
        report.outputs.add(name="output_ids", max_abs_diff=0.0 if same else float("inf"), allclose=same,
                           top1_agreement=result["agreement"])
        if same:
            report.samples = len(result["onnx"])
            report.inputs_source = (f"greedy decoding of {len(result['onnx'])} tokens after the prompt "
                                    f"{result['prompt']} vs keras_hub generate()")
        progress("storing", 0.9, "storing the generation model")
        stored = store.put_dir(folder, media.GENERATION)
        info = jobs_pb2.ModelInfo(format="generation", size_bytes=stored.size, parameter_count=config.parameters,
                                  producer="modelport llm_export")
        info.details.update({"architecture": config.architecture, "num_layers": str(config.num_layers),
                             "num_kv_heads": str(config.num_kv_heads), "head_dim": str(config.head_dim),
                             "vocabulary_size": str(config.vocabulary_size), "max_context": str(config.context_limit),
                             "external_data": str(config.external_data).lower()})
        if wrapped_from:
            info.details["wrapped_backbone"] = wrapped_from
        if same:  # what a served FP32 step must reproduce (the deploy smoke test generates it again)
            info.details["parity_prompt"] = ",".join(str(t) for t in result["prompt"])
            info.details["parity_tokens"] = ",".join(str(t) for t in result["keras"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return jobs_pb2.ConvertResult(
        artifact=artifacts_pb2.ArtifactRef(digest=stored.digest, size=stored.size, media_type=stored.media_type),
        info=info, parity=report, source_info=source_info, seconds=time.perf_counter() - t0)
