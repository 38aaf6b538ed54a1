"""ONNX optimization techniques on onnxruntime: offline graph optimization, FP16 (I/O kept
float32), dynamic INT8 and static INT8 (QDQ) with calibration after ``quant_pre_process``.

Each function reads an ONNX file and writes the candidate to ``out`` and returns facts for the
report (``details``). A model that came with external data (or would pass protobuf's 2 GiB limit)
is written with external data too: ``out`` plus ``<out name>.data`` beside it (``_external``).
This module never imports grpc or TensorFlow.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from modelport.errors import InvalidArgument

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
    # onnxruntime's CPU SkipLayerNormalization is a scalar loop with a divide per element: 5.7-7.9x the time
    # of Add + LayerNormalization on BERT-Mini/Small shapes (BENCHMARKS.md, attention fusion section)
    ort.InferenceSession(str(staged), sess_options=so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["SkipLayerNormFusion"])
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
    model = onnx.load(str(src))  # external data is read from beside src
    converted = convert_float_to_float16(model, keep_io_types=True)
    del model
    save(converted, out, external=external or None)
    n16 = sum(1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    return {"fp16_initializers": str(n16), "io_types": "kept float32"}


def _preprocess(src: Path, out: Path) -> Path:
    """quant_pre_process (symbolic shape inference + ORT basic optimization); the source on failure.

    A model with external data is pre-processed into ``out`` + ``<out name>.data``. Past 2 GiB it is not
    pre-processed: symbolic shape inference cannot run (it serializes the whole model into one protobuf),
    and the rest (ORT's basic fusions; ONNX shape inference, which the quantizer runs itself) costs two
    full loads and writes of the weights at ~4x their size in memory. The quantizer then reads a copy
    in ``out``'s folder, because it writes a shape-inferred model beside its input.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from modelport.onnx_files import DATA_SUFFIX, PROTOBUF_LIMIT, copy_model, model_bytes

    ext = {}
    if _external(src):
        if model_bytes(src) >= PROTOBUF_LIMIT:
            log.info("%s passes 2 GiB: quantizing it without quant_pre_process", src)
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


def int8_dynamic(src: Path, out: Path, per_channel: bool = False) -> dict[str, str]:
    """Dynamic INT8: weights int8 offline, activations quantized at run time (MatMul/Gemm-heavy models)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = _preprocess(src, out.with_name(out.stem + ".pre.onnx"))
    quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                     use_external_data_format=_external(src))
    d = int8_facts(out)
    d["per_channel"] = str(per_channel).lower()
    return d


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


def int8_static(src: Path, out: Path, inputs: dict[str, np.ndarray], method: str = "minmax",
                per_channel: bool = False, samples: int = 128) -> dict[str, str]:
    """Static INT8 in QDQ format, activations calibrated on ``inputs`` with MinMax/Entropy/Percentile."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise InvalidArgument(f"unknown calibration method {method!r}; use one of {', '.join(methods)}")
    pre = _preprocess(src, out.with_name(out.stem + ".pre.onnx"))
    names = [i.name for i in onnx.load(str(pre), load_external_data=False).graph.input]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise InvalidArgument(f"calibration data lacks input(s) {', '.join(missing)}")
    reader = _Reader(inputs, names, samples)
    quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=methods[method], use_external_data_format=_external(src),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    d = int8_facts(out)
    d.update({"method": method, "per_channel": str(per_channel).lower(),
              "calibration_samples": str(len(reader._feeds))})
    return d


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
            "quant_ops": str(q_ops)}
