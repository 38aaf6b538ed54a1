"""A generation model on disk and its step run with onnxruntime: the KV cache kept in numpy.

A generation model is a folder: ``model.onnx`` (the step, see ``modelport.conversion.llm_export``),
optionally ``model.onnx.data`` (its weights as external data), and ``generation.json``
(``GenerationConfig``: the cache shape, vocabulary, end token, limits). The inference service loads
such a folder as a decoupled (streaming) model; the converter's parity check and the benchmarks
decode with it too. Numpy and onnxruntime only (onnxruntime imported when a model is opened).

``KVCache`` holds the caches of up to ``max_batch`` sequences as rows of one array per layer and
tensor; rows ``0..n-1`` are the running sequences, so a step reads contiguous prefixes and never
copies the cache. Its length grows by doubling (up to ``max_context``) as sequences get longer,
so short generations attend over short caches.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from modelport.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

CONFIG_FILE = "generation.json"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
FORMAT = "modelport.generation/v1"
DEFAULT_MAX_CONTEXT = 1024
DEFAULT_MAX_BATCH = 8
MAX_CONFIG_BYTES = 1 << 20  # generation.json is a few hundred bytes; it may come from a caller's upload
INITIAL_CACHE = 64


@dataclass
class GenerationConfig:
    """What ``generation.json`` holds. ``max_context`` and ``max_batch`` may be edited by hand."""

    architecture: str
    vocabulary_size: int
    num_layers: int
    num_kv_heads: int
    num_heads: int
    head_dim: int
    max_positions: int = 0  # learned position embeddings: the longest sequence the model can see (0 = no limit)
    end_id: int | None = None  # the tokenizer's end token, when the model came with one
    parameters: int = 0
    weight_bytes: int = 0
    external_data: bool = False
    max_context: int = 0  # cache capacity per sequence (prompt + generated); 0 = min(max_positions, 1024)
    max_batch: int = DEFAULT_MAX_BATCH  # sequences decoded together (continuous batching)
    format: str = FORMAT
    extra: dict = field(default_factory=dict)

    @property
    def context_limit(self) -> int:
        limit = self.max_context or DEFAULT_MAX_CONTEXT
        return min(limit, self.max_positions) if self.max_positions else limit

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> GenerationConfig:
        path = Path(path)
        try:
            if (size := path.stat().st_size) > MAX_CONFIG_BYTES:  # it may come from a caller's upload
                raise InvalidArgument(f"{path.name} is {size} bytes; a generation config is at most "
                                      f"{MAX_CONFIG_BYTES} bytes")
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"{path.name} cannot be read as JSON: {e}") from None
        except RecursionError:
            raise InvalidArgument(f"{path.name} nests deeper than a generation config can") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise InvalidArgument(f"{path.name} is not a modelport generation config (format {FORMAT!r} expected)")
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("architecture", "vocabulary_size", "num_layers", "num_kv_heads", "num_heads",
                               "head_dim") if k not in raw]
        if missing:
            raise InvalidArgument(f"{path.name} lacks {', '.join(missing)}")
        config = cls(**{k: v for k, v in raw.items() if k in known})
        if config.max_batch < 1 or config.context_limit < 2:
            raise InvalidArgument(f"{path.name}: max_batch must be >= 1 and max_context >= 2")
        return config


def is_generation_folder(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() and (folder / MODEL_FILE).is_file()


class KVCache:
    """Key/value caches of up to ``max_batch`` sequences: rows of one array per layer and tensor.

    Keys are stored [rows, kv_heads, head_dim, length] (transposed: the step's scores are one MatMul),
    values [rows, kv_heads, length, head_dim].
    """

    def __init__(self, config: GenerationConfig, max_batch: int, max_context: int, initial: int = INITIAL_CACHE):
        self.config = config
        self.max_batch = max_batch
        self.max_context = max_context
        self.length = 0
        self.keys: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self._allocate(min(max_context, max(2, initial)))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values)

    def _allocate(self, length: int) -> None:
        c = self.config
        keys = [np.zeros((self.max_batch, c.num_kv_heads, c.head_dim, length), np.float32) for _ in range(c.num_layers)]
        values = [np.zeros((self.max_batch, c.num_kv_heads, length, c.head_dim), np.float32)
                  for _ in range(c.num_layers)]
        old = self.length
        for i in range(len(self.keys)):
            keys[i][..., :old] = self.keys[i]
            values[i][:, :, :old] = self.values[i]
        self.keys, self.values, self.length = keys, values, length

    def reserve(self, needed: int) -> None:
        """Make room for ``needed`` positions per row (doubling; at most ``max_context``)."""
        if needed <= self.length:
            return
        if needed > self.max_context:
            raise ResourceExhausted(f"a sequence needs {needed} cache positions; the model's max_context is "
                                    f"{self.max_context}")
        length = self.length
        while length < needed:
            length *= 2
        self._allocate(min(length, self.max_context))

    def feeds(self, start: int, stop: int) -> dict[str, np.ndarray]:
        out = {}
        for i in range(self.config.num_layers):
            out[f"past_key_{i}"] = self.keys[i][start:stop]
            out[f"past_value_{i}"] = self.values[i][start:stop]
        return out

    def write(self, start: int, past_lengths: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        """Store a step's new keys/values [B, T, kvh, D] for rows ``start..start+B`` at their positions."""
        n_layers = self.config.num_layers
        first = outputs["new_key_0"]
        b, t = first.shape[0], first.shape[1]
        if t == 1:
            rows = np.arange(start, start + b)
            pos = past_lengths.astype(np.int64)
            for i in range(n_layers):
                self.keys[i][rows, :, :, pos] = outputs[f"new_key_{i}"][:, 0]
                self.values[i][rows, :, pos, :] = outputs[f"new_value_{i}"][:, 0]
            return
        for r in range(b):
            p = int(past_lengths[r])
            for i in range(n_layers):
                self.keys[i][start + r, :, :, p:p + t] = outputs[f"new_key_{i}"][r].transpose(1, 2, 0)
                self.values[i][start + r, :, p:p + t, :] = outputs[f"new_value_{i}"][r].transpose(1, 0, 2)

    def move(self, src: int, dst: int) -> None:
        """Copy row ``src`` into row ``dst`` (to keep the running rows a contiguous prefix)."""
        if src == dst:
            return
        for i in range(self.config.num_layers):
            self.keys[i][dst] = self.keys[i][src]
            self.values[i][dst] = self.values[i][src]


class StepModel:
    """A generation folder opened with onnxruntime: ``step(input_ids, past_lengths, cache, start)``."""

    def __init__(self, folder: str | os.PathLike, threads: int = 0, providers: list[str] | None = None,
                 session_options=None):
        import onnxruntime as ort

        self.folder = Path(folder)
        if not is_generation_folder(self.folder):
            raise InvalidArgument(f"{self.folder} is not a generation model: it needs {MODEL_FILE} and {CONFIG_FILE}")
        self.config = GenerationConfig.load(self.folder / CONFIG_FILE)
        if session_options is None:
            # As the inference service does by default: idle threads do not spin between steps (a decode step
            # is many small kernels; spinning threads fight the caller's threads for the cores).
            session_options = ort.SessionOptions()
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts = session_options
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), opts,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise FailedPrecondition(f"onnxruntime cannot load the generation step: {str(e).splitlines()[0][:300]}") \
                from None
        names = {i.name for i in self.session.get_inputs()}
        wanted = {"input_ids", "past_lengths"} | {f"past_{kind}_{i}" for kind in ("key", "value")
                                                   for i in range(self.config.num_layers)}
        if names != wanted:
            raise InvalidArgument(f"the step model's inputs {sorted(names)[:4]}... do not match {CONFIG_FILE} "
                                  f"({self.config.num_layers} layers)")
        self.output_names = [o.name for o in self.session.get_outputs()]

    def new_cache(self, max_batch: int | None = None, max_context: int | None = None,
                  initial: int = INITIAL_CACHE) -> KVCache:
        return KVCache(self.config, max_batch or self.config.max_batch, max_context or self.config.context_limit,
                       initial)

    def step(self, input_ids: np.ndarray, past_lengths: np.ndarray, cache: KVCache, start: int = 0) -> np.ndarray:
        """Run one step for rows ``start..start+B`` of ``cache``; returns logits [B, vocab], caches updated."""
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int32)
        past_lengths = np.ascontiguousarray(past_lengths, dtype=np.int32)
        b, t = input_ids.shape
        cache.reserve(int(past_lengths.max()) + t)
        feeds = {"input_ids": input_ids, "past_lengths": past_lengths, **cache.feeds(start, start + b)}
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))
        cache.write(start, past_lengths, outputs)
        return outputs["logits"]


def greedy_decode(model: StepModel, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The ``max_new_tokens`` ids greedy decoding yields after ``prompt`` (one sequence)."""
    if not prompt:
        raise InvalidArgument("the prompt is empty; give at least one token id")
    cache = model.new_cache(max_batch=1, max_context=len(prompt) + max_new_tokens)
    logits = model.step(np.asarray([prompt]), np.zeros(1, np.int32), cache)
    out, length = [], len(prompt)
    for _ in range(max_new_tokens):
        token = int(np.argmax(logits[0]))
        out.append(token)
        if len(out) == max_new_tokens:
            break
        logits = model.step(np.asarray([[token]]), np.asarray([length], np.int32), cache)
        length += 1
    return out
