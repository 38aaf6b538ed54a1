"""The one place where domain errors become gRPC status codes, plus auth and call metrics.

Every RPC of every service passes through ``ServiceInterceptor``: bearer-token check for
mutating methods (and, for every method, the caller's proof recorded in ``modelport.trust`` so domain
code can bind resources to token holders), then the handler, whose ``ModelportError`` becomes its
status code and whose unexpected exceptions become INTERNAL with a generic message (the trace goes to
the log). Messages and details sent to clients pass ``trust.redact``: no internal paths on the wire.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import time
from collections.abc import Callable, Iterable

import grpc

from modelport.errors import ModelportError
from modelport.runtime.metrics import RPC_LATENCY, RPC_REQUESTS
from modelport.trust import Caller, redact, set_caller

log = logging.getLogger("modelport.rpc")

INTERNAL_MESSAGE = "Internal server error (logged on the server)"
MAX_MESSAGE = 2000
"""Longest status message sent: messages quote request values, and a status travels in HTTP/2 trailers."""


def client_text(text: str) -> str:
    """What a client may read of a message: internal paths redacted, length bounded."""
    text = redact(text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "... (truncated)"


def status_code(name: str) -> grpc.StatusCode:
    """Map a status name (as domain errors carry it) to grpc.StatusCode."""
    return getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        self.code, self.message = code, message


def _authorization(metadata) -> str:
    auth = ""
    for key, value in metadata or ():
        if key == "authorization":
            auth = value
    return auth if isinstance(auth, str) else ""


def _token_matches(token: str, auth: str) -> bool:
    scheme, _, given = auth.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


OPEN_CALLER = Caller(token_required=False, authenticated=True)
"""Every caller of a service without a token (frozen: one instance serves every call)."""


def _caller(token: str | None, metadata) -> Caller:
    """What the caller proved: a valid bearer token (or nothing is required)."""
    if not token:
        return OPEN_CALLER
    return Caller(token_required=True, authenticated=_token_matches(token, _authorization(metadata)))


def _check_auth(token: str | None, metadata) -> None:
    if not token:
        return
    auth = _authorization(metadata)
    if not auth:
        raise _Abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "this RPC changes state and needs 'authorization: Bearer <token>' metadata "
            "(CLI: --auth-token or MODELPORT_AUTH_TOKEN)",
        )
    if not _token_matches(token, auth):
        raise _Abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "the bearer token is not valid for this service; send the token the service was started "
            "with (its --auth-token / MODELPORT_<SERVICE>_AUTH_TOKEN) as 'authorization: Bearer <token>'",
        )


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Auth + error mapping + metrics for every method of a grpc.aio server."""

    def __init__(self, service: str, auth_token: str | None = None, mutating_methods: Iterable[str] = ()):
        self.service = service
        self.auth_token = auth_token
        self.mutating = frozenset(mutating_methods)
        # method -> its wrapped handler. A method's handler never changes once the server runs, and
        # building the wrapper (closures, handler object, metric children) on every call costs more than
        # a small model's inference.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:
                return None
            wrapped = self._wrapped[details.method] = self.wrap_handler(handler, details.method)
        return wrapped

    def registering(self, server, hot: set[str] | frozenset[str] = frozenset()) -> _WrappingRegistrar:
        """A stand-in for ``server`` to pass to ``add_*_to_server``: every handler registered through it is
        wrapped once, at registration, instead of through grpc's per-call interceptor chain (which costs a
        coroutine, a task and several futures on every call). Only the ``hot`` methods (full names) become
        registered methods; the rest are found through the generic handlers (``Service.hot_methods``)."""
        return _WrappingRegistrar(server, self, frozenset(hot))

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` with auth, error mapping and metrics around it."""
        token = self.auth_token
        needs_auth = method in self.mutating and bool(token)
        short = method.rsplit("/", 1)[-1]
        latency = RPC_LATENCY.labels(self.service, short)
        ok = RPC_REQUESTS.labels(self.service, short, "OK")

        def finish(code: str, start: float) -> None:
            (ok if code == "OK" else RPC_REQUESTS.labels(self.service, short, code)).inc()
            latency.observe(time.perf_counter() - start)

        async def fail(context, exc: BaseException) -> None:
            if isinstance(exc, _Abort):
                await context.abort(exc.code, exc.message)
            if isinstance(exc, ModelportError):
                if exc.details:
                    details = {k[:64]: client_text(str(v))[:200] for k, v in list(exc.details.items())[:16]}
                    context.set_trailing_metadata((("modelport-details", json.dumps(details)),))
                await context.abort(status_code(exc.status), client_text(exc.message))
            log.error("unexpected error in %s", method, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

        def code_of(context) -> str:
            c = context.code()
            if c is None:
                return "OK"
            return c.name if isinstance(c, grpc.StatusCode) else str(c)

        def wrap_unary_response(behavior):
            async def wrapper(request_or_iterator, context):
                start = time.perf_counter()
                try:
                    if token:
                        metadata = context.invocation_metadata()
                        set_caller(_caller(token, metadata))
                        if needs_auth:
                            _check_auth(token, metadata)
                    else:  # nothing to prove: the metadata is not read
                        set_caller(OPEN_CALLER)
                    return await behavior(request_or_iterator, context)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:  # noqa: BLE001 - the one mapping point
                    await fail(context, exc)
                finally:
                    finish(code_of(context), start)

            return wrapper

        def wrap_stream_response(behavior):
            async def wrapper(request_or_iterator, context):
                start = time.perf_counter()
                try:
                    if token:
                        metadata = context.invocation_metadata()
                        set_caller(_caller(token, metadata))
                        if needs_auth:
                            _check_auth(token, metadata)
                    else:
                        set_caller(OPEN_CALLER)
                    async for item in behavior(request_or_iterator, context):
                        yield item
                except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:  # noqa: BLE001 - the one mapping point
                    await fail(context, exc)
                finally:
                    finish(code_of(context), start)

            return wrapper

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary_response(handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary_response(handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        def wrap_stream(behavior):
            # Streaming handlers are async generators, or coroutines that call context.write
            # (grpcio's own health Watch does the latter).
            if inspect.isasyncgenfunction(behavior):
                return wrap_stream_response(behavior)
            return wrap_unary_response(behavior)

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream(handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream(handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )


class _WrappedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose handlers come out wrapped (each method's once)."""

    def __init__(self, inner: grpc.GenericRpcHandler, interceptor: ServiceInterceptor):
        self._inner = inner
        self._interceptor = interceptor
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        if method not in self._wrapped:
            handler = self._inner.service(handler_call_details)
            self._wrapped[method] = None if handler is None else self._interceptor.wrap_handler(handler, method)
        return self._wrapped[method]


class _WrappingRegistrar:
    """Forwards registrations to a grpc.aio server with every handler wrapped by the interceptor."""

    def __init__(self, server, interceptor: ServiceInterceptor, hot: frozenset[str] = frozenset()):
        self._server = server
        self._interceptor = interceptor
        self._hot = hot

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGenericHandler(h, self._interceptor) for h in handlers))

    def add_registered_method_handlers(self, service_name: str, handlers: dict) -> None:
        hot = {m: h for m, h in handlers.items() if f"/{service_name}/{m}" in self._hot}
        if hot:  # the others are served by the generic handler the same registration adds
            self._server.add_registered_method_handlers(
                service_name, {m: self._interceptor.wrap_handler(h, f"/{service_name}/{m}") for m, h in hot.items()})

    def __getattr__(self, name):
        return getattr(self._server, name)
