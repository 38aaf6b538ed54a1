"""Generated code is committed; it must match a fresh regeneration from protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_code_matches_protos(tmp_path):
    gen = _load_generator()
    protos = gen.generate(tmp_path)
    assert protos, "no .proto files found"
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
