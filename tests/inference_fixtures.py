"""Tiny ONNX models built with onnx.helper (no TensorFlow) and a Triton-layout repository for the
inference-service tests."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport import repository

OPSET = [helper.make_opsetid("", 17)]

MLP_W = (np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0)
MLP_B = np.array([1.0, 2.0, 3.0], dtype=np.float32)


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def mlp(path: Path, scale: float = 1.0) -> Path:
    """y = (x @ W + b) * scale, x FP32 [N, 4] -> y FP32 [N, 3]."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Add", ["h", "B"], ["z"]),
        helper.make_node("Mul", ["z", "S"], ["y"]),
    ]
    inits = [numpy_helper.from_array(MLP_W, "W"), numpy_helper.from_array(MLP_B, "B"),
             numpy_helper.from_array(np.array(scale, np.float32), "S")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return _save(g, path)


def mlp_expected(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    return ((x @ MLP_W + MLP_B) * scale).astype(np.float32)


def multi(path: Path) -> Path:
    """Two inputs, three outputs: a FP32 [N,3], b INT64 [N,3] -> sum FP32, prod INT64, pos BOOL."""
    nodes = [
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "bf"], ["sum"]),
        helper.make_node("Mul", ["b", "b"], ["prod"]),
        helper.make_node("Greater", ["a", "zero"], ["pos"]),
    ]
    g = helper.make_graph(
        nodes, "multi",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("b", TensorProto.INT64, ["N", 3])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("prod", TensorProto.INT64, ["N", 3]),
         helper.make_tensor_value_info("pos", TensorProto.BOOL, ["N", 3])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    return _save(g, path)


def strings(path: Path) -> Path:
    """BYTES in and out: s STRING [N] -> same STRING [N]; also flag BOOL [N] -> not_flag."""
    g = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["same"]), helper.make_node("Not", ["flag"], ["not_flag"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["N"]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, ["N"])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["N"]),
         helper.make_tensor_value_info("not_flag", TensorProto.BOOL, ["N"])],
    )
    return _save(g, path)


def fp16(path: Path) -> Path:
    """h FP16 [N, 2] -> twice FP16 [N, 2] (h * 2)."""
    g = helper.make_graph(
        [helper.make_node("Mul", ["h", "two"], ["twice"])], "fp16",
        [helper.make_tensor_value_info("h", TensorProto.FLOAT16, ["N", 2])],
        [helper.make_tensor_value_info("twice", TensorProto.FLOAT16, ["N", 2])],
        [numpy_helper.from_array(np.array(2.0, np.float16), "two")],
    )
    return _save(g, path)


ALL_TYPES = {  # input name -> (ONNX element type, numpy dtype)
    "bool": (TensorProto.BOOL, np.bool_), "uint8": (TensorProto.UINT8, np.uint8),
    "uint16": (TensorProto.UINT16, np.uint16), "uint32": (TensorProto.UINT32, np.uint32),
    "uint64": (TensorProto.UINT64, np.uint64), "int8": (TensorProto.INT8, np.int8),
    "int16": (TensorProto.INT16, np.int16), "int32": (TensorProto.INT32, np.int32),
    "int64": (TensorProto.INT64, np.int64), "fp16": (TensorProto.FLOAT16, np.float16),
    "fp32": (TensorProto.FLOAT, np.float32), "fp64": (TensorProto.DOUBLE, np.float64),
}


def alltypes(path: Path) -> Path:
    """Every numeric KServe datatype: input ``<t>`` [N, 2] -> output ``<t>_out`` (Identity)."""
    g = helper.make_graph(
        [helper.make_node("Identity", [n], [f"{n}_out"]) for n in ALL_TYPES], "alltypes",
        [helper.make_tensor_value_info(n, t, ["N", 2]) for n, (t, _) in ALL_TYPES.items()],
        [helper.make_tensor_value_info(f"{n}_out", t, ["N", 2]) for n, (t, _) in ALL_TYPES.items()],
    )
    return _save(g, path)


def alltypes_inputs(batch: int = 2) -> dict[str, np.ndarray]:
    out = {}
    for i, (n, (_, dt)) in enumerate(ALL_TYPES.items()):
        if dt is np.bool_:
            out[n] = (np.arange(batch * 2).reshape(batch, 2) % 2).astype(bool)
        else:
            out[n] = (np.arange(batch * 2).reshape(batch, 2) + i).astype(dt)
    return out


def reshape(path: Path) -> Path:
    """v FP32 [K] -> r FP32 [2, 2]: accepts any K by its metadata, but only K = 4 runs."""
    g = helper.make_graph(
        [helper.make_node("Reshape", ["v", "shape"], ["r"])], "reshape",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["K"])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 2])],
        [numpy_helper.from_array(np.array([2, 2], np.int64), "shape")],
    )
    return _save(g, path)


def fixed(path: Path) -> Path:
    """No batch dimension: m FP32 [2, 2] -> t FP32 [2, 2] (transpose)."""
    g = helper.make_graph(
        [helper.make_node("Transpose", ["m"], ["t"], perm=[1, 0])], "fixed",
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 2])],
    )
    return _save(g, path)


BATCHED_CONFIG = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 20000000 }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def build_repository(root: Path) -> Path:
    """A Triton-layout repository: mlp (2 versions, policy all), multi, strings, fp16, fixed, batched,
    and two models that fail to load (broken config.pbtxt, junk model file)."""
    mlp(root / "mlp" / "1" / "model.onnx")
    mlp(root / "mlp" / "2" / "model.onnx", scale=2.0)
    (root / "mlp" / "config.pbtxt").write_text(
        'name: "mlp"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 16\n'
        'version_policy: { all: { } }\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        'model_warmup [ { name: "w" batch_size: 1 } ]\n'
    )
    multi(root / "multi" / "1" / "model.onnx")
    (root / "multi" / "config.pbtxt").write_text("max_batch_size: 8\n")
    strings(root / "strings" / "1" / "model.onnx")
    (root / "strings" / "config.pbtxt").write_text("max_batch_size: 8\n")
    fp16(root / "fp16" / "1" / "model.onnx")
    (root / "fp16" / "config.pbtxt").write_text("max_batch_size: 8\n")
    fixed(root / "fixed" / "1" / "model.onnx")
    alltypes(root / "alltypes" / "1" / "model.onnx")
    reshape(root / "reshape" / "1" / "model.onnx")
    mlp(root / "batched" / "1" / "model.onnx")
    (root / "batched" / "config.pbtxt").write_text(BATCHED_CONFIG)
    repository.read_model(root / "batched")  # parses
    # Two models that fail to load: the server starts and serves the others anyway.
    (root / "broken" / "1").mkdir(parents=True)
    mlp(root / "broken" / "1" / "model.onnx")
    (root / "broken" / "config.pbtxt").write_text("max_batch_size: {\n")
    (root / "junk" / "1").mkdir(parents=True)
    (root / "junk" / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    return root


def expect_error(code, fragments, fn) -> str:
    """Call ``fn``; assert it fails with gRPC status ``code`` and a message containing every fragment."""
    with pytest.raises(grpc.RpcError) as err:
        fn()
    assert err.value.code() == code, err.value.details()
    for f in fragments:
        assert f in err.value.details(), err.value.details()
    return err.value.details()
