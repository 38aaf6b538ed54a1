"""The optimizer on models too large for the memory left: int8-dynamic without onnxruntime's whole-model
copy (``optimizer_svc.lean_quantize``), and admission (``optimizer_svc.admission``): a job that cannot fit
is refused before it starts, and ``auto`` skips the techniques that cannot fit, with the reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from optimizer_svc import lean_quantize


def _model_with_big_and_small_weights(path) -> None:
    """ids [N, T] -> Gather(table 2 MiB) -> Reshape(constant target) -> Gemm(transB, 1.5 MiB) -> MatMul (small)."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((1024, 512)).astype(np.float32)  # 2 MiB: a dims-only skeleton tensor
    gemm_b = rng.standard_normal((768, 512)).astype(np.float32)  # 1.5 MiB, transB=1: becomes MatMul + transpose
    gemm_c = rng.standard_normal(768).astype(np.float32)
    small = rng.standard_normal((768, 8)).astype(np.float32)
    shape = np.array([-1, 512], np.int64)  # kept whole: its values decide the Reshape's output shape
    inits = [numpy_helper.from_array(a, n) for a, n in ((table, "table"), (gemm_b, "gemm_b"), (gemm_c, "gemm_c"),
                                                        (small, "small"), (shape, "shape"))]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "gemm_b", "gemm_c"], ["h"], transB=1),
             helper.make_node("MatMul", ["h", "small"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save_model(m, str(path))


def test_lean_value_info_refresh_quantizes_like_onnxruntime_byte_for_byte(tmp_path):
    src = tmp_path / "m.onnx"
    _model_with_big_and_small_weights(src)
    plain, lean = tmp_path / "plain.onnx", tmp_path / "lean.onnx"
    quantize_dynamic(str(src), str(plain), weight_type=QuantType.QInt8)
    calls = []
    original = lean_quantize.refreshed_value_info

    def counted(model):
        calls.append(len(model.graph.initializer))
        return original(model)

    lean_quantize.refreshed_value_info = counted
    try:
        with lean_quantize.lean_value_info_refresh() as patched:
            quantize_dynamic(str(src), str(lean), weight_type=QuantType.QInt8)
    finally:
        lean_quantize.refreshed_value_info = original
    assert patched and len(calls) == 1  # the quantizer's refresh went through the lean path
    a, b = onnx.load(str(plain)), onnx.load(str(lean))
    for t in a.graph.initializer:  # onnxruntime's reload leaves data_location=DEFAULT set explicitly: same tensor
        t.ClearField("data_location")
    assert [n.op_type for n in b.graph.node] == [n.op_type for n in a.graph.node]
    assert "MatMulInteger" in {n.op_type for n in b.graph.node}
    assert {t.name: t.SerializeToString() for t in b.graph.initializer} == \
           {t.name: t.SerializeToString() for t in a.graph.initializer}
    assert {v.name: v.SerializeToString() for v in b.graph.value_info} == \
           {v.name: v.SerializeToString() for v in a.graph.value_info}
    assert b.SerializeToString() == a.SerializeToString()  # the whole model, byte for byte
    ids = np.array([0, 5, 1023], np.int64)
    ya = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    yb = ort.InferenceSession(str(lean), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    assert ya.shape == (3, 8) and np.array_equal(ya, yb)
    # The module-level function is back once the block ends.
    from onnxruntime.quantization import onnx_quantizer
    assert onnx_quantizer.save_and_reload_model_with_shape_infer is not counted


def test_skeleton_keeps_small_tensors_whole_and_large_ones_as_shapes(tmp_path):
    src = tmp_path / "m.onnx"
    _model_with_big_and_small_weights(src)
    sk = lean_quantize.skeleton(onnx.load(str(src)))
    by = {t.name: t for t in sk.graph.initializer}
    assert not by["table"].raw_data and list(by["table"].dims) == [1024, 512]
    assert not by["gemm_b"].raw_data and list(by["gemm_b"].dims) == [768, 512]
    assert numpy_helper.to_array(by["shape"]).tolist() == [-1, 512]
    assert numpy_helper.to_array(by["small"]).shape == (768, 8)
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(sk).graph.value_info}
    dims = [d.dim_value or d.dim_param for d in inferred["flat"].type.tensor_type.shape.dim]
    assert dims[1] == 512  # the Reshape target's values were read
