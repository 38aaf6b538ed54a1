"""Generated code is committed; it must match a fresh regeneration from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_protos(tmp_path):
    # protoc runs in its own process: in-process it can crash once TensorFlow's native
    # protobuf code is loaded by other tests (seen: SIGSEGV in grpc_tools.protoc.main).
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "protoc produced nothing"
    drift = [str(rel) for rel in fresh if not (ROOT / rel).is_file() or (ROOT / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert drift == [], f"generated code is stale, run `make protos` and commit: {drift}"


def test_kserve_wire_names_match_triton():
    from modelport.kserve.v2 import grpc_service_pb2

    svc = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert svc.full_name == "inference.GRPCInferenceService"
    assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
            "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad",
            "RepositoryModelUnload"} <= set(svc.methods_by_name)
    assert grpc_service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number == 7
    assert grpc_service_pb2.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number == 6
