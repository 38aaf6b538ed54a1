"""Strict readiness as Triton's ``--strict-readiness`` does it, over real gRPC: ServerReady is false
while a model the server was told to load is unavailable (its load failed and no version of it
serves), true again once it loads; unloaded models and failed reloads of a serving model do not
count; ``--no-strict-readiness`` means "started". grpc.health.v1 stays SERVING either way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference_fixtures import expect_error, mlp, mlp_expected

from inference_svc.manager import LoadOptions, ModelManager
from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from modelport.runtime.background import BackgroundServer
from modelport.runtime.settings import parse_settings

JUNK = b"this is not an onnx model"


def _repository(root: Path) -> Path:
    """good: a working mlp; bad: a model file that is not ONNX (fails to load at startup)."""
    mlp(root / "good" / "1" / "model.onnx")
    (root / "good" / "config.pbtxt").write_text("max_batch_size: 8\n")
    (root / "bad" / "1").mkdir(parents=True)
    (root / "bad" / "1" / "model.onnx").write_bytes(JUNK)
    return root


def _start(tmp: Path, **kw) -> BackgroundServer:
    settings = InferenceSettings(port=0, host="127.0.0.1", store=tmp / "store", repository=_repository(tmp / "repo"),
                                 **kw)
    return BackgroundServer(InferenceService(settings)).start()


def test_strict_readiness_follows_models_that_failed_to_load(tmp_path):
    srv = _start(tmp_path)
    repo = tmp_path / "repo"
    try:
        with grpc.insecure_channel(srv.address) as ch:
            kserve = pb_grpc.GRPCInferenceServiceStub(ch)
            health = health_pb2_grpc.HealthStub(ch)

            def ready() -> bool:
                return kserve.ServerReady(pb.ServerReadyRequest()).ready

            def good_ready() -> bool:
                return kserve.ModelReady(pb.ModelReadyRequest(name="good")).ready

            # Startup: 'bad' failed to load -> live but not ready; 'good' serves.
            assert kserve.ServerLive(pb.ServerLiveRequest()).live
            assert not ready()
            assert good_ready()
            rows = {m.name: m for m in kserve.RepositoryIndex(pb.RepositoryIndexRequest()).models}
            assert rows["bad"].state == "UNAVAILABLE" and "onnxruntime cannot load model.onnx" in rows["bad"].reason
            x = np.ones((2, 4), np.float32)
            out = codec.decode_outputs(kserve.ModelInfer(codec.make_infer_request("good", {"x": x}), timeout=30))
            np.testing.assert_allclose(out["y"], mlp_expected(x), rtol=1e-6)
            # grpc.health.v1 is unchanged: SERVING once started (liveness must not restart us for a bad model).
            assert health.Check(health_pb2.HealthCheckRequest(service="")).status == \
                health_pb2.HealthCheckResponse.SERVING

            # Unloading the failed model does not clear it (Triton: only a successful load does).
            expect_error(grpc.StatusCode.NOT_FOUND,
                          ["model 'bad' is not loaded; nothing to unload", "its last load failed",
                           "onnxruntime cannot load model.onnx", "fix it and load it again"],
                          lambda: kserve.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="bad")))
            assert not ready() and good_ready()

            # A typo in a load request is NOT_FOUND and does not make anything unavailable.
            expect_error(grpc.StatusCode.NOT_FOUND, ["model 'ghost' is not in the repository"],
                          lambda: kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="ghost")))
            assert not ready()

            # Fix 'bad' and load it: ready.
            mlp(repo / "bad" / "1" / "model.onnx", scale=3.0)
            kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="bad"))
            assert ready() and good_ready()
            assert kserve.ModelReady(pb.ModelReadyRequest(name="bad")).ready

            # A failed reload of a model that still serves its loaded version: stays ready (Triton keeps
            # the serving version when a reload fails).
            (repo / "bad" / "1" / "model.onnx").write_bytes(JUNK)
            expect_error(grpc.StatusCode.INVALID_ARGUMENT, ["onnxruntime cannot load model.onnx"],
                          lambda: kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="bad")))
            assert ready() and kserve.ModelReady(pb.ModelReadyRequest(name="bad")).ready

            # A model unloaded on request does not count.
            kserve.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="bad"))
            assert not kserve.ModelReady(pb.ModelReadyRequest(name="bad")).ready
            rows = {m.name: m for m in kserve.RepositoryIndex(pb.RepositoryIndexRequest()).models}
            assert (rows["bad"].state, rows["bad"].reason) == ("UNAVAILABLE", "unloaded")
            assert ready() and good_ready()

            # A model that fails a later RepositoryModelLoad (never served) counts, until it loads.
            (repo / "late" / "1").mkdir(parents=True)
            (repo / "late" / "1" / "model.onnx").write_bytes(JUNK)
            expect_error(grpc.StatusCode.INVALID_ARGUMENT, ["onnxruntime cannot load model.onnx"],
                          lambda: kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="late")))
            assert not ready() and good_ready()
            mlp(repo / "late" / "1" / "model.onnx")
            kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="late"))
            assert ready() and good_ready()
    finally:
        srv.stop()


def test_no_strict_readiness_means_started(tmp_path):
    srv = _start(tmp_path, strict_readiness=False)
    try:
        with grpc.insecure_channel(srv.address) as ch:
            kserve = pb_grpc.GRPCInferenceServiceStub(ch)
            assert kserve.ServerReady(pb.ServerReadyRequest()).ready
            assert kserve.ModelReady(pb.ModelReadyRequest(name="good")).ready
            assert not kserve.ModelReady(pb.ModelReadyRequest(name="bad")).ready
            rows = {m.name: m for m in kserve.RepositoryIndex(pb.RepositoryIndexRequest()).models}
            assert rows["bad"].state == "UNAVAILABLE" and "onnxruntime cannot load model.onnx" in rows["bad"].reason
    finally:
        srv.stop()


def test_failed_load_model_is_unavailable_until_a_version_loads(tmp_path):
    """ModelControl.LoadModel goes through ModelManager.load: a failure there counts the same way."""
    async def scenario():
        manager = ModelManager(defaults=LoadOptions(execution_provider="cpu"))
        junk = tmp_path / "junk.onnx"
        junk.write_bytes(JUNK)
        with pytest.raises(Exception, match="onnxruntime cannot load junk.onnx"):
            await manager.load("m", junk, 1)
        assert list(manager.unavailable()) == ["m"]
        assert "onnxruntime cannot load junk.onnx" in manager.unavailable()["m"]
        await manager.load("m", mlp(tmp_path / "m.onnx"), 1)
        assert manager.unavailable() == {}
        await manager.unload("m")
        assert manager.unavailable() == {}  # unloaded on request: not unavailable
        await manager.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_strict_readiness_flag_and_env(monkeypatch):
    assert InferenceSettings().strict_readiness is True
    assert parse_settings(InferenceSettings, ["--no-strict-readiness"]).strict_readiness is False
    monkeypatch.setenv("MODELPORT_INFERENCE_STRICT_READINESS", "false")
    assert InferenceSettings().strict_readiness is False
    assert parse_settings(InferenceSettings, ["--strict-readiness"]).strict_readiness is True
