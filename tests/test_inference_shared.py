"""Unit tests of the shared pieces the inference service is built on: provider selection,
the KServe v2 tensor codec and the Triton model-repository reader/writer."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from modelport import providers, repository
from modelport.errors import InvalidArgument
from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import model_config_pb2 as mc

ALL_GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


# --- providers --------------------------------------------------------------------------------

def test_auto_prefers_tensorrt_then_cuda_then_cpu():
    provs, warns = providers.select_providers("auto", ALL_GPU, device_id=1)
    assert [p for p, _ in provs] == ALL_GPU
    assert provs[0][1]["device_id"] == "1" and provs[1][1]["device_id"] == "1"
    assert provs[0][1]["trt_fp16_enable"] == "0"
    assert provs[1][1]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert warns == []


def test_auto_picks_openvino_before_cpu_and_cpu_alone():
    provs, _ = providers.select_providers("auto", ["OpenVINOExecutionProvider", "CPUExecutionProvider"])
    assert [p for p, _ in provs] == ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    assert provs[0][1] == {"device_type": "CPU"}
    provs, warns = providers.select_providers("", ["AzureExecutionProvider", "CPUExecutionProvider"])
    assert provs == [("CPUExecutionProvider", {})] and warns == []


def test_explicit_choice_absent_falls_back_to_cpu_with_warning():
    provs, warns = providers.select_providers("cuda", ["CPUExecutionProvider"])
    assert provs == [("CPUExecutionProvider", {})]
    assert len(warns) == 1 and "CUDAExecutionProvider is not available" in warns[0]
    assert "using CPUExecutionProvider" in warns[0]


def test_explicit_choice_present_is_used_with_cpu_behind():
    provs, warns = providers.select_providers("tensorrt", ALL_GPU, trt_cache_dir="/tmp/trt")
    assert [p for p, _ in provs] == ALL_GPU
    assert provs[0][1]["trt_engine_cache_enable"] == "1" and provs[0][1]["trt_engine_cache_path"] == "/tmp/trt"
    provs, _ = providers.select_providers("CUDAExecutionProvider", ALL_GPU)
    assert [p for p, _ in provs] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_unknown_provider_name_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="unknown execution provider 'tpu'.*auto, cpu, cuda, tensorrt, openvino"):
        providers.select_providers("tpu", ["CPUExecutionProvider"])


def test_real_available_list_builds_a_session_option_set():
    choice = providers.choose("auto")
    assert choice.primary in ort.get_available_providers()
    so = providers.session_options(2, 1, "extended")
    assert so.intra_op_num_threads == 2
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with pytest.raises(ValueError, match="unknown graph optimization level 'max'"):
        providers.graph_optimization_level("max")
    assert providers.graph_optimization_level(-1) == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    quiet = providers.session_options(allow_spinning=False)
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# --- codec ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int8, np.int16, np.int32, np.int64,
                                   np.uint8, np.uint16, np.uint32, np.uint64, np.bool_])
def test_raw_round_trip_every_numeric_dtype(dtype):
    arr = (np.arange(6).reshape(2, 3) % 2 == 0) if dtype is np.bool_ else np.arange(6, dtype=dtype).reshape(2, 3)
    req = codec.make_infer_request("m", {"x": arr})
    back = codec.decode_inputs(pb.ModelInferRequest.FromString(req.SerializeToString()))["x"]
    assert back.dtype == arr.dtype and back.shape == (2, 3)
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.uint64,
                                   np.bool_])
def test_typed_contents_round_trip(dtype):
    arr = np.array([[1, 0, 1]], dtype=dtype)
    req = codec.make_infer_request("m", {"x": arr}, raw=False)
    assert not req.raw_input_contents
    np.testing.assert_array_equal(codec.decode_inputs(req)["x"], arr)


def test_bytes_tensor_length_prefixed_and_typed():
    arr = np.array([["héllo", ""], ["a" * 300, "x"]], dtype=object)
    datatype, shape, raw = codec.to_raw(arr)
    assert datatype == "BYTES" and shape == [2, 2]
    assert raw[:4] == len("héllo".encode()).to_bytes(4, "little")
    back = codec.tensor_from_raw("s", "BYTES", shape, raw)
    assert back.tolist() == [["héllo".encode(), b""], [b"a" * 300, b"x"]]
    typed = codec.decode_inputs(codec.make_infer_request("m", {"s": arr}, raw=False))["s"]
    assert typed.tolist() == back.tolist()


def test_fp16_has_no_typed_form():
    with pytest.raises(ValueError, match="FP16 has no typed contents"):
        codec.make_infer_request("m", {"h": np.zeros(2, np.float16)}, raw=False)
    req = pb.ModelInferRequest()
    req.inputs.add(name="h", datatype="FP16", shape=[2])
    with pytest.raises(InvalidArgument, match="input 'h': FP16 has no typed contents field; send it in raw"):
        codec.decode_inputs(req)


def test_bad_raw_lengths_name_the_tensor():
    with pytest.raises(InvalidArgument, match=r"input 'x': raw content has 7 bytes but shape \[2\] of FP32 needs 8"):
        codec.tensor_from_raw("x", "FP32", [2], b"\0" * 7)
    with pytest.raises(InvalidArgument, match="input 's': BYTES raw content holds 1 elements but its shape needs 2"):
        codec.tensor_from_raw("s", "BYTES", [2], codec.serialize_bytes_tensor(["a"]))
    with pytest.raises(InvalidArgument, match="input 's': BYTES element 0 declares 9 bytes but only 1 remain"):
        codec.tensor_from_raw("s", "BYTES", [1], (9).to_bytes(4, "little") + b"a")
    with pytest.raises(InvalidArgument, match="input 'x': unknown datatype 'FP8'"):
        codec.tensor_from_raw("x", "FP8", [1], b"\0")
    with pytest.raises(InvalidArgument, match="negative dimension"):
        codec.tensor_from_raw("x", "FP32", [-1], b"")


def test_mismatched_raw_count_and_duplicate_input():
    req = codec.make_infer_request("m", {"a": np.zeros(1, np.float32), "b": np.zeros(1, np.float32)})
    del req.raw_input_contents[1]
    with pytest.raises(InvalidArgument, match="2 inputs but 1 raw_input_contents"):
        codec.decode_inputs(req)


def test_response_outputs_always_raw():
    out = {"y": np.ones((2, 2), np.float16), "s": np.array(["a", "bc"], dtype=object)}
    resp = codec.make_infer_response("m", "1", out, request_id="r1")
    assert len(resp.raw_output_contents) == 2 and resp.id == "r1"
    assert [o.datatype for o in resp.outputs] == ["FP16", "BYTES"]
    back = codec.decode_outputs(resp)
    np.testing.assert_array_equal(back["y"], out["y"])
    assert back["s"].tolist() == [b"a", b"bc"]


# --- repository -------------------------------------------------------------------------------

TRITON_CONFIG = """
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 500 }
version_policy: { latest: { num_versions: 2 } }
optimization { execution_accelerators { cpu_execution_accelerator : [ { name : "openvino" } ] } }
model_warmup [ { name: "w" batch_size: 1 } ]
response_cache { enable: true }
"""


def test_parse_full_triton_config_skips_unknown_fields():
    cfg = repository.parse_config(TRITON_CONFIG)
    assert cfg.max_batch_size == 8 and cfg.input[0].dims == [4]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.instance_group[0].count == 2
    assert cfg.optimization.execution_accelerators.cpu_execution_accelerator[0].name == "openvino"
    assert repository.select_versions(cfg.version_policy, [1, 2, 3]) == [2, 3]


def test_parse_error_names_the_file_and_fix():
    with pytest.raises(InvalidArgument, match="bad.pbtxt: .*fix the protobuf text-format syntax"):
        repository.parse_config("max_batch_size: {", "bad.pbtxt")


def test_version_policies():
    p = mc.ModelVersionPolicy()
    assert repository.select_versions(p, [3, 1, 2]) == [3]
    p.all.SetInParent()
    assert repository.select_versions(p, [3, 1, 2]) == [1, 2, 3]
    p = mc.ModelVersionPolicy()
    p.specific.versions.extend([1, 5])
    assert repository.select_versions(p, [1, 2]) == [1]


def test_write_then_scan(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    src = tmp_path / "src.onnx"
    onnx.save(helper.make_model(graph), src)
    cfg = repository.config_from_onnx("ident", src, max_batch_size=4, dynamic_batching=True,
                                      preferred_batch_sizes=[2], max_queue_delay_us=100)
    assert cfg.input[0].dims == [3] and cfg.input[0].data_type == mc.TYPE_FP32
    repo = tmp_path / "repo"
    repository.write_model(repo, "ident", 1, src, cfg)
    repository.write_model(repo, "ident", 2, src.read_bytes())
    with pytest.raises(InvalidArgument, match="already exists; pick a new version number"):
        repository.write_model(repo, "ident", 2, src)
    models = repository.scan(repo)
    m = models["ident"]
    assert sorted(m.versions) == [1, 2] and m.has_config
    assert m.config.dynamic_batching.preferred_batch_size == [2]
    assert m.selected_versions() == [2]
    assert not any(p.name.startswith(".") for p in (repo / "ident").iterdir())
