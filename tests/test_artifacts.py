"""The Artifacts service and store: round trips, digests, caps, cancellation, cross-service pull."""

from __future__ import annotations

import hashlib
import os
import threading

import grpc
import pytest

from modelport.runtime.artifacts import download_to_file, ensure_local, upload_requests
from modelport.runtime.background import BackgroundServer
from modelport.runtime.server import Service
from modelport.runtime.settings import ServiceSettings
from modelport.store import ArtifactStore
from modelport.v1 import artifacts_pb2, artifacts_pb2_grpc


def _service(tmp_path, name, **kw):
    return Service(ServiceSettings(host="127.0.0.1", port=0, store=tmp_path / name, **kw))


@pytest.fixture
def server(tmp_path):
    srv = BackgroundServer(_service(tmp_path, "a", max_artifact_bytes=8 << 20)).start()
    yield srv
    srv.stop(grace=1)


def _visible_blobs(store_root):
    return sorted(p.name for p in (store_root / "blobs" / "sha256").iterdir())


def _tmp_files(store_root):
    return list((store_root / "tmp").iterdir())


def test_multi_mb_round_trip_with_digest(server, channel_to, tmp_path):
    src = tmp_path / "model.bin"
    data = os.urandom(5 * 1024 * 1024 + 17)
    src.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    stub = artifacts_pb2_grpc.ArtifactsStub(channel_to(server.address))
    ref = stub.Upload(upload_requests(src, "application/vnd.modelport.onnx", expected_digest=digest))
    assert ref.digest == digest and ref.size == len(data)
    assert ref.media_type == "application/vnd.modelport.onnx"
    assert ref.origin == server.running.service.address
    assert stub.Stat(artifacts_pb2.StatRequest(digest=digest)).size == len(data)
    out = tmp_path / "out.bin"
    got = download_to_file(stub, digest, out)
    assert out.read_bytes() == data and got.digest == digest
    # Identical content uploaded again lands on the same name.
    assert stub.Upload(upload_requests(src, "application/vnd.modelport.onnx")).digest == digest
    assert len(_visible_blobs(server.running.service.store.root)) == 1


def test_wrong_digest_is_invalid_and_stores_nothing(server, channel_to, tmp_path):
    src = tmp_path / "m.bin"
    src.write_bytes(b"abc" * 1000)
    stub = artifacts_pb2_grpc.ArtifactsStub(channel_to(server.address))
    with pytest.raises(grpc.RpcError) as e:
        stub.Upload(upload_requests(src, "x", expected_digest="sha256:" + "1" * 64))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not match the expected sha256:111" in e.value.details()
    root = server.running.service.store.root
    assert _visible_blobs(root) == [] and _tmp_files(root) == []


def test_header_must_come_first(server, channel_to):
    stub = artifacts_pb2_grpc.ArtifactsStub(channel_to(server.address))
    with pytest.raises(grpc.RpcError) as e:
        stub.Upload(iter([artifacts_pb2.UploadRequest(chunk=b"x")]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first Upload message must be an UploadHeader" in e.value.details()


def test_over_cap_is_resource_exhausted(server, channel_to, tmp_path):
    stub = artifacts_pb2_grpc.ArtifactsStub(channel_to(server.address))

    def unannounced():  # no expected_size: the cap trips mid-stream
        yield artifacts_pb2.UploadRequest(header=artifacts_pb2.UploadHeader(media_type="x"))
        for _ in range(9):
            yield artifacts_pb2.UploadRequest(chunk=b"\0" * (1 << 20))
        yield artifacts_pb2.UploadRequest(commit=True)

    with pytest.raises(grpc.RpcError) as e:
        stub.Upload(unannounced())
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "per-artifact cap of 8388608 bytes" in e.value.details()
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(9 << 20)
    with pytest.raises(grpc.RpcError) as e:  # announced size over the cap: refused up front
        stub.Upload(upload_requests(big, "x"))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    root = server.running.service.store.root
    assert _visible_blobs(root) == [] and _tmp_files(root) == []


def test_cancelled_upload_leaves_nothing(server, channel_to):
    stub = artifacts_pb2_grpc.ArtifactsStub(channel_to(server.address))
    sent_some = threading.Event()
    hold = threading.Event()

    def stream():
        yield artifacts_pb2.UploadRequest(header=artifacts_pb2.UploadHeader(media_type="x"))
        yield artifacts_pb2.UploadRequest(chunk=b"a" * 1024)
        sent_some.set()
        hold.wait(10)

    fut = stub.Upload.future(stream())
    assert sent_some.wait(10)
    root = server.running.service.store.root
    # Wait until the server has its temp file open, then cancel mid-stream.
    server.call(_until(lambda: _tmp_files(root)), timeout=10)
    fut.cancel()
    hold.set()
    server.call(_until(lambda: not _tmp_files(root)), timeout=10)
    assert _visible_blobs(root) == []
    assert fut.cancelled()


async def _until(predicate):
    import asyncio

    while not predicate():
        await asyncio.sleep(0.01)


def test_stream_without_commit_stores_nothing(server, channel_to):
    stub = artifacts_pb2_grpc.ArtifactsStub(channel_to(server.address))
    reqs = [artifacts_pb2.UploadRequest(header=artifacts_pb2.UploadHeader(media_type="x")),
            artifacts_pb2.UploadRequest(chunk=b"partial")]
    with pytest.raises(grpc.RpcError) as e:
        stub.Upload(iter(reqs))
    assert e.value.code() == grpc.StatusCode.CANCELLED
    assert "without its final commit message" in e.value.details()
    root = server.running.service.store.root
    assert _visible_blobs(root) == [] and _tmp_files(root) == []


def test_download_unknown_digest_is_not_found(server, channel_to, tmp_path):
    stub = artifacts_pb2_grpc.ArtifactsStub(channel_to(server.address))
    with pytest.raises(grpc.RpcError) as e:
        download_to_file(stub, "sha256:" + "2" * 64, tmp_path / "x")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (tmp_path / "x").exists()


def test_cross_service_pull_from_origin(tmp_path, channel_to):
    a = BackgroundServer(_service(tmp_path, "a")).start()
    b = BackgroundServer(_service(tmp_path, "b")).start()
    try:
        src = tmp_path / "m.bin"
        src.write_bytes(os.urandom(3 << 20))
        ref = artifacts_pb2_grpc.ArtifactsStub(channel_to(a.address)).Upload(upload_requests(src, "m/x"))
        assert ref.origin == a.running.service.address
        b_store: ArtifactStore = b.running.service.store
        assert not b_store.has(ref.digest)
        art = b.call(ensure_local(b_store, ref))
        assert art.digest == ref.digest and art.media_type == "m/x"
        assert art.path.read_bytes() == src.read_bytes()
        # A ref whose origin is gone answers UNAVAILABLE naming the origin.
        bogus = artifacts_pb2.ArtifactRef(digest="sha256:" + "3" * 64, origin="127.0.0.1:1")
        from modelport.errors import Unavailable

        with pytest.raises(Unavailable, match="could not pull .* from origin 127.0.0.1:1"):
            b.call(ensure_local(b_store, bogus))
        assert not b_store.has(bogus.digest)
    finally:
        a.stop(grace=1)
        b.stop(grace=1)
