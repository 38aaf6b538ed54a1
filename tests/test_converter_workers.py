"""Converter job isolation on a dedicated server: a killed worker, a cancelled job, a timeout, queueing.

The server's job function is switched to a test-only job (``converter_test_jobs:hang``) that
reports its worker pid and blocks, so each test acts on a job known to be running.
"""

from __future__ import annotations

import os
import queue
import signal
import threading

import grpc
import psutil
import pytest
import tf_models
from converter_fixtures import ConverterClient, make_converter

from modelport.runtime.background import BackgroundServer
from modelport.v1 import converter_pb2

pytestmark = pytest.mark.integration

REAL_JOB = "converter_svc.worker:convert"
HANG_JOB = "converter_test_jobs:hang"


@pytest.fixture(scope="module")
def dedicated(tmp_path_factory):
    store = tmp_path_factory.mktemp("converter-dedicated")
    service = make_converter(store, worker_max_jobs=1, max_concurrent_jobs=1, job_timeout_s=600)
    service.pool.preload = ()  # the hang job needs no TensorFlow: respawns stay cheap; real jobs import it lazily
    srv = BackgroundServer(service).start()
    client = ConverterClient(srv.address)
    model = tf_models.save_keras(tf_models.sequential_dense(), store.parent / "seq.keras")
    yield srv, client, client.upload(model)
    client.close()
    srv.stop()


class Stream:
    """Reads a Convert stream on a thread; events arrive on a queue, the final status on ``error``."""

    def __init__(self, client: ConverterClient, ref, **kw):
        self.call = client.converter.Convert(converter_pb2.ConvertRequest(source=ref, target_format="onnx", **kw),
                                             timeout=600)
        self.events: queue.Queue = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for ev in self.call:
                self.events.put(ev)
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.done.set()

    def next_event(self, stage: str, timeout: float = 120):
        while True:
            ev = self.events.get(timeout=timeout)
            if ev.stage == stage:
                return ev

    def worker_pid(self) -> int:
        ev = self.next_event("loading")
        return int(ev.message.split("pid=")[1])


def _gone(pid: int, timeout: float = 60) -> bool:
    try:
        psutil.Process(pid).wait(timeout=timeout)
    except psutil.NoSuchProcess:
        pass
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_killed_worker_fails_its_job_and_the_service_keeps_serving(dedicated):
    srv, client, ref = dedicated
    srv.service.convert_job = HANG_JOB
    try:
        stream = Stream(client, ref, parity=converter_pb2.ParityOptions(seed=101))
        pid = stream.worker_pid()
        os.kill(pid, signal.SIGKILL)
        assert stream.done.wait(120)
    finally:
        srv.service.convert_job = REAL_JOB
    # SIGKILL is how the kernel's out-of-memory killer ends a worker: RESOURCE_EXHAUSTED, not INTERNAL.
    assert stream.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "was killed (SIGKILL)" in stream.error.details() and "service is unaffected" in stream.error.details()
    last = list(stream.events.queue)[-1]
    assert last.error.code == "RESOURCE_EXHAUSTED" and "out-of-memory killer" in last.error.message

    events = client.convert(ref, "onnx", parity=converter_pb2.ParityOptions(seed=101))  # same job, now real
    assert events[-1].convert_result.parity.passed and not events[-1].cached


def test_cancel_kills_the_worker_and_queued_jobs_say_so(dedicated):
    srv, client, ref = dedicated
    srv.service.convert_job = HANG_JOB
    try:
        first = Stream(client, ref, parity=converter_pb2.ParityOptions(seed=202))
        pid = first.worker_pid()
        second = Stream(client, ref, parity=converter_pb2.ParityOptions(seed=203))
        queued = second.next_event("queued")
        while "waiting for a free worker" not in queued.message:
            queued = second.next_event("queued")
        assert "max_concurrent_jobs" in queued.message
        first.call.cancel()
        assert _gone(pid), f"worker {pid} still running after cancel"
        pid2 = second.worker_pid()  # the queued job got a fresh worker
        assert pid2 != pid
        second.call.cancel()
        assert _gone(pid2)
    finally:
        srv.service.convert_job = REAL_JOB
    assert first.done.wait(60) and first.error.code() == grpc.StatusCode.CANCELLED


def test_job_timeout_stops_the_job(dedicated):
    srv, client, ref = dedicated
    srv.service.convert_job = HANG_JOB
    old = srv.service.settings.job_timeout_s
    srv.service.settings.job_timeout_s = 3
    try:
        stream = Stream(client, ref, parity=converter_pb2.ParityOptions(seed=303))
        pid = stream.worker_pid()
        assert stream.done.wait(120)
    finally:
        srv.service.convert_job = REAL_JOB
        srv.service.settings.job_timeout_s = old
    assert stream.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "per-job timeout of 3s" in stream.error.details() and "job_timeout_s" in stream.error.details()
    assert _gone(pid)


def test_client_deadline_cancels_the_job_and_its_worker(dedicated):
    srv, client, ref = dedicated
    srv.service.convert_job = HANG_JOB
    pids = []
    try:
        call = client.converter.Convert(
            converter_pb2.ConvertRequest(source=ref, target_format="onnx",
                                         parity=converter_pb2.ParityOptions(seed=404)), timeout=8)
        with pytest.raises(grpc.RpcError) as e:
            for ev in call:
                if ev.stage == "loading" and "pid=" in ev.message:
                    pids.append(int(ev.message.split("pid=")[1]))
    finally:
        srv.service.convert_job = REAL_JOB
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(pids) == 1 and _gone(pids[0])
