"""Per model-version request scheduling: a bounded queue, dynamic batching, instance workers.

Requests wait in one bounded queue per model version (full -> ``Unavailable`` at once). A
request counts against the bound from its acceptance until its execution starts or it is dropped
(cancelled, expired, failed), also while a worker holds it in a batch it is still gathering or
in a batch waiting for a free instance. Each of ``instances`` workers takes the oldest live
request and, with dynamic batching, merges further compatible requests (same non-batch shapes
and dtypes; batch > 1 requests merge too) until ``max_batch_size`` or a preferred size is
reached or ``max_queue_delay_us`` has passed since the first one arrived. The merged batch runs
in a thread executor (onnxruntime releases the GIL, and the event loop stays free) and the
outputs are split back by each request's element count. Requests whose deadline passed while
queued fail with ``DeadlineExceeded`` without running; cancelled requests are skipped.

An idle instance with an empty queue runs a request at once, without the worker hand-off, when
nothing can be gained by waiting (no merging, or an ``eager`` merging policy). Short models run
``inline``: on the event loop itself, since the executor hop costs more than the run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from inference_svc import metrics
from inference_svc.stats import VersionStats
from modelport.errors import DeadlineExceeded, Unavailable

log = logging.getLogger("modelport.inference.batching")

# Consecutive over-long inline runs after which a model moves to the executor.
INLINE_SLOW_RUNS = 3

# run(inputs, output_names) -> {output name: array}; called in a worker thread.
RunFn = Callable[[dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class BatchPolicy:
    """How one model version is scheduled."""

    max_batch_size: int = 0
    """Largest merged batch; 0 = the model has no batch dimension (never merged)."""
    dynamic: bool = False
    """Merge concurrent requests."""
    max_queue_delay_us: int = 0
    """How long the first request of a batch may wait for more."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Batch sizes that run at once when reached."""
    max_queue_size: int = 1024
    """Queued requests beyond this are refused with UNAVAILABLE."""
    instances: int = 1
    """Concurrent executions (Triton's instance_group count)."""
    enforce_max_batch: bool = True
    """Refuse requests larger than ``max_batch_size`` (False for automatic batching: they run alone)."""
    eager: bool = False
    """With merging: an idle instance runs a request at once when the queue is empty (no worker hand-off,
    no gathering); requests merge only while every instance is busy (automatic batching)."""

    @property
    def merges(self) -> bool:
        """Whether concurrent requests are merged into one execution."""
        return self.dynamic and self.max_batch_size > 0


@dataclass
class Pending:
    """One queued request and the future its caller awaits."""
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    elements: int
    key: tuple
    deadline: float | None
    enqueued_ns: int
    future: asyncio.Future
    queue_ns: int = 0
    counted: bool = False
    """Whether it holds a place in the queue bound (from acceptance until it starts or is dropped)."""


@dataclass
class _Result:
    outputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


def batch_key(inputs: dict[str, np.ndarray]) -> tuple:
    """Requests merge only when every input has the same dtype and non-batch shape."""
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items()))


class Scheduler:
    """Queue + workers for one model version."""

    def __init__(self, model: str, version: str, run: RunFn, policy: BatchPolicy, stats: VersionStats, *,
                 inline: bool = False, inline_limit_s: float | None = None, solo_run: RunFn | None = None):
        self.model, self.version = model, version
        self.policy = policy
        self.inline = inline
        """Run on the event loop thread (short models) instead of the executor."""
        self._inline_limit_ns = None if inline_limit_s is None else int(inline_limit_s * 1e9)
        self._slow_runs = 0
        self.stats = stats
        self.metrics = metrics.VersionMetrics(model, version)
        self._run = run
        # With solo_run, a request that finds nothing running and nothing queued runs alone on solo_run (a
        # session using every core) and holds every instance meanwhile; the others run on ``run``.
        self._solo_run = solo_run
        self._pending: deque[Pending] = deque()
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight = 0
        self._instances = max(1, policy.instances)
        self._busy = 0  # executions running now (workers and the direct path), at most _instances
        # Accepted requests that have not started executing nor been dropped, wherever they are: in
        # _pending, in a batch a worker gathers, or in a batch waiting for a free instance.
        self._queued = 0
        self.metrics.watch_pending(lambda: self._queued)
        self._slot_free = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._executor = ThreadPoolExecutor(max_workers=max(1, policy.instances),
                                            thread_name_prefix=f"ort-{model}-{version}")
        # A lone request's all-cores run always starts on the same thread: when the instances' threads took turns
        # (after a burst of concurrent requests had started them all), 10% of MobileNetV2's lone runs at
        # concurrency 1 took 2-3x as long (onnxruntime's pool worker scheduled onto the calling thread's core).
        self._solo_executor = (ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{model}-{version}-solo")
                               if solo_run is not None else self._executor)
        self._preferred = frozenset(policy.preferred_batch_sizes)
        self._preferred_max = max(policy.preferred_batch_sizes, default=0)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the instance workers (on the running event loop)."""
        for i in range(self._instances):
            self._workers.append(asyncio.create_task(self._worker(), name=f"batcher-{self.model}-{self.version}-{i}"))

    @property
    def inflight(self) -> int:
        """Accepted requests not finished yet."""
        return self._inflight

    @property
    def queued(self) -> int:
        """Accepted requests waiting to start (what ``max_queue_size`` bounds)."""
        return self._queued

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every accepted request has finished (used before unloading)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self) -> None:
        """Stop the workers (after ``drain``) and release the executor threads."""
        for w in self._workers:
            w.cancel()
        for w in self._workers:
            try:
                await w
            except asyncio.CancelledError:
                pass
        self._workers.clear()
        self._fail(list(self._pending), "was unloaded; retry to reach the current version")
        self._pending.clear()
        self._executor.shutdown(wait=False)
        self._solo_executor.shutdown(wait=False)
        self.metrics.close()

    def run_sync(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Run directly, bypassing the queue (warm-up)."""
        return self._run(inputs, outputs)

    # --- submission ---------------------------------------------------------------------------

    async def submit(self, inputs: dict[str, np.ndarray], outputs: list[str], elements: int,
                     deadline: float | None = None) -> tuple[dict[str, np.ndarray], int]:
        """Queue one request; returns (its outputs, ns it waited in the queue).

        Raises Unavailable at once when the queue is full, DeadlineExceeded when its deadline
        passed before it could run.
        """
        if self._queued >= self.policy.max_queue_size:
            raise Unavailable(
                f"model '{self.model}' version {self.version}: queue is full ({self.policy.max_queue_size} "
                "requests waiting); retry later, send fewer concurrent requests or raise max_queue_size",
                {"model": self.model, "version": self.version},
            )
        enqueued = time.perf_counter_ns()
        if (not self._pending and self._busy < self._instances
                and (not self.policy.merges or self.policy.eager)):
            if self.inline:
                return self._run_inline(inputs, outputs, elements, enqueued)
            return await self._direct(Pending(inputs, outputs, elements, batch_key(inputs), deadline, enqueued,
                                              asyncio.get_running_loop().create_future()))
        item = Pending(inputs, outputs, elements, batch_key(inputs), deadline, enqueued,
                       asyncio.get_running_loop().create_future())
        item.counted = True
        self._queued += 1
        self._pending.append(item)
        self._inflight += 1
        self._idle.clear()
        self._arrived.set()
        try:
            result = await item.future
            return result, item.queue_ns
        except asyncio.CancelledError:
            item.future.cancel()
            raise
        finally:
            self._uncount(item)  # dropped before it started (cancelled, expired, unloaded); else a no-op
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _uncount(self, item: Pending) -> None:
        """Give back the item's place in the queue bound (once; at execution start or when dropped)."""
        if item.counted:
            item.counted = False
            self._queued -= 1

    def _run_inline(self, inputs: dict[str, np.ndarray], outputs: list[str], elements: int,
                    enqueued: int) -> tuple[dict[str, np.ndarray], int]:
        """``_direct`` for an inline model: the run happens right here on the loop (nothing to await), so no
        Pending, future or batch record is built for it; statistics and metrics are those of ``_execute``."""
        solo = self._solo_run is not None and self._busy == 0
        taken = self._instances if solo else 1
        run = self._solo_run if solo else self._run
        self._busy += taken
        self._inflight += 1
        self._idle.clear()
        try:
            start = time.perf_counter_ns()
            out = run(inputs, outputs)
            infer_ns = time.perf_counter_ns() - start
            self._check_inline(infer_ns)
            queue_ns = start - enqueued
            self.stats.record_single(elements, infer_ns, queue_ns)
            self.metrics.single(elements, infer_ns / 1e9, queue_ns / 1e9)
            return out, queue_ns
        finally:
            self._release(taken)
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _direct(self, item: Pending) -> tuple[dict[str, np.ndarray], int]:
        """An idle instance, an empty queue and nothing to wait for: run at once (no worker hand-off)."""
        solo = self._solo_run is not None and self._busy == 0
        taken = self._instances if solo else 1
        self._busy += taken
        self._inflight += 1
        self._idle.clear()
        try:
            await self._execute([item], solo)
            return item.future.result(), item.queue_ns
        except asyncio.CancelledError:
            if item.future.done() and not item.future.cancelled():
                item.future.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            self._release(taken)
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _release(self, taken: int = 1) -> None:
        self._busy -= taken
        self._slot_free.set()

    async def _acquire(self) -> None:
        while self._busy >= self._instances:
            self._slot_free.clear()
            await self._slot_free.wait()
        self._busy += 1

    # --- workers ------------------------------------------------------------------------------

    def _expired(self, item: Pending, now: float) -> bool:
        if item.deadline is not None and now > item.deadline:
            if not item.future.done():
                item.future.set_exception(DeadlineExceeded(
                    f"model '{self.model}': the request's deadline passed while it waited in the queue; "
                    "it was not run (raise the client timeout or lower the load)",
                    {"model": self.model},
                ))
            return True
        return False

    async def _next(self) -> Pending:
        while True:
            now = time.monotonic()
            while self._pending:
                item = self._pending.popleft()
                if item.future.done() or self._expired(item, now):
                    continue
                return item
            self._arrived.clear()
            await self._arrived.wait()

    def _fill(self, batch: list[Pending], size: int, limit: int) -> int:
        """Move compatible live requests from the queue into ``batch`` up to ``limit`` elements."""
        if not self._pending:
            return size
        now = time.monotonic()
        key = batch[0].key
        keep: deque[Pending] = deque()
        while self._pending:
            item = self._pending.popleft()
            if item.future.done() or self._expired(item, now):
                continue
            if size < limit and item.key == key and size + item.elements <= limit:
                batch.append(item)
                size += item.elements
            else:
                keep.append(item)
        self._pending = keep
        return size

    def _ready(self, size: int, limit: int) -> bool:
        if size >= limit:
            return True
        if self._preferred and (size in self._preferred or size >= self._preferred_max):
            return True
        return False

    async def _worker(self) -> None:
        p = self.policy
        while True:
            first = await self._next()
            batch = [first]
            try:
                if p.merges:
                    batch = await self._gather(batch)
                await self._acquire()  # the batch's requests keep their queue places until it starts
            except asyncio.CancelledError:  # stopped while holding requests: they must not hang
                self._fail(batch, "was unloaded; retry to reach the current version")
                raise
            try:
                # A deadline can pass while its request waits in a gathering batch or for a free instance:
                # such requests are dropped here, never run.
                now = time.monotonic()
                live = [b for b in batch if not b.future.done() and not self._expired(b, now)]
                if live:
                    await self._execute(live)
            finally:
                self._release()

    def _fail(self, batch: list[Pending], why: str) -> None:
        for b in batch:
            if not b.future.done():
                b.future.set_exception(Unavailable(f"model '{self.model}' version {self.version} {why}"))

    async def _gather(self, batch: list[Pending]) -> list[Pending]:
        """Grow a batch from the queue until it is full, preferred, or its oldest request waited the delay.

        Requests cancelled meanwhile leave the batch (and free their room) at every step.
        """
        p = self.policy
        delay_s = p.max_queue_delay_us / 1e6
        while True:
            self._arrived.clear()
            batch = [b for b in batch if not b.future.done()]
            if not batch:
                return batch
            size = self._fill(batch, sum(b.elements for b in batch), p.max_batch_size)
            if self._ready(size, p.max_batch_size):
                return batch
            t_end = min(b.enqueued_ns for b in batch) / 1e9 + delay_s
            remaining = t_end - time.perf_counter_ns() / 1e9
            if remaining <= 0:
                return batch
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                batch = [b for b in batch if not b.future.done()]
                if batch:
                    self._fill(batch, sum(b.elements for b in batch), p.max_batch_size)
                return batch

    async def _execute(self, batch: list[Pending], solo: bool = False) -> None:
        start = time.perf_counter_ns()
        run = self._solo_run if solo else self._run
        for b in batch:
            b.queue_ns = start - b.enqueued_ns
            self._uncount(b)  # execution starts: its queue place is free
        try:
            if self.inline:
                result = self._run_batch(batch, run)
                self._check_inline(result.infer_ns)
            else:
                result = await asyncio.get_running_loop().run_in_executor(
                    self._solo_executor if solo else self._executor, self._run_batch, batch, run)
        except BaseException as exc:  # noqa: BLE001 - every waiter gets the failure
            if isinstance(exc, asyncio.CancelledError):
                self._fail(batch, "stopped while running the request; retry")
                raise
            for b in batch:
                if not b.future.done():
                    b.future.set_exception(exc)
            return
        total = sum(b.elements for b in batch)
        self.stats.record_execution(total, result.input_ns, result.infer_ns, result.output_ns,
                                    [(b.elements, b.queue_ns) for b in batch])
        self.metrics.execution(total, result.infer_ns / 1e9, [b.queue_ns / 1e9 for b in batch])
        for b, out in zip(batch, result.outputs, strict=True):
            if not b.future.done():
                b.future.set_result(out)

    def _check_inline(self, run_ns: int) -> None:
        """Move an inline model to the executor after INLINE_SLOW_RUNS runs in a row longer than its limit: its
        runs depend on its data more than the load-time measurement showed, and the loop must not stall. (One
        slow run is not enough: on a busy machine the thread may just have been preempted.)"""
        if self._inline_limit_ns is None:
            return
        self._slow_runs = self._slow_runs + 1 if run_ns > self._inline_limit_ns else 0
        if self._slow_runs >= INLINE_SLOW_RUNS:
            self.inline = False
            log.warning("model %s version %s: %d runs in a row took over %.1f ms on the event loop (last %.1f ms); "
                        "running it on an executor thread from now on", self.model, self.version, self._slow_runs,
                        self._inline_limit_ns / 1e6, run_ns / 1e6)

    def _run_batch(self, batch: list[Pending], run: RunFn) -> _Result:
        """Merge, run, split (in a worker thread, or on the loop when inline)."""
        res = _Result()
        t0 = time.perf_counter_ns()
        if len(batch) == 1:
            merged = batch[0].inputs
            wanted = batch[0].outputs
        else:
            merged = {name: np.concatenate([b.inputs[name] for b in batch], axis=0) for name in batch[0].inputs}
            wanted = []
            for b in batch:
                if not b.outputs:
                    wanted = []
                    break
                wanted.extend(o for o in b.outputs if o not in wanted)
        t1 = time.perf_counter_ns()
        out = run(merged, wanted)
        t2 = time.perf_counter_ns()
        if len(batch) == 1:
            res.outputs.append(out)
        else:
            total = sum(b.elements for b in batch)
            for name, arr in out.items():
                if arr.ndim == 0 or arr.shape[0] != total:
                    raise RuntimeError(f"output '{name}' has shape {list(arr.shape)}; cannot split a batch of {total}")
            offset = 0
            for b in batch:
                names = b.outputs or list(out)
                res.outputs.append({n: out[n][offset:offset + b.elements] for n in names})
                offset += b.elements
        t3 = time.perf_counter_ns()
        res.input_ns, res.infer_ns, res.output_ns = t1 - t0, t2 - t1, t3 - t2
        return res
