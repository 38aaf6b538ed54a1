"""Busy-poll the event loop for a moment after the last request finished, instead of sleeping at once.

At one request at a time a server is idle between a response and the client's next request (the client's own
turnaround: 150-300 us for a small model on this machine). A loop that blocks in ``epoll_wait`` there lets its
core go idle, and the next request then pays for waking it: on the 2-core VMs measured here the round trips
split into two modes about 230 us apart, the slow one being a wake-up on an idle core, with cold caches for
everything the handler touches (onnxruntime's 7 us MLP run took 26-40 us inside a server, 7 us in a loop).
Spinning the loop for ``window_us`` after the process went idle keeps the core awake and the handler's code
and data in cache, and a request arriving in that window is read at once: the MLP at concurrency 1 went from
0.72-0.79x to 1.06-1.18x the do-nothing grpc.aio floor (BENCHMARKS.md, Serving). It is the trade onnxruntime makes
inside a run with its spinning thread pool, applied to the gap between requests, and bounded the same way:

- it spins only while *no* request is in flight (a run on an executor thread is never slowed by a spinning
  loop competing for the cores and the GIL), and stops the moment one arrives;
- it stops ``window_us`` after the last request finished, so an idle server costs nothing; at a steady one
  request at a time it costs one core while the client prepares its next request (the server CPU per request
  in BENCHMARKS.md shows it);
- each spin step is ``await asyncio.sleep(0)``: the loop polls its sockets with a zero timeout (the GIL is
  released in the poll), so the gRPC poller thread's notification is picked up within microseconds.

It spins only when requests have lately come back within the window (a moving average of the idle gaps): a
server whose requests arrive seconds apart sleeps at once. And it spins only when the event loop runs in the
process's main thread, i.e. the process is the server (``python -m inference_svc``): a server run on a
background thread (tests, the gateway's offline mode) shares the GIL with its callers in the same process, and
a spinning loop would hold the GIL against them (a waiting thread gets it only after the 5 ms switch interval).

``--idle-spin-us 0`` turns it off (a machine whose cores are all taken by other work).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from inference_svc.metrics import IDLE_SPIN_SECONDS

_SPUN = IDLE_SPIN_SECONDS.labels()
GAP_WEIGHT = 0.125
"""Weight of the newest idle gap in the moving average (about the last 8 gaps count)."""


class IdleSpin:
    """Counts the requests in flight; when the count drops to zero, spins the loop for up to ``window_us`` if
    requests have lately been arriving within that window of the previous one finishing."""

    def __init__(self, window_us: int, *, clock: Callable[[], int] = time.perf_counter_ns):
        if window_us < 0:
            raise ValueError(f"idle spin window must be >= 0 microseconds, got {window_us}")
        self.window_ns = int(window_us) * 1000
        self._clock = clock
        self._thread_checked = False
        self.inflight = 0
        self.gap_ns = 0.0
        """Moving average of the idle gaps: from the process going idle to the next request."""
        self._idle_since = 0
        self._until = 0
        self._task: asyncio.Task | None = None
        self.spins = 0
        """Spin periods started."""
        self.spun_ns = 0
        """Time spent spinning (also exported: modelport_inference_idle_spin_seconds_total)."""

    def enter(self) -> None:
        """A request started (the spinner, if running, stops at its next step)."""
        if not self.inflight and self._idle_since:
            gap = self._clock() - self._idle_since
            # A long pause counts as one window past the limit: one pause must not stop spinning for long.
            self.gap_ns += (min(gap, 2 * self.window_ns) - self.gap_ns) * GAP_WEIGHT
        self.inflight += 1

    def leave(self) -> None:
        """A request finished; the last one in flight starts (or extends) the spin window."""
        self.inflight -= 1
        if self.inflight or not self.window_ns:
            return
        if not self._thread_checked:  # decided once, on the serving loop's thread (see the module doc)
            self._thread_checked = True
            if threading.current_thread() is not threading.main_thread():
                self.window_ns = 0
                return
        now = self._clock()
        self._idle_since = now
        if self.gap_ns > self.window_ns:  # requests come further apart than a spin would wait: sleep
            return
        self._until = now + self.window_ns
        if self._task is None:
            self.spins += 1
            self._task = asyncio.get_running_loop().create_task(self._spin())

    @property
    def spinning(self) -> bool:
        return self._task is not None

    async def _spin(self) -> None:
        start = self._clock()
        try:
            while not self.inflight and self._clock() < self._until:
                await asyncio.sleep(0)
        finally:
            self._task = None
            spun = self._clock() - start
            self.spun_ns += spun
            _SPUN.inc(spun / 1e9)

    def close(self) -> None:
        """Stop spinning, for good (shutdown)."""
        self.window_ns = self._until = 0
        if self._task is not None:
            self._task.cancel()
            self._task = None
