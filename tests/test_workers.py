"""WorkerPool: results, domain errors, crashes, timeouts, cancellation, recycling and queueing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from modelport.errors import DeadlineExceeded, Internal, InvalidArgument, ModelportError
from modelport.runtime.workers import WorkerPool


def run(coro):
    return asyncio.run(coro)


async def _pool(**kw):
    pool = WorkerPool(**kw)
    await pool.start()
    return pool


def test_result_progress_and_reuse():
    async def main():
        pool = await _pool(max_jobs_per_worker=0, env={"MODELPORT_TEST_FLAG": "on"})
        seen = []
        try:
            a = await pool.run("worker_jobs:echo", {"value": 3}, timeout=60,
                               on_progress=lambda s, f, m: seen.append((s, f, m)))
            b = await pool.run("worker_jobs:echo", {"value": 4}, timeout=60)
            flag = await pool.run("worker_jobs:env", {"name": "MODELPORT_TEST_FLAG"}, timeout=60)
        finally:
            await pool.close()
        return a, b, seen, flag

    a, b, seen, flag = run(main())
    assert a["value"] == 3 and b["value"] == 4
    assert a["pid"] == b["pid"] != os.getpid()  # reused warm worker, not this process
    assert seen == [("working", 0.5, "half way")]
    assert flag == "on"


def test_recycles_worker_after_max_jobs():
    async def main():
        pool = await _pool(max_jobs_per_worker=1)
        try:
            a = await pool.run("worker_jobs:echo", {"value": 1}, timeout=60)
            b = await pool.run("worker_jobs:echo", {"value": 2}, timeout=60)
        finally:
            await pool.close()
        return a["pid"], b["pid"]

    first, second = run(main())
    assert first != second


def test_domain_error_comes_back_as_itself():
    async def main():
        pool = await _pool(max_jobs_per_worker=0)
        try:
            with pytest.raises(InvalidArgument) as e:
                await pool.run("worker_jobs:fail", {}, timeout=60)
            ok = await pool.run("worker_jobs:echo", {"value": 9}, timeout=60)
        finally:
            await pool.close()
        return e.value, ok

    err, ok = run(main())
    assert "expected (N, 8, 8, 1)" in err.message and err.details == {"array": "x"}
    assert ok["value"] == 9


def test_unexpected_error_is_generic_internal():
    async def main():
        pool = await _pool(max_jobs_per_worker=0)
        try:
            with pytest.raises(Internal) as e:
                await pool.run("worker_jobs:unexpected", {}, timeout=60)
        finally:
            await pool.close()
        return e.value

    err = run(main())
    assert "internal detail" not in err.message
    assert "trace is in the service log" in err.message


def test_crash_fails_only_its_job():
    async def main():
        pool = await _pool(max_jobs_per_worker=0)
        try:
            with pytest.raises(Internal) as e:
                await pool.run("worker_jobs:crash", {}, timeout=60)
            after = await pool.run("worker_jobs:echo", {"value": 5}, timeout=60)
        finally:
            await pool.close()
        return e.value, after

    err, after = run(main())
    assert "died (killed by SIGSEGV)" in err.message
    assert after["value"] == 5


def test_sigkilled_worker_is_resource_exhausted_not_internal():
    async def main():
        pool = await _pool(max_jobs_per_worker=0)
        try:
            with pytest.raises(ModelportError) as e:
                await pool.run("worker_jobs:killed", {}, timeout=60)
            after = await pool.run("worker_jobs:echo", {"value": 7}, timeout=60)
        finally:
            await pool.close()
        return e.value, after

    err, after = run(main())
    assert err.status == "RESOURCE_EXHAUSTED", err
    assert "killed (SIGKILL)" in err.message and "out-of-memory killer" in err.message
    assert " available now, " in err.message
    assert err.details["exit"] == "SIGKILL" and int(err.details["available_bytes"]) > 0
    assert after["value"] == 7


def test_timeout_kills_worker(tmp_path):
    marker = tmp_path / "pid"

    async def main():
        pool = await _pool(max_jobs_per_worker=0)
        try:
            with pytest.raises(DeadlineExceeded) as e:
                await pool.run("worker_jobs:hang", {"marker": str(marker)}, timeout=3)
            after = await pool.run("worker_jobs:echo", {"value": 6}, timeout=60)
        finally:
            await pool.close()
        return e.value, after

    err, after = run(main())
    assert "per-job timeout of 3s" in err.message
    assert not _alive(int(marker.read_text()))
    assert after["value"] == 6


def test_cancel_kills_worker_and_queued_jobs_wait(tmp_path):
    marker = tmp_path / "pid"

    async def main():
        pool = await _pool(size=1, max_jobs_per_worker=0)
        queued = []
        try:
            hanging = asyncio.ensure_future(pool.run("worker_jobs:hang", {"marker": str(marker)}, timeout=600))
            while not marker.exists():
                await asyncio.sleep(0.01)
            waiting = asyncio.ensure_future(
                pool.run("worker_jobs:echo", {"value": 7}, timeout=60, on_queued=queued.append))
            while not queued:
                await asyncio.sleep(0.01)
            assert pool.queued == 1
            hanging.cancel()
            with pytest.raises(asyncio.CancelledError):
                await hanging
            result = await waiting
        finally:
            await pool.close()
        return queued, result

    queued, result = run(main())
    assert queued == [1]
    assert result["value"] == 7
    assert not _alive(int(marker.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat a reaped-or-zombie process as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_jobs_run_in_a_scratch_folder_that_is_removed():
    async def main():
        pool = await _pool(max_jobs_per_worker=0)
        try:
            return await pool.run("worker_jobs:write_in_cwd", {}, timeout=60)
        finally:
            await pool.close()

    cwd = run(main())
    assert cwd != os.getcwd() and "modelport-job-" in cwd
    assert not os.path.exists(cwd)
    assert not os.path.exists("stray.tmp")


def test_a_cancelled_jobs_work_folder_in_the_store_goes_with_its_worker(tmp_path):
    """A job killed with its worker (the client went away) leaves nothing in the store's tmp/: the pool hands the
    dead worker's pid to ``on_worker_lost`` before the job's slot frees, and the service removes that worker's
    entries; those of the service itself and of other workers stay."""
    from modelport import tmpfiles
    from modelport.store import ArtifactStore

    store = ArtifactStore(tmp_path / "store")
    marker = tmp_path / "pid"
    other_worker = store.tmp_dir / f"optimize-{tmpfiles.tag()}-w{os.getpid() + 1}-busy"
    other_worker.mkdir()
    service_upload = store.tmp_dir / f"{tmpfiles.prefix('upload')}live"
    service_upload.write_bytes(b"in flight")
    lost: list[int] = []

    def on_lost(pid: int) -> None:
        lost.append(pid)
        tmpfiles.remove_worker_entries(store.tmp_dir, pid)

    async def main():
        pool = await _pool(size=1, max_jobs_per_worker=0, on_worker_lost=on_lost)
        try:
            job = asyncio.ensure_future(pool.run("worker_jobs:hang_in_store",
                                                 {"store_root": str(store.root), "marker": str(marker)}, timeout=600))
            while not marker.exists() or len(marker.read_text().splitlines()) < 2:
                await asyncio.sleep(0.01)
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
            return await pool.run("worker_jobs:echo", {"value": 3}, timeout=60)
        finally:
            await pool.close()

    after = run(main())
    pid, work = marker.read_text().splitlines()
    assert f"-w{pid}-" in Path(work).name and lost == [int(pid)]
    assert not Path(work).exists()
    assert sorted(p.name for p in store.tmp_dir.iterdir()) == sorted([other_worker.name, service_upload.name])
    assert after["value"] == 3
