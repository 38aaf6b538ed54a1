"""Run a service in a background thread with its own event loop (tests, benchmarks, offline).

    with BackgroundServer(ConverterService(settings)) as srv:
        channel = grpc.insecure_channel(srv.address)
"""

from __future__ import annotations

import asyncio
import threading

from modelport.runtime.server import RunningServer, Service, start_service


class BackgroundServer:
    """Starts ``service`` on its own loop thread; ``stop`` drains it (grace) and joins."""

    def __init__(self, service: Service, ready: bool = True):
        self.service = service
        self._ready = ready
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"{service.name}-loop", daemon=True)
        self.running: RunningServer | None = None

    def start(self) -> BackgroundServer:
        self._thread.start()
        self.running = self.call(start_service(self.service, ready=self._ready))
        return self

    def call(self, coro, timeout: float | None = 600):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def address(self) -> str:
        return self.running.address

    def stop(self, grace: float = 5.0) -> None:
        if self.running is not None:
            self.call(self.running.stop(grace))
            self.running = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
