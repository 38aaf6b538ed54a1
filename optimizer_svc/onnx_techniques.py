"""ONNX optimization techniques on onnxruntime: offline graph optimization, FP16 (I/O kept
float32), dynamic INT8 and static INT8 (one ``Recipe``: types, granularity, QDQ/QOperator,
calibration, nodes left in float) with calibration after ``quant_pre_process``.

Each function reads an ONNX file and writes the candidate to ``out`` and returns facts for the
report (``details``). A model that came with external data (or would pass protobuf's 2 GiB limit)
is written with external data too: ``out`` plus ``<out name>.data`` beside it (``_external``).
This module never imports grpc or TensorFlow.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelport.errors import InvalidArgument
from modelport.providers import DISABLED_OPTIMIZERS

log = logging.getLogger("modelport.optimizer.onnx")


def _external(src: Path) -> bool:
    """Write the candidate with external data: the source had it, or is too big for one protobuf."""
    from modelport.onnx_files import PROTOBUF_LIMIT, has_external_data

    return has_external_data(src) or Path(src).stat().st_size >= PROTOBUF_LIMIT


def _save_external(so, out: Path) -> None:
    """Session options that make ORT's offline-optimized model keep its initializers in ``<out>.data``."""
    from modelport.onnx_files import DATA_SUFFIX, EXTERNAL_THRESHOLD

    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", out.name + DATA_SUFFIX)
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                str(EXTERNAL_THRESHOLD))


def graph_optimize(src: Path, out: Path, level: str = "extended") -> dict[str, str]:
    """modelport's own exact rewrites (the converter's: constant reshape targets, attention fusion,
    LayerNorm fusion), then the graph as onnxruntime optimizes it offline (extended = portable across
    CPUs). The rewrites apply to any ONNX input, e.g. a plain tf2onnx export, not only to the converter's
    output (where they already ran and find nothing left to do)."""
    import onnx
    import onnxruntime as ort

    from modelport.conversion.onnx_attention import fuse_attention
    from modelport.conversion.onnx_fusions import fuse_layer_norms, static_reshapes
    from modelport.onnx_files import DATA_SUFFIX, save
    from modelport.providers import graph_optimization_level

    external = _external(src)
    model = onnx.load(str(src))  # external data is read from beside src
    nodes_before = len(model.graph.node)
    # Shape-inference-driven rewrites first: below opset 17 ONNX shape inference stops at LayerNormalization.
    # onnxruntime alone runs the result (saved as onnxruntime optimized it), so that op is fine at any opset.
    done = {"reshapes_made_static": static_reshapes(model), "attention_layers_fused": fuse_attention(model),
            "layer_norms_fused": fuse_layer_norms(model, for_onnxruntime=True)}
    staged = src
    if any(done.values()):
        staged = save(model, out.with_name(out.stem + ".rewritten.onnx"), external=external or None)
    del model
    so = ort.SessionOptions()
    so.graph_optimization_level = graph_optimization_level(level)
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3
    if external:
        _save_external(so, out)
    ort.InferenceSession(str(staged), sess_options=so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=list(DISABLED_OPTIMIZERS))  # modelport.providers says why
    if staged != src:
        staged.unlink()
        staged.with_name(staged.name + DATA_SUFFIX).unlink(missing_ok=True)
    after = onnx.load(str(out), load_external_data=False)
    return {"level": level, "nodes_before": str(nodes_before), "nodes_after": str(len(after.graph.node)),
            **{k: str(v) for k, v in done.items()}}


def fp16(src: Path, out: Path) -> dict[str, str]:
    """Weights and compute in float16, graph inputs/outputs kept float32 (callers unchanged)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from modelport.onnx_files import save

    external = _external(src)
    # Given the path, the converter infers shapes with infer_shapes_path (in src's folder, so the external data
    # resolves) and loads that: given a loaded model it serializes it whole for shape inference, which fails past
    # protobuf's 2 GiB ("Failed to serialize proto" on the 2.34 GB transformer).
    try:
        converted = convert_float_to_float16(str(src), keep_io_types=True)
    except Exception as e:
        # onnx reports a failed write of the shape-inferred copy without its errno ("Unable to save inferred
        # model to the target path"): a full disk is told by the space left, so the job is RESOURCE_EXHAUSTED.
        if shutil.disk_usage(src.parent).free < Path(src).stat().st_size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src.parent)) from e
        raise
    save(converted, out, external=external or None)
    n16 = sum(1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    return {"fp16_initializers": str(n16), "io_types": "kept float32"}


PREPROCESS_MAX_BYTES = 256 << 20
"""Weight bytes of an external-data model from which quantization skips ``quant_pre_process`` (the size from
which the converter writes external data)."""


def _preprocess(src: Path, out: Path) -> Path:
    """quant_pre_process (symbolic shape inference + ORT basic optimization); the source on failure.

    A model with external data is pre-processed into ``out`` + ``<out name>.data`` below
    ``PREPROCESS_MAX_BYTES`` of weights. From there it is not pre-processed: past 2 GiB symbolic shape
    inference cannot run (it serializes the whole model into one protobuf), and at any size the steps
    (symbolic shape inference, ORT's basic fusions, ONNX shape inference, which the quantizer runs itself)
    are full loads and writes of the weights: 5.5x the weights at peak on a 0.73 GB transformer, against
    1.6x for the quantizer alone (``optimizer_svc.admission``). The quantizer then reads a copy in ``out``'s
    folder, because it writes a shape-inferred model beside its input.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from modelport.onnx_files import DATA_SUFFIX, copy_model, model_bytes

    ext = {}
    if _external(src):
        if model_bytes(src) >= PREPROCESS_MAX_BYTES:
            log.info("%s has %d bytes of weights: quantizing it without quant_pre_process", src, model_bytes(src))
            return copy_model(src, out.parent / "source")
        ext = dict(save_as_external_data=True, all_tensors_to_one_file=True,
                   external_data_location=out.name + DATA_SUFFIX)
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=False, **ext)
        return out
    except Exception as e:  # noqa: BLE001 - pre-processing is an improvement, not a requirement
        log.warning("quant_pre_process failed (%s); retrying without symbolic shape inference", e)
        try:
            out.with_name(out.name + DATA_SUFFIX).unlink(missing_ok=True)  # onnx appends to a data file
            quant_pre_process(str(src), str(out), skip_symbolic_shape=True, **ext)
            return out
        except Exception as e2:  # noqa: BLE001
            log.warning("quant_pre_process failed again (%s); quantizing the model as is", e2)
            return src


def int8_dynamic(src: Path, out: Path, per_channel: bool = False, pre: Path | None = None) -> dict[str, str]:
    """Dynamic INT8: weights int8 offline, activations quantized at run time (MatMul/Gemm-heavy models).

    ``pre``: an already pre-processed copy of ``src`` (``preprocess``) to quantize instead.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from optimizer_svc.lean_quantize import lean_value_info_refresh

    pre = pre or _preprocess(src, out.with_name(out.stem + ".pre.onnx"))
    with lean_value_info_refresh():  # no whole-model deep copy inside the quantizer (lean_quantize says why)
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                         use_external_data_format=_external(src))
    d = int8_facts(out)
    d["per_channel"] = str(per_channel).lower()
    return d


def preprocess(src: Path, out: Path) -> Path:
    """``quant_pre_process`` once for several quantizations of one model (the source when it fails)."""
    return _preprocess(src, out)


class _Reader:
    """CalibrationDataReader over a dict of arrays, one sample per call."""

    def __init__(self, inputs: dict[str, np.ndarray], names: list[str], samples: int, batch: int = 1):
        n = min(samples, next(iter(inputs.values())).shape[0])
        self._feeds = [{k: inputs[k][i:i + batch] for k in names} for i in range(0, n, batch)]
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)


METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Recipe:
    """One static INT8 recipe: what ``quantize_static`` is asked to do.

    ``activations``/``weights``: "u8" or "s8"; ``fmt``: "qdq" or "qoperator"; ``reduce_range``: 7-bit
    weights (avoids int16 saturation of u8 x s8 products on x86 CPUs without VNNI); ``float_nodes``:
    node names left in float (with ``float_ops``, their op types, for the report).
    """

    activations: str = "u8"
    weights: str = "s8"
    per_channel: bool = True
    fmt: str = "qdq"
    reduce_range: bool = False
    method: str = "minmax"
    float_nodes: tuple[str, ...] = ()
    float_ops: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Short stable name, e.g. ``u8s8-pc-qdq-minmax``, ``+rr`` for reduce_range, ``+float(Softmax)``."""
        k = (f"{self.activations}{self.weights}-{'pc' if self.per_channel else 'pt'}-{self.fmt}-{self.method}"
             + ("+rr" if self.reduce_range else ""))
        return k + (f"+float({','.join(self.float_ops)})" if self.float_ops else "")

    def describe(self) -> str:
        types = f"{self.activations.upper()}{self.weights.upper()}"
        parts = [types, "per-channel" if self.per_channel else "per-tensor",
                 "QDQ" if self.fmt == "qdq" else "QOperator", f"{self.method} calibration"]
        if self.reduce_range:
            parts.append("reduce_range")
        if self.float_ops:
            parts.append(f"left in float: {', '.join(self.float_ops)}")
        return ", ".join(parts)

    def details(self) -> dict[str, str]:
        types = {"u8": "uint8", "s8": "int8"}
        return {"recipe": self.key, "recipe_description": self.describe(),
                "activation_type": types[self.activations], "weight_type": types[self.weights],
                "per_channel": str(self.per_channel).lower(), "quant_format": self.fmt,
                "reduce_range": str(self.reduce_range).lower(), "method": self.method,
                "float_nodes": ",".join(self.float_nodes)}


def int8_static(src: Path, out: Path, inputs: dict[str, np.ndarray], recipe: Recipe | None = None,
                samples: int = 128, pre: Path | None = None, calib_cache: Path | None = None) -> dict[str, str]:
    """Static INT8 by ``recipe`` (default: U8S8 per-channel QDQ, MinMax), activations calibrated on ``inputs``.

    ``pre``: an already pre-processed copy of ``src``; ``calib_cache``: a file where the calibrated
    ranges of ``recipe.method`` are kept, so several recipes of one model calibrate once.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    recipe = recipe or Recipe()
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if recipe.method not in methods:
        raise InvalidArgument(f"unknown calibration method {recipe.method!r}; use one of {', '.join(methods)}")
    pre = pre or _preprocess(src, out.with_name(out.stem + ".pre.onnx"))
    names = [i.name for i in onnx.load(str(pre), load_external_data=False).graph.input]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise InvalidArgument(f"calibration data lacks input(s) {', '.join(missing)}")
    reader = _Reader(inputs, names, samples)
    qtype = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    quantize_static(str(pre), str(out), reader,
                    quant_format=QuantFormat.QDQ if recipe.fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                    activation_type=qtype[recipe.activations], weight_type=qtype[recipe.weights],
                    nodes_to_exclude=list(recipe.float_nodes) or None, calibrate_method=methods[recipe.method],
                    extra_options=extra, calibration_cache_path=str(calib_cache) if calib_cache else None,
                    use_external_data_format=_external(src))
    d = int8_facts(out)
    d.update(recipe.details())
    d["calibration_samples"] = str(len(reader._feeds))
    return d


# Ops between the last weighted op and a graph output that cost nothing to run in float.
# Add/Mul count only as a bias or scale (one operand an initializer): a residual Add ends the walk.
_TAIL_OPS = {"Softmax", "LogSoftmax", "Sigmoid", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity",
             "Transpose", "Add", "Mul", "Relu", "Clip", "Tanh"}
_WEIGHTED_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose"}


def output_tail(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The nodes that produce the outputs: (cheap tail ops, the weighted ops that feed them), as (name, op).

    Walks back from each graph output through elementwise/shape ops (softmax, bias add, reshape) to
    the first MatMul/Gemm/Conv. Leaving the tail in float keeps output precision (a quantized softmax
    over many near-equal classes loses the ranking) at almost no cost; the head is the classifier layer.
    """
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    tail: dict[str, str] = {}
    head: dict[str, str] = {}
    todo = [o.name for o in g.output]
    seen: set[str] = set()
    while todo:
        t = todo.pop()
        n = producer.get(t)
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        if n.op_type in _WEIGHTED_OPS:
            head[n.name] = n.op_type
        elif n.op_type in _TAIL_OPS:
            if n.op_type in ("Add", "Mul") and not any(i in inits for i in n.input):
                continue
            tail[n.name] = n.op_type
            todo += [i for i in n.input if i and i not in inits]
    order = {n.name: i for i, n in enumerate(g.node)}
    return (sorted(tail.items(), key=lambda x: order[x[0]]), sorted(head.items(), key=lambda x: order[x[0]]))


# Ops that move int8 activations without computing on their values (their first input is the data).
_MOVE_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "MaxPool", "Slice", "Split",
             "DepthToSpace", "SpaceToDepth", "Expand", "Tile"}


def qdq_activations_to_uint8(src: Path, out: Path) -> int:
    """Rewrite int8 activation QuantizeLinear/DequantizeLinear pairs to uint8 (zero point + 128).

    Exact: q in [-128, 127] with zero point z and q + 128 in [0, 255] with z + 128 stand for the same
    values. TFLite (and so tf2onnx's ``from_tflite``) quantizes activations to int8; onnxruntime's
    x86 kernels are fastest with uint8 activations and int8 weights (U8S8), which this gives. The
    shift follows the int8 tensors through data-movement ops (Reshape, Transpose, MaxPool, ...) and
    Pad/Concat constants; weight DequantizeLinear nodes (initializer inputs) are left alone. Raises
    ValueError, writing nothing, when another op consumes an int8 activation. Returns the number of
    QuantizeLinear nodes rewritten.
    """
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    made: dict[str, str] = {}

    def u8(name: str) -> str:
        if name not in made:
            a = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
            t = numpy_helper.from_array(a.astype(np.uint8), name + "__u8")
            g.initializer.append(t)
            made[name] = t.name
        return made[name]

    def int8_init(name: str) -> bool:
        return name in inits and inits[name].data_type == onnx.TensorProto.INT8

    shifted: set[str] = set()  # activation tensors that are uint8 now
    count = 0
    for n in g.node:
        ins = list(n.input)
        if n.op_type == "QuantizeLinear":
            if len(ins) > 2 and int8_init(ins[2]):
                n.input[2] = u8(ins[2])
                shifted.add(n.output[0])
                count += 1
        elif n.op_type == "DequantizeLinear" and ins[0] in shifted:
            if len(ins) < 3 or not int8_init(ins[2]):
                raise ValueError(f"DequantizeLinear {n.name} of an int8 activation has no int8 zero point")
            n.input[2] = u8(ins[2])
        elif n.op_type in _MOVE_OPS and ins and ins[0] in shifted:
            shifted.update(n.output)
        elif n.op_type in ("Pad", "Concat") and any(i in shifted for i in ins):
            data = ins[:1] if n.op_type == "Pad" else ins
            for i, name in enumerate(data):
                if name in shifted:
                    continue
                if not int8_init(name):
                    raise ValueError(f"{n.op_type} {n.name} mixes an int8 activation with {name!r}")
                n.input[i] = u8(name)
            if n.op_type == "Pad" and len(ins) > 2 and ins[2]:
                if not int8_init(ins[2]):
                    raise ValueError(f"Pad {n.name} pads an int8 activation with a non-constant value")
                n.input[2] = u8(ins[2])
            shifted.update(n.output)
        elif any(i in shifted for i in ins):
            raise ValueError(f"{n.op_type} {n.name} computes on an int8 activation; only Q/DQ pairs can be shifted")
    if any(o.name in shifted for o in g.output):
        raise ValueError("a graph output is an int8 activation")
    for vi in g.value_info:
        if vi.name in shifted:
            vi.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    onnx.save(m, str(out))
    return count


def int8_facts(path: Path) -> dict[str, str]:
    """How much of a quantized model is INT8: int8 initializers, QDQ / integer op counts."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)  # types and shapes only
    int8_types = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    weights = [t for t in m.graph.initializer if len(t.dims) >= 2]
    int8_w = sum(1 for t in weights if t.data_type in int8_types)
    ops = [n.op_type for n in m.graph.node]
    q_ops = sum(1 for o in ops if o in ("DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear",
                                         "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"))
    return {"int8_weight_tensors": str(int8_w), "weight_tensors": str(len(weights)),
            "int8_weight_fraction": f"{int8_w / len(weights):.3f}" if weights else "0",
            "quant_ops": str(q_ops), "conv_integer_ops": str(ops.count("ConvInteger")),
            "matmul_integer_ops": str(ops.count("MatMulInteger"))}
