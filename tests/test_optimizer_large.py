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


# ---- admission ------------------------------------------------------------------------------------

def _matmul_model(path) -> int:
    """x [N, 1000] -> MatMul(1000 x 1000 weight) -> Relu: 4 MB of weights. Returns the file size."""
    w = np.random.default_rng(1).standard_normal((1000, 1000)).astype(np.float32) / 30
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                              "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1000])],
                              [numpy_helper.from_array(w, "w")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save_model(m, str(path))
    return path.stat().st_size


def _optimizer(tmp_path, limit: int):
    from modelport.runtime.background import BackgroundServer
    from optimizer_svc.service import OptimizerService
    from optimizer_svc.settings import OptimizerSettings

    settings = OptimizerSettings(host="127.0.0.1", port=0, store=tmp_path / "store", warm_workers=0,
                                 job_timeout_s=600, memory_limit_bytes=limit)
    return BackgroundServer(OptimizerService(settings)).start()


def test_named_technique_that_cannot_fit_is_refused_before_a_worker_starts(tmp_path):
    from modelport import Client
    from modelport.client import ClientError
    from optimizer_svc import admission

    size = _matmul_model(tmp_path / "m.onnx")
    # the baseline with graph fits, int8-dynamic (quant_pre_process first below 256 MiB) not
    graph = admission.BASELINE_FACTOR + admission.FACTORS["graph"]
    int8 = admission.BASELINE_FACTOR + admission.PREPROCESSED_INT8_DYNAMIC_FACTOR
    assert graph < 5 < int8
    limit = admission.OVERHEAD_BYTES + 5 * size
    srv = _optimizer(tmp_path, limit)
    try:
        with Client(optimizer=srv.address) as client:
            ref = client.upload(tmp_path / "m.onnx", service="optimizer")
            events = []
            try:
                client.optimize(ref, ["graph", "int8-dynamic"], on_event=events.append)
                raise AssertionError("int8-dynamic was admitted")
            except ClientError as e:
                err = e
    finally:
        srv.stop()
    assert err.code == "RESOURCE_EXHAUSTED" and events == []  # refused in the service: no job event at all
    msg = err.message
    needed = admission.OVERHEAD_BYTES + int(size * int8)
    assert msg.startswith(f"int8-dynamic on this model needs about {needed / 1e6:.1f} MB of memory ({size / 1e6:.1f} "
                          f"MB of weights x {int8:g}), but only "), msg
    assert f"is available (MODELPORT_MEMORY_LIMIT_BYTES={limit})" in msg
    assert "drop int8-dynamic from the request or ask for 'auto'" in msg and "raise the optimizer's memory_limit_bytes" in msg


def test_auto_skips_what_cannot_fit_with_the_reason_and_builds_the_rest(tmp_path):
    from modelport import Client
    from optimizer_svc import admission

    size = _matmul_model(tmp_path / "m.onnx")
    # graph and fp16 fit, int8-dynamic (quant_pre_process first below 256 MiB) not
    fp16 = admission.BASELINE_FACTOR + admission.FACTORS["fp16"]
    int8 = admission.BASELINE_FACTOR + admission.PREPROCESSED_INT8_DYNAMIC_FACTOR
    assert admission.FACTORS["graph"] < admission.FACTORS["fp16"] and fp16 < int8
    limit = admission.OVERHEAD_BYTES + int((fp16 + int8) / 2 * size)
    srv = _optimizer(tmp_path, limit)
    try:
        with Client(optimizer=srv.address) as client:
            res = client.optimize(tmp_path / "m.onnx", ["auto"], max_accuracy_drop=1.0)
    finally:
        srv.stop()
    rows = {c.technique: c for c in res.candidates}
    for t in ("graph", "fp16"):
        assert rows[t].details.get("status", "") == "" and rows[t].size_bytes > 0, rows[t].note
    for t, factor in (("int8-dynamic", int8),):
        assert rows[t].details["status"] == "skipped"
        assert rows[t].note.startswith(f"skipped: {t} on this model needs about ") and f"weights x {factor:g})" in \
            rows[t].note and f"is available (MODELPORT_MEMORY_LIMIT_BYTES={limit})" in rows[t].note, rows[t].note
    assert "needs representative inputs" in rows["int8-static"].note  # skipped for its own reason first
    assert res.baseline.details["weight_bytes"] == str(size)
    assert res.baseline.details["memory_available_bytes"] == str(limit)


def test_a_folder_artifact_is_estimated_with_its_memory_mapped_baseline(tmp_path):
    import pytest
    from extdata_fixtures import embedding_model

    from modelport.archive import pack_dir
    from modelport.errors import ResourceExhausted
    from modelport.memory import MemoryBudget
    from optimizer_svc import admission

    model = embedding_model(tmp_path / "m", 4096, 64, 8)  # model.onnx + model.onnx.data, 1 MB of weights
    pack_dir(model.parent, tmp_path / "m.tar")
    weights, external = admission._sizes(tmp_path / "m.tar", "onnx")
    assert external and 4096 * 64 * 4 <= weights < 4096 * 64 * 4 + 64 * 1024
    est = admission.estimate("int8-dynamic", weights, external)
    assert est.factor == admission.EXTERNAL_BASELINE_FACTOR + admission.PREPROCESSED_INT8_DYNAMIC_FACTOR
    assert admission.estimate("int8-dynamic", weights).factor == (admission.BASELINE_FACTOR  # one protobuf
                                                                  + admission.PREPROCESSED_INT8_DYNAMIC_FACTOR)
    # The service reads only the stored file's size (the tar: weights + headers), never lists or parses it.
    file_weights, file_external = admission._file_sizes(tmp_path / "m.tar", "onnx")
    assert file_external and file_weights == (tmp_path / "m.tar").stat().st_size >= weights
    served = admission.estimate("int8-dynamic", file_weights, True)
    admission.check_request(["int8-dynamic"], "onnx", tmp_path / "m.tar", False, MemoryBudget(served.needed, "test"))
    factor = admission.EXTERNAL_BASELINE_FACTOR + admission.PREPROCESSED_INT8_DYNAMIC_FACTOR
    with pytest.raises(ResourceExhausted, match=rf"int8-dynamic on this model needs about .* x {factor:g}\), but only"):
        admission.check_request(["int8-dynamic"], "onnx", tmp_path / "m.tar", False,
                                MemoryBudget(served.needed - 1, "test"))
