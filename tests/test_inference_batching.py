"""The per-version scheduler on its own: bounded queue, deadlines, cancellation, merging and
exact splitting, preferred sizes. The model run is a real function gated by a threading.Event
so the order of events is deterministic (no sleeps, no timing assertions)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from inference_svc.batching import BatchPolicy, Scheduler
from inference_svc.stats import VersionStats
from modelport.errors import DeadlineExceeded, Unavailable


class GatedModel:
    """y = x * 10 + row index within the executed batch; blocks until ``gate`` is set."""

    def __init__(self):
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[int] = []

    def __call__(self, inputs, outputs):
        self.started.set()
        assert self.gate.wait(30), "gate never opened"
        x = inputs["x"]
        self.batches.append(x.shape[0])
        return {"y": x * 10, "rows": np.arange(x.shape[0], dtype=np.int64).reshape(-1, 1)}


async def _started(model: GatedModel) -> None:
    assert await asyncio.to_thread(model.started.wait, 30)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_full_queue_refuses_at_once_and_expired_and_cancelled_requests_never_run():
    async def scenario():
        model = GatedModel()
        sched = Scheduler("m", "1", model, BatchPolicy(max_batch_size=4, dynamic=False, max_queue_size=3), VersionStats())
        sched.start()
        one = np.ones((1, 2), np.float32)
        running = asyncio.create_task(sched.submit({"x": one}, [], 1))
        await _started(model)  # the first request is executing; the queue is empty again
        expired = asyncio.create_task(sched.submit({"x": one * 2}, [], 1, deadline=time.monotonic() - 1))
        cancelled = asyncio.create_task(sched.submit({"x": one * 3}, [], 1))
        kept = asyncio.create_task(sched.submit({"x": one * 4}, [], 1))
        await asyncio.sleep(0)  # let the three tasks enqueue (scheduling, not timing)
        with pytest.raises(Unavailable, match=r"model 'm' version 1: queue is full \(3 requests waiting\)"):
            await sched.submit({"x": one}, [], 1)
        cancelled.cancel()
        model.gate.set()
        out, _ = await running
        np.testing.assert_array_equal(out["y"], one * 10)
        with pytest.raises(DeadlineExceeded, match="deadline passed while it waited in the queue; it was not run"):
            await expired
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        out, queue_ns = await kept
        np.testing.assert_array_equal(out["y"], one * 40)
        assert queue_ns > 0
        assert model.batches == [1, 1]  # the expired and the cancelled request never ran
        assert sched.stats.execution_count == 2
        await sched.drain(5)
        await sched.stop()
        assert pending_gauge() is None  # an unloaded version leaves no gauge behind

    run(scenario())


def test_merges_queued_requests_of_any_batch_size_and_splits_exactly():
    async def scenario():
        model = GatedModel()
        stats = VersionStats()
        sched = Scheduler("m", "1", model, BatchPolicy(max_batch_size=8, dynamic=True, max_queue_delay_us=0),
                          stats)
        sched.start()
        blocker = asyncio.create_task(sched.submit({"x": np.zeros((1, 2), np.float32)}, [], 1))
        await _started(model)
        sizes = [2, 1, 3, 2]
        xs = [np.full((n, 2), i + 1, np.float32) for i, n in enumerate(sizes)]
        tasks = [asyncio.create_task(sched.submit({"x": x}, ["y"] if i % 2 else [], n))
                 for i, (x, n) in enumerate(zip(xs, sizes, strict=True))]
        await asyncio.sleep(0)
        model.gate.set()
        await blocker
        results = [await t for t in tasks]
        assert model.batches == [1, 8]  # all four queued requests ran as one batch of 8
        offset = 0
        for i, ((out, _), x) in enumerate(zip(results, xs, strict=True)):
            np.testing.assert_array_equal(out["y"], x * 10)
            if i % 2:
                assert list(out) == ["y"]  # only what it asked for
            else:
                np.testing.assert_array_equal(out["rows"].ravel(), np.arange(offset, offset + x.shape[0]))
            offset += x.shape[0]
        assert stats.inference_count == 9 and stats.execution_count == 2
        assert sorted(stats.batches) == [1, 8]
        await sched.stop()

    run(scenario())


def test_incompatible_shapes_are_not_merged_and_max_batch_is_respected():
    async def scenario():
        model = GatedModel()
        sched = Scheduler("m", "1", model, BatchPolicy(max_batch_size=4, dynamic=True), VersionStats())
        sched.start()
        blocker = asyncio.create_task(sched.submit({"x": np.zeros((1, 2), np.float32)}, [], 1))
        await _started(model)
        reqs = [np.ones((3, 2), np.float32), np.ones((1, 5), np.float32), np.ones((2, 2), np.float32),
                np.ones((1, 2), np.float32)]
        tasks = [asyncio.create_task(sched.submit({"x": x}, [], x.shape[0])) for x in reqs]
        await asyncio.sleep(0)
        model.gate.set()
        await blocker
        for t, x in zip(tasks, reqs, strict=True):
            out, _ = await t
            np.testing.assert_array_equal(out["y"], x * 10)
        # [3,2]+[1,2] fill 4; [1,5] has another shape; [2,2] waits for the next batch.
        assert model.batches == [1, 4, 1, 2]
        await sched.stop()

    run(scenario())


def test_waits_for_preferred_size_within_the_delay():
    async def scenario():
        model = GatedModel()
        model.gate.set()
        sched = Scheduler("m", "1", model, BatchPolicy(max_batch_size=8, dynamic=True, max_queue_delay_us=30_000_000,
                                                        preferred_batch_sizes=(4,)), VersionStats())
        sched.start()
        tasks = []
        for i in range(4):
            tasks.append(asyncio.create_task(sched.submit({"x": np.full((1, 2), i, np.float32)}, [], 1)))
            await asyncio.sleep(0)
        for t in tasks:
            await t
        assert model.batches == [4]  # the first request waited (delay 30 s) until 4 were there
        await sched.stop()

    run(scenario())


def test_stop_fails_queued_requests_with_unavailable():
    async def scenario():
        model = GatedModel()
        # Merging policy: every request goes through the queue and a worker.
        sched = Scheduler("m", "1", model, BatchPolicy(max_batch_size=4, dynamic=True), VersionStats())
        sched.start()
        first = asyncio.create_task(sched.submit({"x": np.ones((1, 2), np.float32)}, [], 1))
        await _started(model)
        queued = asyncio.create_task(sched.submit({"x": np.ones((1, 2), np.float32)}, [], 1))
        await asyncio.sleep(0)
        stopping = asyncio.create_task(sched.stop())
        await asyncio.sleep(0)
        model.gate.set()
        await stopping
        with pytest.raises(Unavailable, match="was unloaded; retry"):
            await queued
        with pytest.raises(Unavailable, match="stopped while running"):
            await first

    run(scenario())


def test_direct_path_without_merging_respects_the_instance_count():
    """No merging: an idle instance runs a request at once; beyond `instances` they queue."""
    async def scenario():
        model = GatedModel()
        stats = VersionStats()
        sched = Scheduler("m", "1", model, BatchPolicy(max_batch_size=0, instances=1, max_queue_size=8), stats)
        sched.start()
        first = asyncio.create_task(sched.submit({"x": np.ones((1, 2), np.float32)}, [], 1))
        await _started(model)
        rest = [asyncio.create_task(sched.submit({"x": np.full((1, 2), i, np.float32)}, [], 1)) for i in range(3)]
        await asyncio.sleep(0)
        assert len(model.batches) == 0 and sched.inflight == 4  # one running, three waiting
        stopping = asyncio.create_task(sched.stop())
        await asyncio.sleep(0)
        model.gate.set()
        out, _ = await first  # the direct run is not cut short by stop()
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 10, np.float32))
        await stopping
        for t in rest:
            with pytest.raises(Unavailable, match="was unloaded"):
                await t
        assert model.batches == [1]

    run(scenario())


def test_manager_close_lets_in_flight_batches_finish(tmp_path):
    """Shutdown (SIGTERM path) drains: a request already executing completes with its result."""
    from inference_fixtures import mlp, mlp_expected

    from inference_svc.manager import LoadOptions, ModelManager

    async def scenario():
        manager = ModelManager(defaults=LoadOptions(execution_provider="cpu"))
        mv = await manager.load("m", mlp(tmp_path / "m.onnx"), 1)
        real_run = mv.scheduler._run
        gate, started = threading.Event(), threading.Event()

        def gated(inputs, outputs):
            started.set()
            assert gate.wait(30)
            return real_run(inputs, outputs)

        mv.scheduler._run = gated
        x = np.ones((2, 4), np.float32)
        request = asyncio.create_task(manager.infer(mv, {"x": x}, []))
        assert await asyncio.to_thread(started.wait, 30)
        closing = asyncio.create_task(manager.close())
        await asyncio.sleep(0)
        assert not closing.done() and mv.state == "UNLOADING"
        assert manager.names() == []  # no longer routable while it drains
        gate.set()
        out = await request
        np.testing.assert_allclose(out["y"], mlp_expected(x), rtol=1e-6)
        await closing
        assert mv.state == "UNAVAILABLE" and mv.stats.success.count == 1

    run(scenario())


def test_a_request_cancelled_while_its_batch_waits_frees_its_room():
    async def scenario():
        model = GatedModel()
        model.gate.set()
        sched = Scheduler("m", "1", model, BatchPolicy(max_batch_size=4, dynamic=True, max_queue_delay_us=30_000_000),
                          VersionStats())
        sched.start()
        first = asyncio.create_task(sched.submit({"x": np.zeros((1, 2), np.float32)}, [], 1))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the worker now holds `first` and waits for more (delay 30 s)
        first.cancel()
        tasks = [asyncio.create_task(sched.submit({"x": np.full((1, 2), i, np.float32)}, [], 1)) for i in range(4)]
        for i, t in enumerate(tasks):
            out, _ = await t
            np.testing.assert_array_equal(out["y"], np.full((1, 2), i * 10, np.float32))
        assert model.batches == [4]  # the four live requests filled the batch at once
        with pytest.raises(asyncio.CancelledError):
            await first
        await sched.stop()

    run(scenario())


async def _until(condition, steps: int = 1000) -> None:
    """Yield to the event loop until ``condition()`` holds (scheduling steps, not time)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def pending_gauge(model: str = "m", version: str = "1"):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("modelport_inference_pending_requests", {"model": model, "version": version})


def test_queue_bound_counts_requests_held_in_a_gathering_batch():
    """With dynamic batching a worker takes requests off the queue into the batch it is still
    gathering (here for up to 30 s); they keep counting against max_queue_size until the batch
    starts, a cancelled one frees its place at once, and executing requests no longer count."""
    async def scenario():
        model = GatedModel()
        sched = Scheduler("m", "1", model, BatchPolicy(max_batch_size=4, dynamic=True, max_queue_delay_us=30_000_000,
                                                        max_queue_size=2), VersionStats())
        sched.start()

        def x(value, n=1):
            return {"x": np.full((n, 2), value, np.float32)}

        a = asyncio.create_task(sched.submit(x(1), [], 1))
        b = asyncio.create_task(sched.submit(x(2), [], 1))
        await _until(lambda: sched.inflight == 2 and not sched._pending)
        assert pending_gauge() == 2  # what a Prometheus scrape reads now
        # Both sit in the batch the worker gathers (nothing left in the queue itself): the queue is full.
        for _ in range(2):
            with pytest.raises(Unavailable) as err:
                await sched.submit(x(3), [], 1)
            assert str(err.value) == ("model 'm' version 1: queue is full (2 requests waiting); retry later, send "
                                      "fewer concurrent requests or raise max_queue_size")
            assert err.value.status == "UNAVAILABLE"
        b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await b
        # b's place is free: a 3-element request is accepted and fills the batch (1 + 3 = 4), which starts.
        c = asyncio.create_task(sched.submit(x(4, 3), [], 3))
        await _started(model)
        # Requests of a running batch no longer count: two more are accepted (they wait for the busy
        # instance), the third is refused. (d + e fill a batch of 4, so nothing waits out the delay.)
        d = asyncio.create_task(sched.submit(x(5), [], 1))
        e = asyncio.create_task(sched.submit(x(6, 3), [], 3))
        await _until(lambda: len(sched._pending) == 2)
        with pytest.raises(Unavailable, match=r"queue is full \(2 requests waiting\)"):
            await sched.submit(x(7), [], 1)
        model.gate.set()
        for task, value, n in ((a, 1, 1), (c, 4, 3), (d, 5, 1), (e, 6, 3)):
            out, _ = await task
            np.testing.assert_array_equal(out["y"], np.full((n, 2), value * 10, np.float32))
        assert model.batches == [4, 4]  # a + c, then d + e; b and the refused requests never ran
        assert sched.queued == 0 and pending_gauge() == 0
        # Everything ran: the queue is empty and accepts requests again.
        f = asyncio.create_task(sched.submit(x(8, 4), [], 4))
        out, _ = await f
        np.testing.assert_array_equal(out["y"], np.full((4, 2), 80, np.float32))
        await sched.drain(5)
        await sched.stop()

    run(scenario())


def test_expired_request_beside_a_gathering_batch_frees_its_place():
    """While a batch gathers, a request that arrives past its deadline fails with DEADLINE_EXCEEDED
    without running, and its place in the queue bound is free again."""
    async def scenario():
        model = GatedModel()
        model.gate.set()
        sched = Scheduler("m", "1", model, BatchPolicy(max_batch_size=4, dynamic=True, max_queue_delay_us=30_000_000,
                                                        max_queue_size=2), VersionStats())
        sched.start()
        one = np.ones((1, 2), np.float32)
        live = asyncio.create_task(sched.submit({"x": one}, [], 1))
        await _until(lambda: sched.inflight == 1 and not sched._pending)
        doomed = asyncio.create_task(sched.submit({"x": one * 2}, [], 1, deadline=time.monotonic() - 1))
        with pytest.raises(DeadlineExceeded, match="deadline passed while it waited in the queue; it was not run"):
            await doomed
        # One place free again: a 3-element request is accepted and completes the batch of 4.
        filler = asyncio.create_task(sched.submit({"x": np.full((3, 2), 3, np.float32)}, [], 3))
        out, _ = await live
        np.testing.assert_array_equal(out["y"], one * 10)
        out, _ = await filler
        np.testing.assert_array_equal(out["y"], np.full((3, 2), 30, np.float32))
        assert model.batches == [4]
        await sched.stop()

    run(scenario())


def test_deadline_passing_inside_a_gathering_batch_drops_the_request_before_it_runs():
    """A request already taken into a batch that is still gathering, whose deadline passes before the
    batch starts, fails with DEADLINE_EXCEEDED and is not part of the execution."""
    async def scenario():
        model = GatedModel()
        model.gate.set()
        sched = Scheduler("m", "1", model, BatchPolicy(max_batch_size=4, dynamic=True, max_queue_delay_us=30_000_000,
                                                        max_queue_size=8), VersionStats())
        sched.start()
        one = np.ones((1, 2), np.float32)
        first = asyncio.create_task(sched.submit({"x": one}, [], 1))
        deadline = time.monotonic() + 0.05
        doomed = asyncio.create_task(sched.submit({"x": one * 2}, [], 1, deadline=deadline))
        await _until(lambda: sched.inflight == 2 and not sched._pending)  # both in the gathering batch
        while time.monotonic() <= deadline:  # the behaviour under test is the clock passing the deadline
            await asyncio.sleep(0.01)
        filler = asyncio.create_task(sched.submit({"x": np.full((2, 2), 3, np.float32)}, [], 2))  # batch full: 4
        with pytest.raises(DeadlineExceeded, match="deadline passed while it waited in the queue; it was not run"):
            await doomed
        out, _ = await first
        np.testing.assert_array_equal(out["y"], one * 10)
        out, _ = await filler
        np.testing.assert_array_equal(out["y"], np.full((2, 2), 30, np.float32))
        assert model.batches == [3]  # the expired request was not run
        assert sched.queued == 0
        await sched.stop()

    run(scenario())


def test_pending_gauge_survives_retiring_the_old_copy_of_a_reloaded_version():
    """Reloading a version builds its new scheduler before the old one stops: the old one's close must
    not remove the gauge the new one feeds."""
    from inference_svc.metrics import VersionMetrics

    old, new = VersionMetrics("g", "1"), VersionMetrics("g", "1")
    old.watch_pending(lambda: 3)
    new.watch_pending(lambda: 5)
    old.close()
    assert pending_gauge("g", "1") == 5
    new.close()
    assert pending_gauge("g", "1") is None
