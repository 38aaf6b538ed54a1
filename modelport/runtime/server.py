"""Server bootstrap shared by every service.

``start_service(service)`` builds a grpc.aio server with health (NOT_SERVING until the
service's ``startup`` finished), reflection, the embedded Artifacts service, the interceptor,
message limits, keepalive and optional TLS/mTLS; it binds (port 0 allowed) and returns a
``RunningServer`` with the bound port. ``run_service`` is the process entry point: logging,
metrics, SIGTERM/SIGINT → NOT_SERVING → drain for the grace period → exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from pydantic import ValidationError

from modelport.runtime.artifacts import ArtifactsServicer, ensure_local
from modelport.runtime.channels import ClientTLS, make_channel
from modelport.runtime.interceptors import ServiceInterceptor
from modelport.runtime.logs import setup_logging
from modelport.runtime.settings import ServiceSettings, parse_settings
from modelport.runtime.workers import scrub_environment
from modelport.store import ArtifactStore, StoredArtifact
from modelport.trust import OriginPolicy, hide_from_model_code
from modelport.v1 import artifacts_pb2, artifacts_pb2_grpc

log = logging.getLogger("modelport.server")

ARTIFACTS_SERVICE = artifacts_pb2.DESCRIPTOR.services_by_name["Artifacts"].full_name
UPLOAD_METHOD = f"/{ARTIFACTS_SERVICE}/Upload"


@dataclass
class Registration:
    """One gRPC service a Service exposes."""

    add_to_server: Callable
    servicer: object
    full_name: str


class Service:
    """Base of the three services: owns settings and the artifact store.

    Subclasses set ``name``, return their servicers from ``registrations``, list the method
    paths that change state in ``mutating_methods`` (guarded by the bearer token), and may
    override ``startup`` (runs before health turns SERVING) and ``shutdown``.
    """

    name = "service"

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.store = ArtifactStore(settings.store, settings.max_artifact_bytes)
        self.address = ""  # set once bound: what refs we hand out name as origin

    def registrations(self) -> list[Registration]:
        return []

    def mutating_methods(self) -> set[str]:
        return set()

    def hot_methods(self) -> set[str]:
        """Full method names (``/package.Service/Method``) registered as grpc.aio *registered methods*; every
        other method is served through the generic handler lookup. grpc.aio (1.85) keeps one task per registered
        method and runs ``asyncio.wait`` over all of them twice per call, so each registered method costs every
        call of every method: only a service's per-request hot path belongs here (health, reflection, Artifacts
        and control calls are rare)."""
        return set()

    async def startup(self) -> None:
        """Warm-up before SERVING (load models, start workers)."""

    async def shutdown(self) -> None:
        """Release resources after the server stopped."""

    def channel(self, address: str):
        """A grpc.aio channel to another service (used for artifact pulls).

        TLS when ``tls_peer_ca`` is set; our own certificate goes along for peers under mTLS.
        """
        s = self.settings
        tls = None
        if s.tls_peer_ca:
            tls = ClientTLS(ca=s.tls_peer_ca, cert=s.tls_cert, key=s.tls_key) if s.tls_cert and s.tls_key \
                else ClientTLS(ca=s.tls_peer_ca)
        return make_channel(address, aio=True, tls=tls)

    @property
    def origin_policy(self) -> OriginPolicy:
        """The origins this service pulls from: its own addresses and the configured peers."""
        s = self.settings
        return OriginPolicy.of([self.address, s.advertise_address, *s.allowed_origins.split(",")])

    async def pull(self, ref: artifacts_pb2.ArtifactRef) -> StoredArtifact:
        """The artifact of ``ref`` from the local store, pulled once from an allowed origin if absent."""
        return await ensure_local(self.store, ref, channel_factory=self.channel, origins=self.origin_policy)


@dataclass
class RunningServer:
    service: Service
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str] = field(default_factory=list)
    metrics_port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight ones finish for ``grace`` s."""
        if grace is None:
            grace = self.service.settings.grace_period_s
        await self.health.enter_graceful_shutdown()
        if self.service.settings.drain_delay_s > 0:
            # Let health-checking clients and load balancers move away before the server
            # stops accepting: calls received but not yet dispatched would be cancelled.
            await asyncio.sleep(self.service.settings.drain_delay_s)
        await self.server.stop(grace)
        await self.service.shutdown()


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    limit = min(settings.max_message_mb * 1024 * 1024, 2**31 - 1)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.so_reuseport", 0),
    ]


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS when tls_client_ca is set) credentials, or None for plaintext."""
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_client_ca:
            # Never fall back to plaintext when the operator asked for client certificates.
            raise ValueError("tls_client_ca (mTLS) needs a server certificate too: set --tls-cert and --tls-key")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key (PEM files); set both, or neither for plaintext")
    key, cert = settings.tls_key.read_bytes(), settings.tls_cert.read_bytes()
    ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def metrics_bind(settings: ServiceSettings) -> str:
    """The interface of the metrics HTTP server: --metrics-host, else the gRPC --host."""
    host = (settings.metrics_host or settings.host or "0.0.0.0").strip("[]")
    return "0.0.0.0" if host in ("::", "") else host


def is_loopback(host: str) -> bool:
    """Whether a bind host reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_auth_posture(settings: ServiceSettings, name: str) -> None:
    """Fail closed: no token on a non-loopback interface needs an explicit --allow-unauthenticated.

    Loopback without a token (tests, ``modelport up``, offline mode) is logged; an explicit opt-out is
    logged as a warning, so the log always says whether mutating RPCs are open.
    """
    if settings.auth_token:
        return
    prefix = str(settings.model_config.get("env_prefix", "MODELPORT_"))
    if is_loopback(settings.host):
        log.info("%s: no auth token; mutating RPCs are open to local callers only (bound to %s)", name, settings.host)
        return
    if settings.allow_unauthenticated:
        log.warning("%s: AUTHENTICATION DISABLED (--allow-unauthenticated): every RPC, including uploads, model "
                    "loads and conversions, is open to anyone who can reach %s", name, settings.host)
        return
    raise ValueError(
        f"{name}: refusing to start without an auth token on {settings.host} (reachable from other machines): "
        f"set {prefix}AUTH_TOKEN (or --auth-token), bind loopback only (--host 127.0.0.1), or disable "
        "authentication explicitly with --allow-unauthenticated"
    )


async def start_service(service: Service, *, ready: bool = True) -> RunningServer:
    """Build, bind and start the server; run ``service.startup`` and turn health SERVING.

    With ``ready=False`` the caller runs startup itself (health stays NOT_SERVING).
    """
    s = service.settings
    check_auth_posture(s, service.name)
    mutating = {UPLOAD_METHOD, *service.mutating_methods()}
    server = grpc.aio.server(options=server_options(s))
    # The interceptor wraps every handler once as it is registered (through ``registrar``), not on each call.
    registrar = ServiceInterceptor(service.name, s.auth_token, mutating).registering(server, service.hot_methods())
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    artifacts = ArtifactsServicer(service.store)
    artifacts_pb2_grpc.add_ArtifactsServicer_to_server(artifacts, registrar)
    names = [ARTIFACTS_SERVICE]
    for reg in service.registrations():
        reg.add_to_server(reg.servicer, registrar)
        names.append(reg.full_name)
    # What reflection.enable_server_reflection does for a grpc.aio server (it checks the server's type).
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer([*names, health.SERVICE_NAME, reflection.SERVICE_NAME]), registrar)
    creds = server_credentials(s)
    bind = f"{s.host}:{s.port}"
    try:
        port = server.add_secure_port(bind, creds) if creds else server.add_insecure_port(bind)
    except RuntimeError as e:  # grpc's "Failed to bind" carries no hint
        port = 0
        cause = e
    else:
        cause = None
    if port == 0:
        raise OSError(
            f"{service.name}: could not bind {bind} (port in use or not permitted); "
            f"choose another with --port (0 picks a free one)"
        ) from cause
    host = "localhost" if s.host in ("[::]", "0.0.0.0", "") else s.host
    service.address = s.advertise_address or f"{host}:{port}"
    artifacts.advertise = service.address
    swept = service.store.sweep_tmp()
    if swept:
        log.info("%s: removed %d stale temp entr%s from the store's tmp/", service.name, swept,
                 "y" if swept == 1 else "ies")
    running = RunningServer(service, server, port, health_servicer, names)
    await running.set_serving(False)
    await server.start()
    log.info("%s listening on %s (tls=%s)", service.name, bind.replace(f":{s.port}", f":{port}"), bool(creds))
    if ready:
        await service.startup()
        await running.set_serving(True)
    return running


async def serve(service: Service) -> int:
    """Run until SIGTERM/SIGINT, then drain and return 0."""
    s = service.settings
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_service(service, ready=False)
    if s.metrics_port >= 0:
        from modelport.runtime.metrics import start_metrics_server

        running.metrics_port = start_metrics_server(s.metrics_port, metrics_bind(s))
        log.info("metrics on http://%s:%d/metrics", socket.gethostname(), running.metrics_port)
    startup = asyncio.ensure_future(service.startup())
    done, _ = await asyncio.wait({startup, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if startup in done:
        startup.result()  # raise a failed startup
        await running.set_serving(True)
        # The line `modelport up` and humans wait for.
        print(f"{service.name} SERVING on port {running.port}", flush=True)
        log.info("%s SERVING on port %d", service.name, running.port)
        await stop.wait()
    else:
        startup.cancel()
    log.info("%s: shutting down, draining in-flight calls for up to %.1fs", service.name, s.grace_period_s)
    await running.stop()
    log.info("%s: stopped", service.name)
    return 0


def run_service(service_cls: type[Service], settings_cls: type[ServiceSettings], argv: list[str] | None = None,
                prog: str | None = None) -> int:
    """Process entry point for ``modelport-<service>`` and ``python -m <svc>``."""
    try:
        settings = parse_settings(settings_cls, argv, prog=prog)
    except ValidationError as e:  # the messages only: pydantic's repr of the input would show the token
        for err in e.errors(include_input=False, include_url=False):
            where = ".".join(str(x) for x in err.get("loc", ())) or "settings"
            print(f"{prog or settings_cls.__name__}: {where}: {err['msg']}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_json)
    # The settings hold what they need: tokens and key paths leave the environment every child
    # process (workers that may run model code, converter bridges) would inherit.
    removed = scrub_environment()
    if removed:
        log.info("removed %s from the environment children inherit", ", ".join(sorted(removed)))
    # Model code may run in this service's workers: they must not read the token from our /proc/<pid>/environ.
    if getattr(settings, "allow_remote_code", False) and hide_from_model_code():
        log.info("model code may run in workers (--allow-remote-code): this process is not dumpable, so they "
                 "cannot read its environment or memory")
    return event_loop_runner(settings.event_loop)(serve(service_cls(settings)))


def event_loop_runner(choice: str) -> Callable:
    """``asyncio.run`` or ``uvloop.run`` for the ``event_loop`` setting (auto: uvloop when installed)."""
    choice = (choice or "auto").lower()
    if choice not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"unknown event_loop {choice!r}; use auto, uvloop or asyncio")
    if choice == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("event_loop uvloop: uvloop is not installed; pip install uvloop, or use "
                             "--event-loop asyncio") from None
        return asyncio.run
    return uvloop.run
