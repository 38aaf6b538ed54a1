"""The shared runtime on a real server: health, reflection, error mapping, graceful drain, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from runtime_fixtures import ProbeService, convert_request

from modelport.runtime.background import BackgroundServer
from modelport.runtime.interceptors import INTERNAL_MESSAGE
from modelport.runtime.settings import ServiceSettings, parse_settings
from modelport.v1 import converter_pb2_grpc, serving_pb2, serving_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _settings(tmp_path, **kw):
    return ServiceSettings(host="127.0.0.1", port=0, store=tmp_path / "store", **kw)


@pytest.fixture
def probe(tmp_path):
    srv = BackgroundServer(ProbeService(_settings(tmp_path))).start()
    yield srv
    srv.stop(grace=1)


def _health(channel, service=""):
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_is_not_serving_until_ready_then_serving(tmp_path, channel_to):
    srv = BackgroundServer(ProbeService(_settings(tmp_path)), ready=False).start()
    try:
        ch = channel_to(srv.address)
        assert _health(ch) == NOT_SERVING
        assert _health(ch, "modelport.v1.ModelControl") == NOT_SERVING
        srv.call(srv.running.set_serving(True))
        assert _health(ch) == SERVING
        assert _health(ch, "modelport.v1.Artifacts") == SERVING
        with pytest.raises(grpc.RpcError) as e:
            _health(ch, "no.such.Service")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        srv.stop(grace=1)


def test_reflection_lists_services(probe, channel_to):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel_to(probe.address))
    responses = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"modelport.v1.Artifacts", "modelport.v1.ModelControl", "modelport.v1.Converter",
            "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    "name, code, message",
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "bad option 'x': use 'y'"),
        ("missing", grpc.StatusCode.NOT_FOUND, "model 'm' not found"),
        ("precondition", grpc.StatusCode.FAILED_PRECONDITION, "parity failed"),
        ("exhausted", grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"),
        ("unavailable", grpc.StatusCode.UNAVAILABLE, "try later"),
        ("deadline", grpc.StatusCode.DEADLINE_EXCEEDED, "too slow"),
        ("boom", grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE),
    ],
)
def test_interceptor_maps_domain_errors(probe, channel_to, name, code, message):
    stub = serving_pb2_grpc.ModelControlStub(channel_to(probe.address))
    with pytest.raises(grpc.RpcError) as e:
        stub.LoadModel(serving_pb2.LoadModelRequest(name=name), timeout=5)
    assert e.value.code() == code
    assert e.value.details() == message
    assert "passwd" not in e.value.details()
    # The service keeps serving after every error.
    assert stub.LoadModel(serving_pb2.LoadModelRequest(name="ok"), timeout=5).model.state == "READY"


def test_interceptor_maps_errors_inside_streams(probe, channel_to):
    stub = converter_pb2_grpc.ConverterStub(channel_to(probe.address))
    call = stub.Convert(convert_request("fail"), timeout=5)
    first = next(call)
    assert first.stage == "loading"
    with pytest.raises(grpc.RpcError) as e:
        next(call)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "use onnx, tflite or savedmodel" in e.value.details()


def test_graceful_shutdown_lets_in_flight_stream_finish(tmp_path, channel_to):
    service = ProbeService(_settings(tmp_path))
    srv = BackgroundServer(service).start()
    ch = channel_to(srv.address)
    stub = converter_pb2_grpc.ConverterStub(ch)
    call = stub.Convert(convert_request(), timeout=30)
    assert next(call).stage == "loading"
    srv.call(service.converter.started.wait(), timeout=10)

    stopping = threading.Thread(target=srv.call, args=(srv.running.stop(20),))
    stopping.start()
    # Health flips to NOT_SERVING before the drain; observe it on the servicer itself.
    srv.call(_wait_for_status(srv, NOT_SERVING), timeout=10)
    # New calls are refused while the in-flight stream is still open.
    with pytest.raises(grpc.RpcError) as e:
        serving_pb2_grpc.ModelControlStub(grpc.insecure_channel(srv.address)).LoadModel(
            serving_pb2.LoadModelRequest(name="ok"), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    srv.loop.call_soon_threadsafe(service.converter.release.set)
    rest = list(call)
    assert [ev.stage for ev in rest] == ["done"]
    assert call.code() == grpc.StatusCode.OK
    stopping.join(timeout=30)
    assert not stopping.is_alive()
    srv.running = None
    srv.stop()


async def _wait_for_status(srv, status):
    import asyncio

    while True:
        resp = await srv.running.health.Check(health_pb2.HealthCheckRequest(service=""), None)
        if resp.status == status:
            return
        await asyncio.sleep(0.01)


def test_settings_flags_override_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELPORT_PORT", "1234")
    monkeypatch.setenv("MODELPORT_GRACE_PERIOD_S", "7")
    s = parse_settings(ServiceSettings, ["--port", "4321", "--store", str(tmp_path), "--log-json"])
    assert s.port == 4321
    assert s.grace_period_s == 7.0
    assert s.store == tmp_path
    assert s.log_json is True


def test_sigterm_drains_and_exits_zero(tmp_path):
    code = (
        "import sys; from modelport.runtime.server import Service, run_service;"
        "from modelport.runtime.settings import ServiceSettings;"
        "sys.exit(run_service(Service, ServiceSettings, sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--host", "127.0.0.1", "--store", str(tmp_path / "s"),
         "--grace-period-s", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "SERVING on port" in line, proc.stderr.read()
        port = int(line.rsplit(" ", 1)[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert _health(ch) == SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)


def test_prometheus_metrics_count_calls_by_method_and_code(probe, channel_to):
    import urllib.request

    from modelport.runtime.metrics import start_metrics_server

    port = start_metrics_server(0, addr="127.0.0.1")
    nf = 'modelport_grpc_requests_total{code="NOT_FOUND",method="LoadModel",service="probe"}'
    ok = 'modelport_grpc_requests_total{code="OK",method="LoadModel",service="probe"}'

    def scrape():
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("modelport_grpc_requests_total{")}
        return text, values

    _, before = scrape()
    stub = serving_pb2_grpc.ModelControlStub(channel_to(probe.address))
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            stub.LoadModel(serving_pb2.LoadModelRequest(name="missing"), timeout=5)
    stub.LoadModel(serving_pb2.LoadModelRequest(name="ok"), timeout=5)
    text, after = scrape()
    assert after[nf] - before.get(nf, 0) == 3
    assert after[ok] - before.get(ok, 0) == 1
    assert 'modelport_grpc_request_seconds_bucket{le="0.005",method="LoadModel",service="probe"}' in text


def test_port_in_use_gives_a_clear_error(probe, tmp_path):
    service = ProbeService(ServiceSettings(host="127.0.0.1", port=probe.port, store=tmp_path / "s2"))
    srv = BackgroundServer(service)
    with pytest.raises(OSError, match=rf"could not bind 127.0.0.1:{probe.port} .*--port \(0 picks a free one\)"):
        srv.start()
    srv.loop.call_soon_threadsafe(srv.loop.stop)


def test_drain_delay_keeps_accepting_calls_after_health_flips(tmp_path, channel_to):
    service = ProbeService(_settings(tmp_path, drain_delay_s=3.0))
    srv = BackgroundServer(service).start()
    stopping = threading.Thread(target=srv.call, args=(srv.running.stop(5),))
    stopping.start()
    srv.call(_wait_for_status(srv, NOT_SERVING), timeout=10)
    # Health already says NOT_SERVING, yet calls still succeed during the drain delay.
    stub = serving_pb2_grpc.ModelControlStub(channel_to(srv.address))
    assert stub.LoadModel(serving_pb2.LoadModelRequest(name="ok"), timeout=5).model.state == "READY"
    stopping.join(timeout=30)
    assert not stopping.is_alive()
    srv.running = None
    srv.stop()


def test_event_loop_setting_picks_the_runner():
    import asyncio
    import importlib.util

    from modelport.runtime.server import event_loop_runner

    async def answer():
        return 42

    assert event_loop_runner("asyncio") is asyncio.run
    with pytest.raises(ValueError, match="unknown event_loop 'tokio'; use auto, uvloop or asyncio"):
        event_loop_runner("tokio")
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    auto = event_loop_runner("auto")
    assert (auto is not asyncio.run) == has_uvloop
    assert auto(answer()) == 42
    if not has_uvloop:
        with pytest.raises(ValueError, match="uvloop is not installed"):
            event_loop_runner("uvloop")


def test_only_hot_methods_become_registered_methods():
    """grpc.aio waits on one task per registered method on every call: the registrar registers only a
    service's hot methods and leaves the rest to the generic handler the same registration adds."""
    from modelport.runtime.interceptors import ServiceInterceptor

    class Recorder:  # stands in for grpc.aio.Server's two registration calls
        def __init__(self):
            self.generic, self.registered = [], {}

        def add_generic_rpc_handlers(self, handlers):
            self.generic.extend(handlers)

        def add_registered_method_handlers(self, service, handlers):
            self.registered[service] = sorted(handlers)

    server = Recorder()
    registrar = ServiceInterceptor("probe", "", set()).registering(server, {"/grpc.health.v1.Health/Check"})
    health_pb2_grpc.add_HealthServicer_to_server(health_pb2_grpc.HealthServicer(), registrar)
    converter_pb2_grpc.add_ConverterServicer_to_server(converter_pb2_grpc.ConverterServicer(), registrar)
    assert server.registered == {"grpc.health.v1.Health": ["Check"]}
    assert len(server.generic) == 2  # every method stays reachable through the generic handlers


def test_inference_service_registers_model_infer_alone(tmp_path, channel_to):
    """The inference service's only registered method is ModelInfer; its other methods still answer, through
    the generic handlers."""
    from inference_svc.service import InferenceService
    from inference_svc.settings import InferenceSettings
    from modelport.kserve.v2 import grpc_service_pb2 as kpb
    from modelport.kserve.v2 import grpc_service_pb2_grpc as kpb_grpc

    svc = InferenceService(parse_settings(InferenceSettings, ["--repository", str(tmp_path), "--port", "0",
                                                              "--allow-unauthenticated"]))
    assert svc.hot_methods() == {"/inference.GRPCInferenceService/ModelInfer"}
    with BackgroundServer(svc) as bg:
        ch = channel_to(bg.address)
        assert kpb_grpc.GRPCInferenceServiceStub(ch).ServerLive(kpb.ServerLiveRequest()).live
        assert list(serving_pb2_grpc.ModelControlStub(ch).ListModels(serving_pb2.ListModelsRequest()).models) == []
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:  # the hot method itself: a real answer, not UNIMPLEMENTED
            kpb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(kpb.ModelInferRequest(model_name="nope"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
