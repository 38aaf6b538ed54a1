"""The ONNX techniques as library calls on a real ONNX model (the trained digits CNN): every
calibration method, per-channel, graph levels. No server, no TensorFlow in this process beyond the
shared session fixture that trains the model."""
# ruff: noqa: F401, F811 - the session fixture is imported from optimizer_fixtures and used as an argument

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from optimizer_fixtures import digits

from optimizer_svc import onnx_techniques as OT

pytestmark = pytest.mark.integration


def _accuracy(path, digits) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {"image": digits.eval_x})[0].argmax(-1) == digits.eval_y).mean())


@pytest.mark.parametrize("method,per_channel,types,fmt", [("minmax", False, "s8s8", "qdq"),
                                                          ("entropy", False, "u8s8", "qoperator"),
                                                          ("percentile", True, "u8s8", "qdq")])
def test_static_int8_every_calibration_method(digits, tmp_path, method, per_channel, types, fmt):
    out = tmp_path / f"{method}.onnx"
    calib = {"image": np.load(digits.calib)["x"]}
    recipe = OT.Recipe(activations=types[:2], weights=types[2:], per_channel=per_channel, fmt=fmt, method=method)
    d = OT.int8_static(digits.onnx_path, out, calib, recipe, samples=64)
    m = onnx.load(str(out))
    weights = [t for t in m.graph.initializer if len(t.dims) >= 2]
    assert weights and all(t.data_type == onnx.TensorProto.INT8 for t in weights)
    if per_channel:  # one scale per output channel for the conv kernels
        scales = [t for t in m.graph.initializer if t.name.endswith("_scale") and len(t.dims) == 1 and t.dims[0] > 1]
        assert scales
    assert d["method"] == method and d["calibration_samples"] == "64" and d["recipe"] == recipe.key
    ops = {n.op_type for n in m.graph.node}
    assert ("QLinearConv" in ops) == (fmt == "qoperator") and ("DequantizeLinear" in ops)
    assert _accuracy(out, digits) >= digits.keras_accuracy - 0.02


def test_graph_levels_and_fp16_keep_the_answers(digits, tmp_path):
    for level in ("basic", "extended"):
        d = OT.graph_optimize(digits.onnx_path, tmp_path / f"{level}.onnx", level)
        assert int(d["nodes_after"]) <= int(d["nodes_before"])
        assert _accuracy(tmp_path / f"{level}.onnx", digits) == pytest.approx(digits.keras_accuracy, abs=1e-6)
    OT.fp16(digits.onnx_path, tmp_path / "fp16.onnx")
    assert _accuracy(tmp_path / "fp16.onnx", digits) == pytest.approx(digits.keras_accuracy, abs=0.005)
