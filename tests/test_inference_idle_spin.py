"""The inference service's idle spin: the event loop polls for a moment after the last request finished
(inference_svc.idle_spin). Unit tests drive it with a fake clock; one test serves real gRPC requests on the
main thread's loop (where a server process spins) and one on a background thread (where it must not)."""

from __future__ import annotations

import asyncio
import threading

import grpc
import numpy as np
import pytest

from inference_svc.idle_spin import IdleSpin
from inference_svc.metrics import IDLE_SPIN_SECONDS
from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from modelport.runtime.background import BackgroundServer
from modelport.runtime.server import start_service
from tests.inference_fixtures import mlp, mlp_expected

US = 1000  # ns


class Clock:
    def __init__(self):
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


async def _steps(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_spins_after_the_last_request_until_the_window_ends():
    async def main():
        clock = Clock()
        spin = IdleSpin(500, clock=clock)
        spin.enter()
        spin.enter()
        spin.leave()
        assert not spin.spinning  # one request still in flight: never spin while a run may need the cores
        spin.leave()
        assert spin.spinning and spin.spins == 1
        await _steps(5)
        assert spin.spinning  # the loop keeps polling: the window has not passed
        exported = IDLE_SPIN_SECONDS.labels().value
        clock.now += 501 * US
        await _steps(2)
        assert not spin.spinning
        assert spin.spun_ns == 501 * US  # what it spun is counted, and exported for Prometheus
        assert IDLE_SPIN_SECONDS.labels().value - exported == pytest.approx(501e-6)

    asyncio.run(main())


def test_a_request_stops_the_spin_and_the_next_idle_moment_starts_another():
    async def main():
        clock = Clock()
        spin = IdleSpin(500, clock=clock)
        spin.enter()
        spin.leave()
        await _steps(1)
        clock.now += 100 * US
        spin.enter()  # the next request, 100 us later: the spinner ends at its next step
        await _steps(2)
        assert not spin.spinning
        assert spin.gap_ns == pytest.approx(100 * US / 8)  # the moving average saw a 100 us gap
        spin.leave()
        assert spin.spinning and spin.spins == 2
        spin.close()
        await _steps(2)
        assert not spin.spinning

    asyncio.run(main())


def test_requests_further_apart_than_the_window_stop_the_spinning():
    async def main():
        clock = Clock()
        spin = IdleSpin(500, clock=clock)
        started = []
        for _ in range(20):  # a request every 10 ms: a spin would never catch the next one
            spin.enter()
            spin.leave()
            started.append(spin.spinning)
            clock.now += 10_000 * US
            await _steps(2)
        assert started[0] and not any(started[-10:])
        assert spin.gap_ns > spin.window_ns
        for _ in range(20):  # back to a closed loop (50 us gaps): spinning resumes
            spin.enter()
            spin.leave()
            clock.now += 50 * US
        assert spin.spinning
        spin.close()
        await _steps(2)

    asyncio.run(main())


def test_window_zero_never_spins_and_a_negative_window_is_refused():
    async def main():
        spin = IdleSpin(0)
        spin.enter()
        spin.leave()
        assert not spin.spinning and spin.spins == 0

    asyncio.run(main())
    with pytest.raises(ValueError, match="idle spin window must be >= 0"):
        IdleSpin(-1)
    with pytest.raises(ValueError, match="idle_spin_us"):
        InferenceSettings(idle_spin_us=-5)


def test_a_loop_on_another_thread_does_not_spin():
    # A server on a background thread shares the GIL with its callers in the same process: no spinning there.
    spin = IdleSpin(500)
    result = {}

    def other():
        async def main():
            spin.enter()
            spin.leave()
            result["spinning"] = spin.spinning

        asyncio.run(main())

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert result == {"spinning": False} and spin.window_ns == 0


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("idle-spin")
    mlp(tmp / "repo" / "mlp" / "1" / "model.onnx")
    return tmp


def test_a_server_on_the_main_thread_spins_between_requests_and_answers_the_same(repo):
    async def main():
        service = InferenceService(InferenceSettings(port=0, host="127.0.0.1", store=repo / "store",
                                                     repository=repo / "repo", idle_spin_us=5000))
        running = await start_service(service)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                rng = np.random.default_rng(0)
                for _ in range(4):
                    x = rng.random((2, 4), dtype=np.float32)
                    resp = await stub.ModelInfer(codec.make_infer_request("mlp", {"x": x}), timeout=30)
                    np.testing.assert_allclose(codec.decode_outputs(resp)["y"], mlp_expected(x), rtol=1e-6)
                assert service.idle_spin.spins >= 1 and service.idle_spin.inflight == 0
        finally:
            await running.stop(0)
        assert not service.idle_spin.spinning  # shutdown stopped it

    asyncio.run(main())


def test_a_background_server_does_not_spin(repo):
    srv = BackgroundServer(InferenceService(InferenceSettings(port=0, host="127.0.0.1", store=repo / "store-bg",
                                                              repository=repo / "repo"))).start()
    try:
        with grpc.insecure_channel(srv.address) as ch:
            x = np.ones((1, 4), np.float32)
            resp = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(codec.make_infer_request("mlp", {"x": x}),
                                                                   timeout=30)
            np.testing.assert_allclose(codec.decode_outputs(resp)["y"], mlp_expected(x), rtol=1e-6)
        spin = srv.service.idle_spin
        assert spin.spins == 0 and spin.window_ns == 0 and spin.inflight == 0
    finally:
        srv.stop()
