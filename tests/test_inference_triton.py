"""Triton's own client (tritonclient.grpc) against the inference service, unchanged.

tritonclient pins protobuf < 7 and cannot share a process with our stubs (docs/FACTS.md), so the
client side runs as ``tests/triton_compat/roundtrip.py`` under the tritonclient venv
(``MODELPORT_TRITON_PYTHON``, else ``<repo>/.venv-triton/bin/python``) and writes what it sent
and received; this test checks the values.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from inference_fixtures import build_repository, mlp_expected

from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport import cpuinfo
from modelport.runtime.background import BackgroundServer

ROOT = Path(__file__).resolve().parent.parent


def triton_python() -> str:
    candidates = [os.environ.get("MODELPORT_TRITON_PYTHON", ""), str(ROOT / ".venv-triton" / "bin" / "python")]
    for c in candidates:
        if c and Path(c).is_file():
            return c
    pytest.fail("no tritonclient venv: run `make triton-venv` (or set MODELPORT_TRITON_PYTHON to a python with "
                "tritonclient[grpc] installed)")


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    py = triton_python()
    tmp = tmp_path_factory.mktemp("triton")
    repo = build_repository(tmp / "repo")
    settings = InferenceSettings(port=0, host="127.0.0.1", store=tmp / "store", repository=repo)
    with BackgroundServer(InferenceService(settings)) as srv:
        out = tmp / "out.npz"
        p = subprocess.run([py, str(ROOT / "tests" / "triton_compat" / "roundtrip.py"), srv.address, str(out)],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-4000:]
    z = np.load(out, allow_pickle=False)
    arrays = {k: z[k] for k in z.files}
    facts = json.loads(arrays.pop("facts").tobytes())
    return facts, arrays


def test_health_metadata_config_index(roundtrip):
    facts, _ = roundtrip
    # strict readiness (the default, as in Triton): 'broken' and 'junk' failed to load -> live, not ready
    assert facts["live"] and not facts["ready"] and facts["mlp_ready"]
    assert facts["server"]["name"] == "modelport-inference"
    # tritonclient lists the CPU-flags entry like any other extension
    assert cpuinfo.extension_entry() in facts["server"]["extensions"]
    md = facts["mlp_metadata"]
    assert md["platform"] == "onnxruntime_onnx" and md["versions"] == ["1", "2"]
    assert md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    cfg = facts["mlp_config"]["config"]
    assert cfg["max_batch_size"] == 16 and cfg["parameters"]["execution_provider"]["string_value"] == "CPUExecutionProvider"
    index = {(m["name"], m.get("version", "")) for m in facts["index"]["models"]}
    assert {("mlp", "1"), ("mlp", "2"), ("strings", "1"), ("fp16", "1")} <= index


def test_infer_versions_and_request_id(roundtrip):
    facts, a = roundtrip
    np.testing.assert_allclose(a["mlp_y_latest"], mlp_expected(a["mlp_x"], 2.0), rtol=1e-6)
    np.testing.assert_allclose(a["mlp_y_v1"], mlp_expected(a["mlp_x"]), rtol=1e-6)
    resp = facts["mlp_v1_response"]
    assert resp["id"] == "req-7" and resp["model_version"] == "1" and len(resp["raw_output_contents"]) == 1


def test_multi_input_output_subset_and_bool(roundtrip):
    facts, a = roundtrip
    assert facts["multi_outputs"] == ["pos", "prod"] and facts["multi_sum_absent"]
    np.testing.assert_array_equal(a["multi_pos"], a["multi_a"] > 0)
    np.testing.assert_array_equal(a["multi_prod"], a["multi_b"] * a["multi_b"])


def test_bytes_strings_and_fp16(roundtrip):
    facts, a = roundtrip
    assert facts["strings_same"] == facts["strings_sent"] == ["hello", "wörld", "", "\x00bin"]
    np.testing.assert_array_equal(a["strings_not_flag"], ~a["strings_flag"])
    assert a["fp16_twice"].dtype == np.float16
    np.testing.assert_array_equal(a["fp16_twice"], a["fp16_h"] * 2)


def test_dynamic_batching_through_tritonclient(roundtrip):
    facts, a = roundtrip
    for i in range(4):
        np.testing.assert_allclose(a[f"batched_y{i}"], mlp_expected(a[f"batched_x{i}"]), rtol=1e-6)
    st = facts["batched_stats"]["model_stats"][0]
    assert int(st["inference_count"]) == 8
    assert int(st["execution_count"]) < int(st["inference_count"])
    assert int(st["execution_count"]) == 1
    assert [int(b["batch_size"]) for b in st["batch_stats"]] == [8]


def test_stream_errors_statistics_and_repository_control(roundtrip):
    facts, a = roundtrip
    assert facts["stream_error"] is None
    np.testing.assert_allclose(a["stream_y"], mlp_expected(a["mlp_x"][:1]), rtol=1e-6)
    errs = facts["errors"]
    assert errs["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "model 'nope' is not loaded" in errs["unknown_model"]["message"]
    assert errs["wrong_dtype"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "input 'x': datatype FP64 does not match the model's FP32" in errs["wrong_dtype"]["message"]
    stats = {s["version"]: s for s in facts["stats_mlp"]["model_stats"]}
    assert int(stats["1"]["inference_stats"]["success"]["count"]) >= 2
    assert int(stats["2"]["inference_stats"]["fail"]["count"]) == 1
    assert facts["fixed_ready_after_unload"] is False and facts["fixed_ready_after_load"] is True


def test_every_numeric_datatype(roundtrip):
    _, a = roundtrip
    names = [k[len("alltypes_in_"):] for k in a if k.startswith("alltypes_in_")]
    assert len(names) == 12
    for n in names:
        sent, got = a[f"alltypes_in_{n}"], a[f"alltypes_out_{n}"]
        assert got.dtype == sent.dtype, n
        np.testing.assert_array_equal(got, sent)


def test_system_shared_memory_with_tritonclient(roundtrip):
    """tritonclient.utils.shared_memory + register_system_shared_memory + set_shared_memory, unchanged."""
    facts, a = roundtrip
    regions = {r["name"]: r for r in facts["shm_status"]["regions"].values()}
    assert set(regions) == {"tc_in", "tc_out"}
    assert regions["tc_out"]["offset"] == "256" and regions["tc_out"]["byte_size"] == "512"
    assert regions["tc_in"]["key"].startswith("/mp_triton_in_")
    assert list(facts["shm_status_one"]["regions"]) == ["tc_out"]
    # Triton's response layout: the output is described, its raw_output_contents entry is empty.
    assert facts["shm_y_output"] == {"datatype": "FP32", "shape": [3, 3], "raw": [0]}
    np.testing.assert_allclose(a["shm_y"], mlp_expected(a["shm_x"]), rtol=1e-6)
    # Mixed request: raw outputs stay readable with as_numpy next to a shared-memory one.
    np.testing.assert_array_equal(a["shm_multi_pos"], a["shm_multi_a"] > 0)
    np.testing.assert_allclose(a["shm_multi_sum"], a["shm_multi_a"] + a["shm_multi_b"], rtol=1e-6)
    assert facts["shm_strings"] == facts["shm_strings_sent"] == ["shm", "ünï", ""]
    errs = facts["shm_errors"]
    assert errs["duplicate"]["status"] == "StatusCode.ALREADY_EXISTS"
    assert "shared memory region 'tc_in' already in manager" in errs["duplicate"]["message"]
    assert errs["missing_key"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "Unable to open shared memory region: '/mp_absent_" in errs["missing_key"]["message"]
    assert errs["unknown_status"]["status"] == "StatusCode.NOT_FOUND"
    assert "Unable to find system shared memory region: 'nope'" in errs["unknown_status"]["message"]
    assert errs["cuda_status"]["status"] == "StatusCode.UNIMPLEMENTED"
    assert "no GPU build" in errs["cuda_status"]["message"]
    assert errs["too_small_output"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "output 'y' is 36 bytes" in errs["too_small_output"]["message"]
    assert list(facts["shm_status_after_one"]["regions"]) == ["tc_out"]
    assert facts["shm_status_after_all"] == {}
    assert facts["shm_segments_left"] == []


DESCRIPTORS = """
import json, sys
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2
fd = descriptor_pb2.FileDescriptorProto()
service_pb2.DESCRIPTOR.CopyToProto(fd)
print(json.dumps({m.name: m.SerializeToString().hex() for m in fd.message_type if "SharedMemory" in m.name}))
"""


def test_shared_memory_messages_match_tritonclients_proto():
    """Our SystemSharedMemory* / CudaSharedMemory* messages are byte-identical descriptors to tritonclient's."""
    from google.protobuf import descriptor_pb2

    from modelport.kserve.v2 import grpc_service_pb2

    p = subprocess.run([triton_python(), "-c", DESCRIPTORS], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-4000:]
    theirs = json.loads(p.stdout)
    fd = descriptor_pb2.FileDescriptorProto()
    grpc_service_pb2.DESCRIPTOR.CopyToProto(fd)
    ours = {m.name: m.SerializeToString().hex() for m in fd.message_type if "SharedMemory" in m.name}
    assert len(theirs) == 12 and ours == theirs
    methods = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    for kind in ("System", "Cuda"):
        for op in ("Status", "Register", "Unregister"):
            m = methods[f"{kind}SharedMemory{op}"]
            assert (m.input_type.name, m.output_type.name) == (f"{kind}SharedMemory{op}Request",
                                                               f"{kind}SharedMemory{op}Response")
