"""Which outputs (and inputs) of a loaded model are quantized, and with which scale and zero point.

Parity judges a quantized output in quantization steps of its scale (``modelport.parity``). An output
counts as quantized when it is an int8/uint8 tensor with quantization parameters, or a float tensor
dequantized from one: TFLite's ``DEQUANTIZE`` of an int8 tensor (full-integer models with float I/O),
ONNX's ``DequantizeLinear`` (QDQ models, tf2onnx's export of an int8 TFLite model), possibly behind
shape-only ops. Per-axis (vector) scales are not an output's step and are ignored.
"""

from __future__ import annotations

import numpy as np

from modelport.parity import Quantization

# ONNX ops that move values without changing them, between a DequantizeLinear and a graph output.
_PASS_THROUGH = {"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose"}


def output_quantization(model, role: str) -> dict[str, Quantization]:
    """Output name -> Quantization for a TFLite or ONNX model (empty for other formats or float models).

    Call it before the model runs: once TFLite allocates tensors, the XNNPACK delegate replaces the ops
    whose DEQUANTIZE tells a float output's scale.
    """
    from modelport.conversion.models import OnnxModel, TFLiteModel

    if isinstance(model, TFLiteModel):
        return _tflite(model, role)
    if isinstance(model, OnnxModel):
        return _onnx(model, role)
    return {}


def input_ranges(model) -> dict[str, tuple[int, int]]:
    """Integer ranges for generated samples of quantized TFLite inputs: the dtype's whole range.

    An int8 input of a full-integer model is an image or feature quantized to -128..127; the default
    embedding-index range (0..10) would exercise a sliver of it.
    """
    from modelport.conversion.models import TFLiteModel

    if not isinstance(model, TFLiteModel):
        return {}
    out = {}
    for name, d in model._in:
        scale, _ = d.get("quantization", (0.0, 0))
        dt = np.dtype(d["dtype"])
        if scale and dt.kind in "iu" and dt.itemsize == 1:
            info = np.iinfo(dt)
            out[name] = (int(info.min), int(info.max) + 1)
    return out


def _scalar(q: dict | None) -> tuple[float, int] | None:
    if not q:
        return None
    scales, zps = np.asarray(q.get("scales", [])), np.asarray(q.get("zero_points", []))
    if scales.size != 1:
        return None
    return float(scales.reshape(-1)[0]), int(zps.reshape(-1)[0]) if zps.size else 0


def _tflite(model, role: str) -> dict[str, Quantization]:
    interp = model.interp
    tensors = {d["index"]: d for d in interp.get_tensor_details()}
    try:
        ops = interp._get_ops_details()
    except Exception:  # noqa: BLE001 - private API; only int8 outputs are then recognised
        ops = []
    producer = {o: op for op in ops for o in op["outputs"]}
    out = {}
    for name, d in model._out:
        dt = np.dtype(d["dtype"])
        q = _scalar(d.get("quantization_parameters"))
        if q and q[0] > 0 and dt.kind in "iu":
            out[name] = Quantization(q[0], q[1], f"{role} output ({dt.name})")
            continue
        op = producer.get(d["index"])
        if op is not None and op["op_name"] == "DEQUANTIZE":
            src = tensors.get(op["inputs"][0], {})
            q = _scalar(src.get("quantization_parameters"))
            if q and q[0] > 0:
                out[name] = Quantization(q[0], q[1], f"{role} output dequantized from {np.dtype(src['dtype']).name}")
    return out


def _initializer(proto, name: str):
    from onnx import numpy_helper

    for t in proto.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _onnx(model, role: str) -> dict[str, Quantization]:
    proto = model.proto
    producer = {o: n for n in proto.graph.node for o in n.output}
    out = {}
    for o in proto.graph.output:
        name, node = o.name, producer.get(o.name)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producer.get(node.input[0])
        if node is None or node.op_type not in ("DequantizeLinear", "QuantizeLinear") or len(node.input) < 2:
            continue
        scale = _initializer(proto, node.input[1])
        zp = _initializer(proto, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or np.asarray(scale).size != 1 or float(np.asarray(scale).reshape(-1)[0]) <= 0:
            continue
        zero = int(np.asarray(zp).reshape(-1)[0]) if zp is not None and np.asarray(zp).size == 1 else 0
        kind = "dequantized from int8" if node.op_type == "DequantizeLinear" else "int8"
        out[name] = Quantization(float(np.asarray(scale).reshape(-1)[0]), zero, f"{role} output ({kind}, ONNX)")
    return out
