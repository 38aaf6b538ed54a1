"""Attacks on the inference service, each by a real client against a real server started with a token:
names that walk out of the repository, requests that claim huge tensors, shared memory used without the
token or shrunk under a queued request, streams that flood, config numbers that ask for the machine.

Every test asserts the code, the message, that nothing changed (index, readiness, the victim's memory)
and that the server still serves afterwards.
"""

from __future__ import annotations

import os
import tarfile
import threading

import grpc
import numpy as np
import pytest
from inference_fixtures import mlp, mlp_expected
from trust_helpers import TOKEN, health, rpc_error, stored_digests, token_channel

from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport import media, repository
from modelport.kserve import codec
from modelport.kserve import shm as kshm
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from modelport.runtime.artifacts import to_ref
from modelport.runtime.background import BackgroundServer
from modelport.v1 import serving_pb2, serving_pb2_grpc

BAD_NAMES = ["..", "../repo/m", "/etc", "", "a\x00b", "m/../../etc", ".", "x" * 200, "con fig"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    src = tmp_path_factory.mktemp("src")
    repository.write_model(root, "mlp", 1, mlp(src / "m.onnx"))
    batched = repository.config_from_onnx("slow", src / "m.onnx", max_batch_size=8, dynamic_batching=True,
                                          preferred_batch_sizes=[8], max_queue_delay_us=300_000)
    repository.write_model(root, "slow", 1, src / "m.onnx", batched)
    return root


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    settings = InferenceSettings(host="127.0.0.1", port=0, store=tmp_path_factory.mktemp("inf-store"),
                                 execution_provider="cpu", repository=repo, auth_token=TOKEN,
                                 max_stream_inflight=2)  # strict readiness (the default)
    srv = BackgroundServer(InferenceService(settings)).start()
    yield srv
    srv.stop(grace=1)


@pytest.fixture
def kserve(server):
    with token_channel(server.address) as ch:
        yield pb_grpc.GRPCInferenceServiceStub(ch)


@pytest.fixture
def open_kserve(server, channel_to):
    """A caller without the token (inference itself stays open)."""
    return pb_grpc.GRPCInferenceServiceStub(channel_to(server.address))


def index(stub) -> set[tuple[str, str, str]]:
    return {(m.name, m.version, m.state) for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}


def test_repository_names_that_walk_out_are_refused_before_any_path(server, kserve):
    before = index(kserve)
    assert kserve.ServerReady(pb.ServerReadyRequest()).ready
    for name in BAD_NAMES:
        for call in (lambda n: kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=n)),
                     lambda n: kserve.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=n))):
            err = rpc_error(lambda c=call, n=name: c(n))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.details())
            assert "is not allowed" in err.details() and "letters, digits" in err.details()
    assert index(kserve) == before  # never listed
    assert kserve.ServerReady(pb.ServerReadyRequest()).ready  # never out of the load balancer's rotation
    assert server.service.manager.unavailable() == {}
    with token_channel(server.address) as ch:
        assert health(ch) == "SERVING"


def test_load_model_names_versions_and_shm_keys_are_checked_first(server, tmp_path):
    stored = server.service.store.put_file(mlp(tmp_path / "m.onnx"), media.ONNX)
    with token_channel(server.address) as ch:
        control = serving_pb2_grpc.ModelControlStub(ch)
        for name in ("../x", "/etc/passwd", ""):
            err = rpc_error(lambda n=name: control.LoadModel(serving_pb2.LoadModelRequest(name=n, model=to_ref(stored))))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not allowed" in err.details()
        for version in ("-1", "0", "1e9", "99999999999999999999", "1/../2"):
            err = rpc_error(lambda v=version: control.LoadModel(
                serving_pb2.LoadModelRequest(name="ok", model=to_ref(stored), version=v)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "version" in err.details()
        kserve = pb_grpc.GRPCInferenceServiceStub(ch)
        for key in ("/../etc/passwd", "a/b", "..", "x\x00y"):
            err = rpc_error(lambda k=key: kserve.SystemSharedMemoryRegister(
                pb.SystemSharedMemoryRegisterRequest(name="r", key=k, byte_size=16)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not allowed" in err.details()
        assert "ok" not in {m.name for m in control.ListModels(serving_pb2.ListModelsRequest()).models}
        assert health(ch) == "SERVING"


def test_tiny_request_claiming_a_huge_tensor_is_refused_at_once(server, open_kserve):
    for shape, raw in (([2**40, 4], b""), ([0, 2**62], b""), ([2**31, 2**31], b"\0" * 16), ([1, 4], b"\0" * 16)):
        req = pb.ModelInferRequest(model_name="mlp")
        req.inputs.add(name="x", datatype="FP32", shape=shape)
        req.raw_input_contents.append(raw)
        if shape == [1, 4]:
            req.inputs[0].datatype = "INT64"  # a datatype the model does not take
        err = rpc_error(lambda r=req: open_kserve.ModelInfer(r, timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert ("claims more than" in err.details() or "does not match the model's" in err.details()), err.details()
    typed = pb.ModelInferRequest(model_name="mlp")
    typed.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1.0] * 3)
    assert rpc_error(lambda: open_kserve.ModelInfer(typed, timeout=10)).code() == grpc.StatusCode.INVALID_ARGUMENT
    x = np.ones((2, 4), np.float32)  # still serving, correctly
    out = codec.decode_outputs(open_kserve.ModelInfer(codec.make_infer_request("mlp", {"x": x}), timeout=10))
    np.testing.assert_allclose(out["y"], mlp_expected(x), rtol=1e-6)


@pytest.fixture
def segments():
    made = []

    def make(key: str, size: int) -> kshm.Segment:
        seg = kshm.Segment.create(f"{key}_{os.getpid()}", size)
        made.append(seg)
        return seg

    yield make
    for seg in made:
        seg.close()


def test_shared_memory_belongs_to_token_holders(server, kserve, open_kserve, segments):
    """A caller without the token can neither read a registered region through the model nor write into it."""
    inp, out = segments("mp_victim_in", 64), segments("mp_victim_out", 64)
    kserve.SystemSharedMemoryRegister(inp.register_request("victim_in"))
    kserve.SystemSharedMemoryRegister(out.register_request("victim_out"))
    try:
        secret = np.arange(8, dtype=np.float32).reshape(2, 4)
        ref = inp.write(secret)
        out.mm[:] = b"\x07" * 64
        req = kshm.make_shm_infer_request("mlp", {"x": ("FP32", (2, 4), ref)}, {"y": kshm.ShmRef("victim_out", 24)})
        err = rpc_error(lambda: open_kserve.ModelInfer(req, timeout=10))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "shared memory belongs to callers holding the service's token" in err.details()
        assert bytes(out.mm[:64]) == b"\x07" * 64  # nothing written into the victim's segment
        err = rpc_error(lambda: open_kserve.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest()))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        # the owner (token holder) uses them as before
        kserve.ModelInfer(req, timeout=10)
        np.testing.assert_allclose(out.read("FP32", (2, 3)), mlp_expected(secret), rtol=1e-6)
    finally:
        kserve.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())


def test_a_segment_shrunk_under_a_queued_request_fails_that_request_not_the_server(server, kserve, segments):
    """'slow' batches with a 300 ms delay: the request waits in the queue while the client truncates the
    output segment. A mapped region would SIGBUS the whole server; here the request fails alone."""
    inp, out = segments("mp_shrink_in", 64), segments("mp_shrink_out", 64)
    kserve.SystemSharedMemoryRegister(inp.register_request("shrink_in"))
    kserve.SystemSharedMemoryRegister(out.register_request("shrink_out"))
    try:
        x = np.ones((2, 4), np.float32)
        req = kshm.make_shm_infer_request("slow", {"x": ("FP32", (2, 4), inp.write(x))},
                                          {"y": kshm.ShmRef("shrink_out", 24)})
        scheduler = server.service.manager.get("slow").scheduler
        future = kserve.ModelInfer.future(req, timeout=30)
        queued = threading.Event()
        while not queued.wait(0.005):  # until the server holds it in the queue (state, not time)
            if scheduler.queued == 1:
                queued.set()
        os.ftruncate(os.open(out.path, os.O_RDWR), 0)
        os.ftruncate(os.open(inp.path, os.O_RDWR), 0)
        err = rpc_error(future.result)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "segment" in err.details() and "shrank to 0 bytes" in err.details()
        assert health_ok(server)
        got = codec.decode_outputs(kserve.ModelInfer(codec.make_infer_request("slow", {"x": x}), timeout=30))
        np.testing.assert_allclose(got["y"], mlp_expected(x), rtol=1e-6)
    finally:
        kserve.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())


def health_ok(server) -> bool:
    with token_channel(server.address) as ch:
        return health(ch) == "SERVING"


def test_stream_reads_at_most_max_stream_inflight_requests_ahead(server, open_kserve):
    """10 requests sent at once on one stream to 'slow' (batches of up to 8 after 300 ms): the server holds
    at most 2 (--max-stream-inflight) at a time, so no batch ever has more than 2 requests in it."""
    def stats():
        s = open_kserve.ModelStatistics(pb.ModelStatisticsRequest(name="slow", version="1")).model_stats[0]
        return {b.batch_size: b.compute_infer.count for b in s.batch_stats}

    before = stats()
    x = np.ones((1, 4), np.float32)
    reqs = [codec.make_infer_request("slow", {"x": x}, request_id=str(i)) for i in range(10)]
    replies = list(open_kserve.ModelStreamInfer(iter(reqs), timeout=60))
    assert sorted(int(r.infer_response.id) for r in replies) == list(range(10))
    assert not any(r.error_message for r in replies)
    grown = {size: n - before.get(size, 0) for size, n in stats().items() if n != before.get(size, 0)}
    assert grown and max(grown) <= 2, grown
    assert sum(size * n for size, n in grown.items()) == 10


def test_config_numbers_that_ask_for_the_machine_are_refused(server, kserve):
    before = index(kserve)
    for override, field in (('{"instance_group": [{"count": 100000, "kind": "KIND_CPU"}]}', "instance_group count"),
                            ('{"max_batch_size": 2147483647}', "max_batch_size"),
                            ('{"dynamic_batching": {"max_queue_delay_microseconds": "9000000000"}}',
                             "max_queue_delay_microseconds")):
        req = pb.RepositoryModelLoadRequest(model_name="mlp")
        req.parameters["config"].string_param = override
        err = rpc_error(lambda r=req: kserve.RepositoryModelLoad(r))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and f"{field} " in err.details()
        assert "the most this server accepts" in err.details()
    with token_channel(server.address) as ch:
        control = serving_pb2_grpc.ModelControlStub(ch)
        err = rpc_error(lambda: control.LoadModel(serving_pb2.LoadModelRequest(name="t", intra_op_threads=100000)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "intra_op_threads 100000" in err.details()
    assert index(kserve) == before and kserve.ModelReady(pb.ModelReadyRequest(name="mlp")).ready


def test_messages_name_no_internal_paths(server, kserve, repo):
    """A repository model whose config is broken: the message names 'broken/config.pbtxt', never the
    repository's or the store's location (nor do the index reason and the details trailer)."""
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")
    (repo / "broken" / "config.pbtxt").write_text("max_batch_size: [")
    try:
        err = rpc_error(lambda: kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="broken")))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "broken/config.pbtxt" in err.details()
        assert str(repo) not in err.details() and str(server.service.store.root) not in err.details()
        reason = {m.name: m.reason for m in kserve.RepositoryIndex(pb.RepositoryIndexRequest()).models}["broken"]
        assert "broken/config.pbtxt" in reason and str(repo) not in reason
        trailers = dict(err.trailing_metadata() or ())
        assert str(repo) not in trailers.get("modelport-details", "")
    finally:
        import shutil

        shutil.rmtree(repo / "broken")
        server.service.manager._failed.pop("broken", None)  # the test's own model, gone again


def test_an_archive_header_bomb_is_refused_at_the_cap(server, tmp_path):
    """A model-repository artifact of 10,001 empty entries: refused after 10,000 headers, nothing unpacked."""
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        for i in range(10_001):
            tar.addfile(tarfile.TarInfo(f"f{i}"))
    stored = server.service.store.put_file(bomb, media.MODEL_REPOSITORY)
    before = stored_digests(server.service.store)
    with token_channel(server.address) as ch:
        control = serving_pb2_grpc.ModelControlStub(ch)
        err = rpc_error(lambda: control.LoadModel(serving_pb2.LoadModelRequest(name="bomb", model=to_ref(stored))))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "more than 10000 entries" in err.details()
        assert health(ch) == "SERVING"
    assert not (server.service.store.unpacked_dir / stored.digest.split(":")[1]).exists()
    assert list(server.service.store.tmp_dir.iterdir()) == []
    assert stored_digests(server.service.store) == before
