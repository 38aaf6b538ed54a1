"""Model metadata that came from a caller is read bounded by the inference service.

Rule (deploy/README.md, trust table): the model repository folder is the operator's; a caller places
models only through the store (``Artifacts.Upload`` + ``ModelControl.LoadModel``, or
``RepositoryModelLoad``'s ``config`` parameter), both with the token. The inference service reads
what a caller sent -- a ``config.pbtxt`` inside an uploaded model-repository archive, a JSON config
override -- with a size cap (256 KiB) and a nesting cap (32 levels) before the text-format parser
sees it, and off the event loop. Each test: a caller without the token is refused before anything is
unpacked; a hostile one gets INVALID_ARGUMENT naming the bound, nothing is loaded, nothing listed,
and the server keeps serving the model it had. A caller's ONNX file itself is parsed once in a sniffer
subprocess under a memory bound before onnxruntime loads it in the service: a protobuf bomb (10 MB of
empty nodes, ~1 GB inside onnxruntime) is refused there.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from inference_fixtures import mlp, mlp_expected
from test_trust_parsing import protobuf_bomb
from trust_helpers import TOKEN, health, rpc_error, token_channel

from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport import media, repository
from modelport.archive import pack_dir
from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from modelport.runtime.artifacts import to_ref
from modelport.runtime.background import BackgroundServer
from modelport.v1 import serving_pb2, serving_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    repository.write_model(root, "mlp", 1, mlp(tmp_path_factory.mktemp("src") / "m.onnx"))
    return root


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    settings = InferenceSettings(host="127.0.0.1", port=0, store=tmp_path_factory.mktemp("inf-store"),
                                 execution_provider="cpu", repository=repo, auth_token=TOKEN)
    srv = BackgroundServer(InferenceService(settings)).start()
    yield srv
    srv.stop(grace=1)


def repository_archive(tmp_path, config_text: str):
    """A model-repository artifact ``m/1/model.onnx`` + ``m/config.pbtxt`` (the caller's text)."""
    folder = tmp_path / "bundle"
    (folder / "m" / "1").mkdir(parents=True)
    mlp(folder / "m" / "1" / "model.onnx")
    (folder / "m" / "config.pbtxt").write_text(config_text)
    pack_dir(folder, tmp_path / "bundle.tar")
    return tmp_path / "bundle.tar"


def still_serving(server) -> None:
    """Health, readiness and an inference of the operator's model, all as before."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with token_channel(server.address) as ch:
        assert health(ch) == "SERVING"
        kserve = pb_grpc.GRPCInferenceServiceStub(ch)
        assert kserve.ServerReady(pb.ServerReadyRequest()).ready
        out = codec.decode_outputs(kserve.ModelInfer(codec.make_infer_request("mlp", {"x": x}), timeout=30))
        np.testing.assert_allclose(out["y"], mlp_expected(x), rtol=1e-5)
        names = {m.name for m in serving_pb2_grpc.ModelControlStub(ch).ListModels(
            serving_pb2.ListModelsRequest()).models}
        assert names == {"mlp"}
        assert {m.name for m in kserve.RepositoryIndex(pb.RepositoryIndexRequest()).models} == {"mlp"}


HOSTILE = {
    "deep": ("name: 'm'\n" + "x { " * 5000 + "}" * 5000,
             r"m/config.pbtxt nests 5000 levels deep; a model config nests at most 32"),
    "huge": ("name: 'm'\n" + "# padding\n" * 30_000,
             r"m/config.pbtxt is 300010 bytes; a model config is at most 262144 bytes"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_callers_config_pbtxt_is_read_bounded(server, tmp_path, channel_to, kind):
    text, message = HOSTILE[kind]
    stored = server.service.store.put_file(repository_archive(tmp_path, text), media.MODEL_REPOSITORY)
    request = serving_pb2.LoadModelRequest(name="m", model=to_ref(stored))
    unpacked = server.service.store.unpacked_dir / stored.digest.split(":")[1]

    # Unauthorised: refused before anything is pulled or unpacked.
    err = rpc_error(lambda: serving_pb2_grpc.ModelControlStub(channel_to(server.address)).LoadModel(request,
                                                                                                     timeout=30))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    assert not unpacked.exists()

    # Hostile, with the token: INVALID_ARGUMENT naming the bound; nothing loaded.
    with token_channel(server.address) as ch:
        err = rpc_error(lambda: serving_pb2_grpc.ModelControlStub(ch).LoadModel(request, timeout=60))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert message in err.details()
    assert str(server.service.store.root) not in err.details()  # no internal paths
    still_serving(server)


def test_a_json_config_override_is_capped(server, channel_to):
    big = '{"name": "mlp", "parameters": {"pad": {"string_value": "' + "x" * 300_000 + '"}}}'
    request = pb.RepositoryModelLoadRequest(model_name="mlp", parameters={"config": pb.ModelRepositoryParameter(
        string_param=big)})
    err = rpc_error(lambda: pb_grpc.GRPCInferenceServiceStub(channel_to(server.address)).RepositoryModelLoad(
        request, timeout=30))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    with token_channel(server.address) as ch:
        err = rpc_error(lambda: pb_grpc.GRPCInferenceServiceStub(ch).RepositoryModelLoad(request, timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert f"parameter 'config' is {len(big)} bytes; a model config is at most 262144 bytes" in err.details()
    still_serving(server)


def test_a_callers_protobuf_bomb_is_refused_before_onnxruntime(server, tmp_path, channel_to):
    stored = server.service.store.put_file(protobuf_bomb(tmp_path / "bomb.onnx"), media.ONNX)
    request = serving_pb2.LoadModelRequest(name="bomb", model=to_ref(stored))
    err = rpc_error(lambda: serving_pb2_grpc.ModelControlStub(channel_to(server.address)).LoadModel(request,
                                                                                                     timeout=30))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    with token_channel(server.address) as ch:
        err = rpc_error(lambda: serving_pb2_grpc.ModelControlStub(ch).LoadModel(request, timeout=120))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "reading the model took more than the 348.4 MB of memory allowed for a 10.0 MB upload" in err.details()
    still_serving(server)
    # A real model from a caller still passes the check and serves.
    stored = server.service.store.put_file(mlp(tmp_path / "ok.onnx", scale=2.0), media.ONNX)
    with token_channel(server.address) as ch:
        serving_pb2_grpc.ModelControlStub(ch).LoadModel(serving_pb2.LoadModelRequest(name="ok", model=to_ref(stored)),
                                                        timeout=120)
        x = np.ones((1, 4), np.float32)
        out = codec.decode_outputs(pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
            codec.make_infer_request("ok", {"x": x}), timeout=30))
        np.testing.assert_allclose(out["y"], mlp_expected(x, 2.0), rtol=1e-5)
        serving_pb2_grpc.ModelControlStub(ch).UnloadModel(serving_pb2.UnloadModelRequest(name="ok"), timeout=60)


def test_generation_json_is_read_bounded(tmp_path):
    from modelport.errors import InvalidArgument
    from modelport.generation_model import MAX_CONFIG_BYTES, GenerationConfig

    f = tmp_path / "generation.json"
    f.write_text('{"format": "modelport.generation/v1", "pad": "' + "x" * MAX_CONFIG_BYTES + '"}')
    with pytest.raises(InvalidArgument, match=rf"generation.json is {MAX_CONFIG_BYTES + 48} bytes; a generation "
                                              rf"config is at most {MAX_CONFIG_BYTES} bytes"):
        GenerationConfig.load(f)
    f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InvalidArgument, match="generation.json nests deeper than a generation config can"):
        GenerationConfig.load(f)
