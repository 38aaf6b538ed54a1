"""Keras techniques on tensorflow-model-optimization (TFMOT) and the TFLite converter.

Runs only in a worker process started with ``TF_USE_LEGACY_KERAS=1`` (TFMOT rejects Keras 3
models, and the choice is process-wide — docs/FACTS.md). Every technique starts from a fresh copy of
the input model (``KerasSource.fresh``: TFMOT cannot wrap one model object twice), fine-tunes
it on the user's training set, strips the training wrappers and exports the result to ONNX
through the converter's shared ``keras_model_to_onnx`` (or to TFLite). This module never
imports grpc.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelport.errors import FailedPrecondition, InvalidArgument
from optimizer_svc import keras_bridge

KERNEL_LAYERS = ("Dense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D")


def _check_legacy() -> None:
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise FailedPrecondition("Keras techniques must run in a worker with TF_USE_LEGACY_KERAS=1 (tf-keras)")


def sniff_keras(path: Path) -> str | None:
    """'keras' for a .keras zip, 'h5' for HDF5, else None."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04"):
        return "keras"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "h5"
    return None


@dataclass
class TrainSet:
    """Inputs in the model's input order, optional labels."""

    x: list[np.ndarray]
    y: np.ndarray | None

    @property
    def feed(self):
        return self.x[0] if len(self.x) == 1 else list(self.x)


class KerasSource:
    """The user's Keras model as a tf-keras factory: ``fresh()`` returns a new, independent copy.

    ``baseline_onnx`` is set when the model came through the Keras 3 bridge (the converter's ONNX of
    the Keras 3 model). ``model`` is None and ``rebuild_error`` says why when tf-keras cannot rebuild
    the model: then only the ONNX techniques apply.
    """

    def __init__(self, path: Path, work: Path, trust_remote_code: bool = False):
        _check_legacy()
        import tf_keras

        from modelport.model_code import check_model_code

        # tf-keras runs a legacy HDF5 file's Lambda code while loading, whatever safe_mode says: refuse
        # code-carrying files before it sees them unless the job may run remote code.
        check_model_code(path, "keras", trust_remote_code)
        self.trust_remote_code = trust_remote_code

        work.mkdir(parents=True, exist_ok=True)
        kind = sniff_keras(path) or "keras"
        src = work / f"input.{kind}"
        if not src.exists():
            os.symlink(path, src)
        self.portable = work / "portable"
        self.baseline_onnx: Path | None = None
        self.rebuild_error = ""
        self.model = None
        try:
            model = tf_keras.models.load_model(str(src), compile=False)
            self._write_portable(model)
        except Exception:  # noqa: BLE001 - a Keras 3 file: bridge it through a Keras 3 process
            keras_bridge.run_export(str(src), str(self.portable), trust_remote_code=trust_remote_code)
            self.baseline_onnx = self.portable / keras_bridge.BASELINE_ONNX
        try:
            self.model = self.fresh()
        except InvalidArgument as e:
            if self.baseline_onnx is None:
                raise
            self.rebuild_error = e.message

    def _write_portable(self, model) -> None:
        self.portable.mkdir(parents=True, exist_ok=True)
        (self.portable / keras_bridge.CONFIG).write_text(model.to_json())
        arrays = {f"{layer.name}/{i}": w for layer in keras_bridge._walk(model)
                  for i, w in enumerate(layer.get_weights())}
        np.savez(self.portable / keras_bridge.WEIGHTS, **arrays)

    def fresh(self):
        """A new tf-keras model object with the input model's architecture and weights."""
        return keras_bridge.load_tf_keras(str(self.portable))


# ---- training helpers -------------------------------------------------------------------------
def seed(value: int = 0) -> None:
    """Seed Python, numpy and TensorFlow so a technique's fine-tune is reproducible."""
    import tf_keras

    tf_keras.utils.set_random_seed(value)


def _is_probabilities(out: np.ndarray) -> bool:
    return (out.ndim >= 2 and out.shape[-1] > 1 and float(out.min()) >= 0.0
            and np.allclose(out.sum(-1), 1.0, atol=1e-3))


def loss_for(model, data: TrainSet):
    """A loss matching the model's output and the labels' form (sparse/categorical CE or MSE)."""
    import tf_keras

    if data.y is None:
        raise InvalidArgument("train_data has no 'y' labels; prune, prune-2:4, cluster and qat fine-tune on labels")
    out = np.asarray(model.predict([a[:8] for a in data.x] if len(data.x) > 1 else data.x[0][:8], verbose=0))
    probs = _is_probabilities(out)
    y = data.y
    if out.ndim >= 2 and out.shape[-1] > 1 and y.ndim == out.ndim - 1:
        return tf_keras.losses.SparseCategoricalCrossentropy(from_logits=not probs)
    if y.shape[1:] == out.shape[1:] and out.shape[-1] > 1 and probs:
        return tf_keras.losses.CategoricalCrossentropy()
    if out.shape[-1] == 1 and set(np.unique(y)).issubset({0, 1}) and 0.0 <= float(out.min()) <= float(out.max()) <= 1:
        return tf_keras.losses.BinaryCrossentropy()
    return tf_keras.losses.MeanSquaredError()


def fit(model, data: TrainSet, opts: dict, callbacks=(), epochs: int | None = None, lr_scale: float = 1.0) -> None:
    """Compile with Adam and the inferred loss, train quietly."""
    import tf_keras

    model.compile(optimizer=tf_keras.optimizers.Adam(float(opts["train.learning_rate"]) * lr_scale),
                  loss=loss_for(model, data))
    model.fit(data.feed, data.y, epochs=int(epochs or opts["train.epochs"]), batch_size=int(opts["train.batch_size"]),
              verbose=0, callbacks=list(callbacks), shuffle=True)


def _steps(data: TrainSet, opts: dict, epochs: int | None = None) -> int:
    n = data.x[0].shape[0]
    return math.ceil(n / int(opts["train.batch_size"])) * int(epochs or opts["train.epochs"])


def kernels(model) -> list[tuple[str, np.ndarray]]:
    """(layer name, kernel) of every Dense/Conv layer (depthwise and pointwise kernels included)."""
    out = []
    for layer in keras_bridge._walk(model):
        if type(layer).__name__ in KERNEL_LAYERS:
            for w in layer.weights:
                if "kernel" in w.name:
                    out.append((f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}", w.numpy()))
    return out


# ---- techniques -------------------------------------------------------------------------------
def prune(src: KerasSource, data: TrainSet, opts: dict):
    """Magnitude pruning to ``prune.sparsity`` with a PolynomialDecay schedule, then fine-tuning."""
    import tensorflow_model_optimization as tfmot

    target = float(opts["prune.sparsity"])
    total = _steps(data, opts)
    end = max(1, int(total * 0.5))  # reach the target half way, then fine-tune at full sparsity
    freq = int(opts["prune.frequency"]) or max(1, end // 10)
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target,
                                                    begin_step=0, end_step=end, frequency=freq)
    pm = tfmot.sparsity.keras.prune_low_magnitude(src.fresh(), pruning_schedule=schedule)
    fit(pm, data, opts, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    model = tfmot.sparsity.keras.strip_pruning(pm)
    ks = kernels(model)
    zeros = sum(int((k == 0).sum()) for _, k in ks)
    size = sum(k.size for _, k in ks)
    return model, {"target_sparsity": f"{target:.3f}", "sparsity": f"{zeros / max(size, 1):.4f}",
                   "schedule": f"PolynomialDecay(0->{target:g}, end_step={end}, frequency={freq})"}


def _m_by_n_ok(kernel: np.ndarray, m: int = 2, n: int = 4) -> bool:
    # TFMOT groups n consecutive weights along the input-channel axis (second to last).
    k = np.moveaxis(kernel, -2, -1)
    if k.shape[-1] % n:
        return False
    groups = k.reshape(-1, n)
    return bool(((groups != 0).sum(-1) <= m).all())


def prune_2_4(src: KerasSource, data: TrainSet, opts: dict):
    """2:4 structured sparsity (two zeros in every four input-channel weights) on eligible layers."""
    import tensorflow_model_optimization as tfmot
    import tf_keras
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    freq = max(1, _steps(data, opts) // 10)

    def wrap(layer):
        name = type(layer).__name__
        kernel = getattr(layer, "kernel", None)
        if name in ("Dense", "Conv2D") and kernel is not None and kernel.shape[-2] % 4 == 0:
            return tfmot.sparsity.keras.prune_low_magnitude(
                layer, sparsity_m_by_n=(2, 4),
                pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=freq))
        return layer

    base = src.fresh()
    pm = tf_keras.models.clone_model(base, clone_function=wrap)
    wrapped = [lyr for lyr in pm.layers if isinstance(lyr, PruneLowMagnitude)]
    if not wrapped:
        raise FailedPrecondition("no Dense/Conv2D layer has an input-channel count divisible by 4; 2:4 sparsity "
                                 "does not apply to this model")
    _copy_weights_into_wrappers(base, pm)
    fit(pm, data, opts, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    model = tfmot.sparsity.keras.strip_pruning(pm)
    ks = [(n, k) for n, k in kernels(model) if k.shape[-2] % 4 == 0 and k.ndim in (2, 4) and "depthwise" not in n]
    ok = [n for n, k in ks if _m_by_n_ok(k)]
    zeros = sum(int((k == 0).sum()) for _, k in ks)
    size = sum(k.size for _, k in ks)
    return model, {"pattern": "2:4", "layers_2_4": f"{len(ok)}/{len(ks)}",
                   "sparsity_of_2_4_layers": f"{zeros / max(size, 1):.4f}"}


def _copy_weights_into_wrappers(base, wrapped_model) -> None:
    """clone_model re-initializes weights: copy the originals back layer by layer."""
    by_name = {layer.name: layer for layer in base.layers}
    for layer in wrapped_model.layers:
        inner = getattr(layer, "layer", layer)
        orig = by_name.get(inner.name) or by_name.get(layer.name)
        if orig is not None and orig.get_weights():
            inner.set_weights(orig.get_weights())


_CENTROIDS = {"kmeans++": "KMEANS_PLUS_PLUS", "linear": "LINEAR", "density": "DENSITY_BASED", "random": "RANDOM"}


def cluster(src: KerasSource, data: TrainSet, opts: dict):
    """Weight clustering to ``cluster.clusters`` shared values per kernel, fine-tuned, then stripped."""
    import tensorflow_model_optimization as tfmot

    n = int(opts["cluster.clusters"])
    init = getattr(tfmot.clustering.keras.CentroidInitialization, _CENTROIDS[str(opts["cluster.init"])])
    cm = tfmot.clustering.keras.cluster_weights(src.fresh(), number_of_clusters=n, cluster_centroids_init=init)
    fit(cm, data, opts, lr_scale=0.3)
    model = tfmot.clustering.keras.strip_clustering(cm)
    uniq = [len(np.unique(k)) for _, k in kernels(model)]
    return model, {"clusters": str(n), "init": str(opts["cluster.init"]),
                   "max_unique_per_kernel": str(max(uniq) if uniq else 0)}


def qat(src: KerasSource, data: TrainSet, opts: dict):
    """Quantization-aware training (fake-quant INT8); the exported ONNX carries Q/DQ pairs."""
    import tensorflow_model_optimization as tfmot

    qm = tfmot.quantization.keras.quantize_model(src.fresh())
    fit(qm, data, opts, lr_scale=0.3)
    return qm, {"scheme": "TFMOT default 8-bit (per-channel weights, per-tensor activations)"}


def _width_reduced(teacher, width: float):
    """The teacher's architecture with ``width`` x units/filters in every hidden Dense/Conv layer."""
    import json

    import tf_keras

    cfg = json.loads(teacher.to_json())
    layers = cfg["config"]["layers"]
    out_names = {o[0] for o in cfg["config"].get("output_layers", [])} if cfg["class_name"] != "Sequential" else set()
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        c = layer["config"]
        is_output = c.get("name") in out_names or (cfg["class_name"] == "Sequential" and i == last)
        if is_output:
            continue
        for key in ("units", "filters"):
            if key in c:
                c[key] = max(1, int(round(c[key] * width)))
    try:
        return tf_keras.models.model_from_json(json.dumps(cfg))
    except Exception as e:  # noqa: BLE001 - e.g. residual adds whose widths no longer match
        raise FailedPrecondition(f"could not build a width-reduced student ({str(e)[:200]}); "
                                 "pass a student model in OptimizeRequest.student") from None


def distill(src: KerasSource, data: TrainSet, opts: dict, student_path: Path | None, work: Path):
    """Knowledge distillation: the input model teaches a smaller student (given or auto-built)."""
    import tensorflow as tf
    import tf_keras

    teacher = src.model
    width = float(opts["distill.width"])
    if student_path is not None:
        student = KerasSource(student_path, work / "student", src.trust_remote_code).fresh()
        origin = "given"
    else:
        student = _width_reduced(teacher, width)
        origin = f"width x{width:g} of the teacher"
    temperature = float(opts["distill.temperature"])
    alpha = float(opts["distill.alpha"]) if data.y is not None else 0.0
    x = data.feed
    t_out = np.asarray(teacher.predict(x, verbose=0, batch_size=256))
    t_probs = _is_probabilities(t_out)
    sample = np.asarray(student.predict([a[:4] for a in data.x] if len(data.x) > 1 else data.x[0][:4], verbose=0))
    if sample.shape[1:] != t_out.shape[1:]:
        raise InvalidArgument(f"the student's output shape {sample.shape[1:]} differs from the teacher's "
                              f"{t_out.shape[1:]}")
    s_probs = _is_probabilities(sample)
    classify = t_out.ndim >= 2 and t_out.shape[-1] > 1

    def logits(y, probs):
        return tf.math.log(tf.clip_by_value(y, 1e-7, 1.0)) if probs else y

    t_logits = logits(tf.constant(t_out), t_probs)
    opt = tf_keras.optimizers.Adam(float(opts["train.learning_rate"]) * 2)
    y = None if data.y is None else tf.constant(data.y)
    n = data.x[0].shape[0]
    bs = int(opts["train.batch_size"])
    ce = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(xb, tb, yb):
        with tf.GradientTape() as tape:
            s = logits(student(xb, training=True), s_probs)
            if classify:
                soft = tf.nn.softmax(tb / temperature)
                kd = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(soft, s / temperature)) * temperature ** 2
                loss = (1 - alpha) * kd + (alpha * ce(yb, s) if yb is not None else 0.0)
            else:
                loss = tf.reduce_mean(tf.square(s - tb))
        grads = tape.gradient(loss, student.trainable_variables)
        opt.apply_gradients(zip(grads, student.trainable_variables, strict=False))
        return loss

    rng = np.random.default_rng(0)
    for _ in range(int(opts["distill.epochs"])):
        order = rng.permutation(n)
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            xb = [tf.constant(a[idx]) for a in data.x] if len(data.x) > 1 else tf.constant(data.x[0][idx])
            step(xb, tf.gather(t_logits, idx), None if y is None else tf.gather(y, idx))
    params_t, params_s = teacher.count_params(), student.count_params()
    return student, {"student": origin, "temperature": f"{temperature:g}", "alpha": f"{alpha:g}",
                     "teacher_params": str(params_t), "student_params": str(params_s),
                     "param_ratio": f"{params_s / max(params_t, 1):.3f}"}


# ---- TFLite -----------------------------------------------------------------------------------
def to_tflite(model, out: Path, mode: str = "float", representative: list[np.ndarray] | None = None,
              samples: int = 128) -> dict[str, str]:
    """Convert a tf-keras model to TFLite: float, dynamic (range), fp16 or int8 (full integer, float I/O)."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode in ("dynamic", "fp16", "int8"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        if not representative:
            raise InvalidArgument("tflite-int8 needs representative inputs (calibration_data)")
        count = min(samples, representative[0].shape[0])

        def gen():
            for i in range(count):
                yield [a[i:i + 1] for a in representative]

        conv.representative_dataset = gen
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    data = conv.convert()
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return {"tflite_mode": mode}


def tflite_int8_facts(path: Path) -> dict[str, str]:
    """Tensor type census of a TFLite model (how much is int8)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interp = Interpreter(model_path=str(path))
    types = [d["dtype"].__name__ for d in interp.get_tensor_details()]
    n8 = sum(1 for t in types if t in ("int8", "uint8"))
    return {"int8_tensors": str(n8), "tensors": str(len(types))}


def tflite_to_onnx(tfl: Path, out: Path, baseline: Path, work: Path, uint8_activations: bool) -> dict[str, str]:
    """The ONNX form of a (full-integer) TFLite model, with the baseline's input/output names.

    Converted like the converter service does it (``modelport.conversion.convert.produce``: tf2onnx
    ``from_tflite``, QDQ for the int8 tensors); the TFLite signature's names are mapped to the
    baseline's by name, else by position. ``uint8_activations``: rewrite int8 activation Q/DQ pairs to
    uint8 (``onnx_techniques.qdq_activations_to_uint8``), onnxruntime's fast path on x86 with VNNI.
    """
    import onnx

    from modelport.conversion.convert import _rename_onnx_io, produce
    from modelport.conversion.models import TFLiteModel
    from optimizer_svc import onnx_techniques as OT

    base = onnx.load(str(baseline), load_external_data=False)
    inits = {t.name for t in base.graph.initializer}
    base_in = [i.name for i in base.graph.input if i.name not in inits]
    base_out = [o.name for o in base.graph.output]
    opset = next((o.version for o in base.opset_import if o.domain in ("", "ai.onnx")), 17)
    work.mkdir(parents=True, exist_ok=True)
    path, _ = produce(TFLiteModel(tfl), "onnx", work, min(max(opset, 13), 18), 0)
    m = onnx.load(str(path), load_external_data=False)
    got_in, got_out = [i.name for i in m.graph.input], [o.name for o in m.graph.output]

    def mapping(got: list[str], want: list[str], role: str) -> dict[str, str]:
        if set(got) == set(want):
            return {}
        if len(got) == len(want) == 1 or (len(got) == len(want) and role == "input"):
            return dict(zip(got, want, strict=True))
        raise FailedPrecondition(f"the TFLite model's {role}s {got} cannot be matched to the baseline's {want}")

    _rename_onnx_io(path, mapping(got_in, base_in, "input"), mapping(got_out, base_out, "output"))
    details = {"source": "tflite-int8 converted with tf2onnx from_tflite (QDQ)", "opset": str(opset)}
    if uint8_activations:
        try:
            n = OT.qdq_activations_to_uint8(path, out)
            details["activations"] = f"uint8 ({n} int8 activation quantizations shifted by 128; exact)"
            return details
        except ValueError as e:
            details["activations_note"] = f"kept int8: {e}"
    os.replace(path, out)
    details["activations"] = "int8 (as TFLite computes them)"
    return details
