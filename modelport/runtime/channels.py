"""Client channels with modelport's defaults: big messages, optional TLS/mTLS, bearer token,
and client-side load balancing with retries over several replicas."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc


def channel_options(max_message_mb: int = 2047) -> list[tuple[str, int]]:
    limit = min(max_message_mb * 1024 * 1024, 2**31 - 1)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 0),
    ]


@dataclass(frozen=True)
class ClientTLS:
    """Client-side TLS: the CA that signed the server, and optionally our own cert for mTLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca), private_key=read(self.key), certificate_chain=read(self.cert)
        )


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata that carries a bearer token (empty when no token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class _AuthAioBase:
    def __init__(self, token: str):
        self._md = auth_metadata(token)

    def _details(self, d):
        md = tuple(d.metadata or ()) + self._md
        return d._replace(metadata=grpc.aio.Metadata(*md)) if hasattr(d, "_replace") else d


# grpc.aio files an interceptor under the FIRST of the four interfaces it implements (an
# if/elif chain), so one class implementing all four would only ever see unary-unary calls:
# one class per call kind.
class _AuthAioUnaryUnary(_AuthAioBase, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, d, request):
        return await continuation(self._details(d), request)


class _AuthAioUnaryStream(_AuthAioBase, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, d, request):
        return await continuation(self._details(d), request)


class _AuthAioStreamUnary(_AuthAioBase, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, d, request_iterator):
        return await continuation(self._details(d), request_iterator)


class _AuthAioStreamStream(_AuthAioBase, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, d, request_iterator):
        return await continuation(self._details(d), request_iterator)


def _auth_aio(token: str) -> list:
    """Interceptors that add the bearer token to every kind of grpc.aio call."""
    return [cls(token) for cls in (_AuthAioUnaryUnary, _AuthAioUnaryStream, _AuthAioStreamUnary,
                                   _AuthAioStreamStream)]


class _AuthSync(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str):
        self._md = auth_metadata(token)

    def _details(self, d):
        return _CallDetails(d.method, d.timeout, tuple(d.metadata or ()) + self._md, d.credentials,
                            getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, d, request):
        return continuation(self._details(d), request)

    def intercept_unary_stream(self, continuation, d, request):
        return continuation(self._details(d), request)

    def intercept_stream_unary(self, continuation, d, request_iterator):
        return continuation(self._details(d), request_iterator)

    def intercept_stream_stream(self, continuation, d, request_iterator):
        return continuation(self._details(d), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


KSERVE_SERVICE = "inference.GRPCInferenceService"


def balanced_target(addresses: Sequence[str] | str) -> str:
    """A gRPC target that resolves to every replica, for client-side load balancing.

    ``["10.0.0.5:8001", "10.0.0.6:8001"]`` -> ``ipv4:10.0.0.5:8001,10.0.0.6:8001`` (likewise
    ``ipv6:`` for bracketed IPv6). A single host name becomes ``dns:///name:port``, which yields
    every A/AAAA record (a Kubernetes headless Service). A comma-separated string is accepted.
    """
    if isinstance(addresses, str):
        addresses = [a.strip() for a in addresses.split(",") if a.strip()]
    if not addresses:
        raise ValueError("no address given: pass host:port, or several IP:port for client-side balancing")
    if len(addresses) == 1 and addresses[0].startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        return addresses[0]  # already a gRPC target
    families = set()
    for addr in addresses:
        host = addr.rsplit(":", 1)[0].strip("[]")
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            families.add("dns")
    if families == {4}:
        return "ipv4:" + ",".join(addresses)
    if families == {6}:
        return "ipv6:" + ",".join(addresses)
    if families == {"dns"} and len(addresses) == 1:
        return f"dns:///{addresses[0]}"
    raise ValueError(
        f"cannot balance over {list(addresses)}: give IP:port addresses of one family, "
        "or one DNS name whose records list the replicas (e.g. a headless Service)"
    )


def service_config(*, load_balancing: str = "round_robin", health_check_service: str | None = "",
                   retry_services: Sequence[str] = (KSERVE_SERVICE,), max_attempts: int = 5,
                   initial_backoff_s: float = 0.05, max_backoff_s: float = 1.0,
                   retry_codes: Sequence[str] = ("UNAVAILABLE", "CANCELLED")) -> str:
    """gRPC service-config JSON: balancing policy, client-side health checking, retry policy.

    - ``health_check_service`` (``""`` = the whole server; None disables): the channel watches
      grpc.health.v1 on every replica and picks only SERVING ones, so a replica that is still
      loading models or has begun draining (NOT_SERVING) gets no new calls.
    - The retry policy covers ``retry_services`` only. ModelInfer has no side effect, so
      retrying it elsewhere is safe: UNAVAILABLE (connection refused or lost) and CANCELLED
      (what grpc's server answers for calls it had received but not yet dispatched when it
      stopped) go to another replica. Never list services with non-idempotent methods
      (uploads, jobs). gRPC caps ``max_attempts`` at 5.
    """
    cfg: dict = {"loadBalancingConfig": [{load_balancing: {}}]}
    if health_check_service is not None:
        cfg["healthCheckConfig"] = {"serviceName": health_check_service}
    if retry_services:
        cfg["methodConfig"] = [{
            "name": [{"service": s} for s in retry_services],
            "retryPolicy": {
                "maxAttempts": max_attempts,
                "initialBackoff": f"{initial_backoff_s}s",
                "maxBackoff": f"{max_backoff_s}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": list(retry_codes),
            },
        }]
    return json.dumps(cfg)


def balanced_options(*, retry_buffer_mb: int = 64, **config) -> list[tuple[str, object]]:
    """Channel options for round_robin + health checking + retries (``config``: ``service_config``).

    gRPC only retries a call whose request still fits its retry buffer (256 KiB per call by
    default), so the buffer is raised to fit inference requests with real tensors.
    """
    buffer = retry_buffer_mb * 1024 * 1024
    return [
        ("grpc.service_config", service_config(**config)),
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", buffer),
        ("grpc.retry_buffer_size", buffer * 4),
    ]


def make_channel(
    address: str,
    *,
    tls: ClientTLS | None = None,
    token: str | None = None,
    aio: bool = False,
    options: list[tuple[str, object]] | None = None,
):
    """Open a channel (sync or grpc.aio) with big-message options, TLS and a bearer token.

    ``address`` may also be a gRPC target with several addresses for client-side load
    balancing: ``make_channel(balanced_target(["127.0.0.1:8001", "127.0.0.1:8011"]),
    options=balanced_options())`` spreads calls round-robin and retries UNAVAILABLE inference
    calls on another replica.
    """
    opts = channel_options() + list(options or [])
    if tls is not None and tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    if aio:
        interceptors = _auth_aio(token) if token else None
        if tls is not None:
            return grpc.aio.secure_channel(address, tls.credentials(), options=opts, interceptors=interceptors)
        return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)
    ch = (
        grpc.secure_channel(address, tls.credentials(), options=opts)
        if tls is not None
        else grpc.insecure_channel(address, options=opts)
    )
    return grpc.intercept_channel(ch, _AuthSync(token)) if token else ch
