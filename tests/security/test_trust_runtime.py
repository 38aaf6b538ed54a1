"""Attacks on the shared runtime every service carries (Artifacts, origins, workers, the store), each by a
real client against real services started with a token: the code, the message, no side effect, and the
service still serving afterwards."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest
from inference_fixtures import mlp
from prometheus_client import REGISTRY
from trust_helpers import TOKEN, health, rpc_error, stored_digests, token_channel, upload

from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport import media
from modelport.runtime.artifacts import MAX_CHUNK, to_ref
from modelport.runtime.background import BackgroundServer
from modelport.runtime.server import Service
from modelport.runtime.settings import ServiceSettings
from modelport.runtime.workers import WorkerPool
from modelport.store import DEFAULT_CHUNK, ArtifactStore
from modelport.v1 import artifacts_pb2, artifacts_pb2_grpc, serving_pb2, serving_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


class NamedService(Service):
    def __init__(self, settings, name: str):
        super().__init__(settings)
        self.name = name


def start(tmp_path: Path, name: str, **kw) -> BackgroundServer:
    settings = ServiceSettings(host="127.0.0.1", port=0, store=tmp_path / name, **{"auth_token": TOKEN, **kw})
    return BackgroundServer(NamedService(settings, name)).start()


def calls(service: str, method: str) -> float:
    total = 0.0
    for code in ("OK", "NOT_FOUND", "CANCELLED", "UNKNOWN"):
        total += REGISTRY.get_sample_value("modelport_grpc_requests_total",
                                           {"service": service, "method": method, "code": code}) or 0.0
    return total


@pytest.fixture
def inference(tmp_path):
    settings = InferenceSettings(host="127.0.0.1", port=0, store=tmp_path / "inf", execution_provider="cpu",
                                 auth_token=TOKEN)
    srv = BackgroundServer(InferenceService(settings)).start()
    yield srv
    srv.stop(grace=1)


def load(srv, ref, name="m"):
    with token_channel(srv.address) as ch:
        return serving_pb2_grpc.ModelControlStub(ch).LoadModel(serving_pb2.LoadModelRequest(name=name, model=ref),
                                                               timeout=30)


# ---- Artifacts.Download --------------------------------------------------------------------------------


@pytest.mark.parametrize(("chunk_size", "largest"), [(-1, DEFAULT_CHUNK), (0, DEFAULT_CHUNK), (-(2**31), DEFAULT_CHUNK),
                                                     (2**31 - 1, MAX_CHUNK)])
def test_download_chunk_size_is_clamped(tmp_path, channel_to, chunk_size, largest):
    """The issue's finding: chunk_size <= 0 sent the whole artifact in one message (read whole into memory)."""
    srv = start(tmp_path, "artifacts")
    try:
        data = os.urandom(5 * MAX_CHUNK // 2)  # 10 MiB
        art = srv.service.store.put_bytes(data, media.OCTET)
        stub = artifacts_pb2_grpc.ArtifactsStub(channel_to(srv.address))  # Download is open: no token
        chunks = [c.data for c in stub.Download(artifacts_pb2.DownloadRequest(digest=art.digest,
                                                                              chunk_size=chunk_size), timeout=30)]
        assert b"".join(chunks) == data
        assert max(len(c) for c in chunks) == largest and len(chunks) == -(-len(data) // largest)
        assert health(channel_to(srv.address)) == "SERVING"
    finally:
        srv.stop(grace=1)


# ---- origins ---------------------------------------------------------------------------------------------


def test_a_caller_chosen_origin_is_refused_before_any_connection(tmp_path, inference):
    origin = start(tmp_path, "origin-not-a-peer", auth_token=None)
    try:
        art = origin.service.store.put_file(mlp(tmp_path / "m.onnx"), media.ONNX)
        downloads = calls("origin-not-a-peer", "Download")
        err = rpc_error(lambda: load(inference, to_ref(art, origin.address)))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"does not pull artifacts from origin '{origin.address}'" in err.details()
        assert "--allowed-origins" in err.details()
        assert calls("origin-not-a-peer", "Download") == downloads  # no connection was made: no probe
        assert not inference.service.store.has(art.digest)
        with token_channel(inference.address) as ch:
            assert health(ch) == "SERVING"
    finally:
        origin.stop(grace=1)


def test_an_allowed_origin_sending_more_than_the_ref_size_is_cut_off(tmp_path, inference):
    origin = start(tmp_path, "peer", auth_token=None)
    try:
        art = origin.service.store.put_file(mlp(tmp_path / "m.onnx"), media.ONNX)
        inference.service.settings.allowed_origins = origin.address
        lying = to_ref(art, origin.address)
        lying.size = 100  # the caller's ref promises 100 bytes; the origin has more
        err = rpc_error(lambda: load(inference, lying))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sent more than ArtifactRef.size (100 bytes)" in err.details() and "nothing was stored" in err.details()
        assert not inference.service.store.has(art.digest)
        assert list(inference.service.store.tmp_dir.iterdir()) == []
        assert load(inference, to_ref(art, origin.address)).model.state == "READY"  # the true size pulls fine
    finally:
        inference.service.settings.allowed_origins = ""
        origin.stop(grace=1)


class TalkativeOrigin(artifacts_pb2_grpc.ArtifactsServicer):
    """An origin whose error text carries what it wants a caller to read through our error."""

    async def Download(self, request, context):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "SSH-2.0-OpenSSH_9.6 internal-banner-4242")
        yield artifacts_pb2.DownloadChunk()


def test_pull_errors_never_echo_what_the_origin_said(inference):
    """An allowed origin that answers with text of its own: our error names the code, not the text."""
    async def run_talkative():
        server = grpc.aio.server()  # on the inference server's loop, which the test borrows
        artifacts_pb2_grpc.add_ArtifactsServicer_to_server(TalkativeOrigin(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    talkative, port = inference.call(run_talkative())
    address = f"127.0.0.1:{port}"
    try:
        inference.service.settings.allowed_origins = address
        ref = artifacts_pb2.ArtifactRef(digest="sha256:" + "5" * 64, origin=address)
        err = rpc_error(lambda: load(inference, ref))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "(PERMISSION_DENIED)" in err.details() and address in err.details()
        assert "OpenSSH" not in err.details() and "4242" not in err.details()
        assert not inference.service.store.has(ref.digest)
    finally:
        inference.service.settings.allowed_origins = ""
        inference.call(talkative.stop(0))


# ---- workers -----------------------------------------------------------------------------------------------


def test_workers_start_with_the_secrets_scrubbed(monkeypatch):
    """In-process embedding (tests, offline mode): the worker's environment has no token and no TLS paths."""
    secrets = {"MODELPORT_CONVERTER_AUTH_TOKEN": TOKEN, "MODELPORT_INFERENCE_TLS_KEY": "/etc/keys/server.key",
               "MODELPORT_OPTIMIZER_TLS_PEER_CA": "/etc/keys/ca.pem", "AWS_SECRET_ACCESS_KEY": "abc"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)

    async def go():
        pool = WorkerPool(size=1, name="scrub-test")
        await pool.start(warm=1)
        try:
            return {k: await pool.run("worker_jobs:env", {"name": k}, timeout=60) for k in (*secrets, "PATH")}
        finally:
            await pool.close()

    seen = asyncio.run(go())
    assert {k: v for k, v in seen.items() if k in secrets and v is not None} == {}
    assert seen["PATH"]  # ordinary variables stay


def test_a_service_process_leaves_no_secret_in_its_workers_environment(tmp_path):
    """python -m optimizer_svc with its token in the environment: its warm worker's /proc/<pid>/environ
    (what model code running there could read) holds neither the token nor the TLS path."""
    env = {**os.environ, "MODELPORT_OPTIMIZER_AUTH_TOKEN": TOKEN, "MODELPORT_OPTIMIZER_TLS_PEER_CA": "/keys/ca.pem",
           "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "optimizer_svc", "--host", "127.0.0.1", "--port", "0",
                             "--store", str(tmp_path / "s"), "--warm-workers", "1"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if re.match(r"optimizer SERVING on port \d+", line):
                break
        else:
            pytest.fail("the optimizer did not start")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "no worker process"
        for child in children:
            environ = Path(f"/proc/{child.pid}/environ").read_bytes()
            assert TOKEN.encode() not in environ and b"/keys/ca.pem" not in environ, child.cmdline()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_a_killed_workers_scratch_is_removed(tmp_path):
    """A job that writes temp files and hangs is stopped by its timeout: the worker dies, its temp files go."""
    marker = tmp_path / "pid"

    async def go():
        pool = WorkerPool(size=1, name="scratch-test")
        await pool.start(warm=1)
        try:
            with pytest.raises(Exception, match="per-job timeout"):
                await pool.run("worker_jobs:hang_in_tmp", {"marker": str(marker)}, timeout=5)
        finally:
            await pool.close()

    asyncio.run(go())
    pid, scratch = marker.read_text().split("\n")
    assert not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
    assert Path(scratch).name.startswith("tmp") and not Path(scratch).exists()
    assert not Path(scratch).parent.exists()  # the worker's whole scratch folder


# ---- the store -----------------------------------------------------------------------------------------------


def test_a_failed_commit_leaves_no_temp_blob(tmp_path):
    srv = start(tmp_path, "commit")
    try:
        (tmp_path / "f").write_bytes(b"x" * 1000)
        with token_channel(srv.address) as ch:
            stub = artifacts_pb2_grpc.ArtifactsStub(ch)

            def wrong_digest():
                yield artifacts_pb2.UploadRequest(header=artifacts_pb2.UploadHeader(
                    media_type=media.OCTET, expected_digest="sha256:" + "0" * 64))
                yield artifacts_pb2.UploadRequest(chunk=b"x" * 1000)
                yield artifacts_pb2.UploadRequest(commit=True)

            err = rpc_error(lambda: stub.Upload(wrong_digest(), timeout=10))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not match" in err.details()
            assert list(srv.service.store.tmp_dir.iterdir()) == [] and stored_digests(srv.service.store) == set()
            assert health(ch) == "SERVING"
    finally:
        srv.stop(grace=1)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: a real full disk (needs root or CAP_SYS_ADMIN; without them the test fails, saying so)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()}): run the suite as root "
                    "or with CAP_SYS_ADMIN")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_resource_exhausted_and_leaves_nothing(small_disk, tmp_path):
    srv = BackgroundServer(Service(ServiceSettings(host="127.0.0.1", port=0, store=small_disk / "store",
                                                   auth_token=TOKEN))).start()
    try:
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(3 << 20))
        with token_channel(srv.address) as ch:
            err = rpc_error(lambda: upload(ch, big))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "disk is full" in err.details() and "Free space on the store's volume" in err.details()
            assert str(small_disk) not in err.details()
            assert list(srv.service.store.tmp_dir.iterdir()) == [] and stored_digests(srv.service.store) == set()
            (tmp_path / "small").write_bytes(b"fits")
            assert upload(ch, tmp_path / "small").size == 4  # the service goes on
            assert health(ch) == "SERVING"
    finally:
        srv.stop(grace=1)


def test_store_tmp_is_swept_at_start_keeping_fresh_writes(tmp_path):
    store = ArtifactStore(tmp_path / "s")
    stale_file, stale_dir, fresh = store.tmp_dir / "upload-dead", store.tmp_dir / "unpack-dead", store.tmp_dir / "upload-live"
    stale_file.write_bytes(b"x")
    (stale_dir / "sub").mkdir(parents=True)
    fresh.write_bytes(b"y")
    old = time.time() - 7 * 3600
    for p in (stale_file, stale_dir):
        os.utime(p, (old, old))
    srv = BackgroundServer(Service(ServiceSettings(host="127.0.0.1", port=0, store=store.root))).start()
    srv.stop(grace=0)
    assert sorted(p.name for p in store.tmp_dir.iterdir()) == ["upload-live"]

