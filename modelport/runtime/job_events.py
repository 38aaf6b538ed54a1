"""Turns a worker-pool job into the ``JobEvent`` stream that Convert/Optimize return.

Shared by the converter and optimizer servicers: cache lookup, queued/progress events, the
final result (cached for re-runs) or an error event followed by the RPC failing with the same
status code. Closing the stream (client cancel or deadline) cancels the job and its worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from modelport.errors import ModelportError
from modelport.job_records import ParityReport
from modelport.runtime import job_codec
from modelport.runtime.job_cache import JobCache
from modelport.runtime.workers import WorkerPool
from modelport.store import ArtifactStore
from modelport.trust import redact
from modelport.v1 import jobs_pb2

log = logging.getLogger("modelport.runtime.job_cache")


def error_event(job_id: str, stage: str, err: ModelportError) -> jobs_pb2.JobEvent:
    message = redact(err.message)  # clients never read internal paths
    ev = jobs_pb2.JobEvent(job_id=job_id, stage=stage, message=message)
    ev.error.code = err.status
    ev.error.message = message
    ev.error.details.update({k: redact(str(v)) for k, v in err.details.items()})
    if isinstance(err.payload, ParityReport):
        ev.error.parity.CopyFrom(job_codec.parity_report(err.payload))
    return ev


async def job_events(
    *,
    pool: WorkerPool,
    cache: JobCache,
    store: ArtifactStore,
    key: str,
    func: str,
    kwargs: dict[str, Any],
    result_field: str,
    timeout: float,
    finish_result: Callable[[Any], None] | None = None,
) -> AsyncIterator[jobs_pb2.JobEvent]:
    """Yield JobEvents for one job; the last carries ``result_field`` or an error."""
    job_id = key[:16]
    result_cls = type(getattr(jobs_pb2.JobEvent(), result_field))

    def final(result_bytes: bytes, cached: bool) -> jobs_pb2.JobEvent:
        ev = jobs_pb2.JobEvent(job_id=job_id, stage="done", progress=1.0, cached=cached,
                               message="cached result" if cached else "done")
        res = getattr(ev, result_field)
        res.ParseFromString(result_bytes)
        if finish_result:
            finish_result(res)
        return ev

    cached = cache.get(key)
    if cached is not None:
        probe = result_cls()
        probe.ParseFromString(cached)
        if not probe.artifact.digest or store.has(probe.artifact.digest):
            yield final(cached, True)
            return

    events: asyncio.Queue = asyncio.Queue()

    def on_progress(stage: str, fraction: float, message: str) -> None:
        events.put_nowait(jobs_pb2.JobEvent(job_id=job_id, stage=stage, progress=fraction, message=message))

    def on_queued(position: int) -> None:
        events.put_nowait(jobs_pb2.JobEvent(
            job_id=job_id, stage="queued", progress=0.0,
            message=f"waiting for a free worker ({position} job(s) queued; setting max_concurrent_jobs)"))

    stage = "queued"
    yield jobs_pb2.JobEvent(job_id=job_id, stage="queued", progress=0.0, message="accepted")
    task = asyncio.ensure_future(pool.run(func, kwargs, timeout=timeout, on_progress=on_progress, on_queued=on_queued))
    getter: asyncio.Future | None = None
    try:
        while True:
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                ev = getter.result()
                stage = ev.stage
                yield ev
                continue
            getter.cancel()
            while not events.empty():
                ev = events.get_nowait()
                stage = ev.stage
                yield ev
            break
        try:
            result = task.result()
        except ModelportError as err:
            yield error_event(job_id, stage, err)
            raise
        cache.put(key, result)
        yield final(result, False)
    finally:
        if getter is not None and not getter.done():
            getter.cancel()
        if not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the worker is gone
                pass
