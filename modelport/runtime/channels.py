"""Client channels with modelport's defaults: big messages, optional TLS/mTLS, bearer token."""

from __future__ import annotations

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
    balancing, e.g. ``ipv4:127.0.0.1:8001,127.0.0.1:8011`` with
    ``options=[("grpc.lb_policy_name", "round_robin")]``.
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
