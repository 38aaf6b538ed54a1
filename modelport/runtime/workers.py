"""Worker subprocesses for heavy, untrusted or crash-prone work (TensorFlow, TFMOT).

A ``WorkerPool`` keeps warm worker processes (modules such as tensorflow pre-imported) and
runs one job per worker at a time. A job is ``func(progress=..., **kwargs)`` named by
``"module:function"``; it reports progress through the callback and returns a picklable value
(serialized protobuf bytes, typically). A worker that crashes or hangs fails only its own job;
a cancelled or timed-out job has its worker killed. After ``max_jobs_per_worker`` jobs a
worker exits so its memory goes back to the system, and a warm spare takes its place.

Workers may run untrusted model code, so they start with a scrubbed environment (no tokens, no
TLS key paths: ``scrub_environment``) and keep every temp file under one scratch folder per worker,
which the pool removes when the worker exits or is killed. A worker whose service dies (even by
SIGKILL) removes its scratch folder and exits at once; the scratch and store temp names carry the
service's pid (``modelport.tmpfiles``), so a restarted service sweeps what was left anyway.

This module never imports grpc.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing as mp
import os
import re
import shutil
import signal
import tempfile
import threading
import traceback
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from modelport import tmpfiles
from modelport.errors import DeadlineExceeded, Internal, ModelportError, ResourceExhausted, error_for_status
from modelport.memory import available_bytes, fmt_bytes
from modelport.store import disk_full_error

log = logging.getLogger("modelport.runtime.workers")

ProgressFn = Callable[[str, float, str], None]

_INTERNAL = "the job failed with an unexpected error (the trace is in the service log)"

# Variables a worker never sees: the services' tokens and TLS material (any MODELPORT_*TLS_* path)
# and anything named like a credential. The service has read its settings before workers start.
_SECRET_ENV = re.compile(r"^MODELPORT_\w*(AUTH_TOKEN|TLS_\w+)$|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|_KEY$",
                         re.IGNORECASE)


def is_secret_env(name: str) -> bool:
    """Whether an environment variable is kept from worker processes."""
    return bool(_SECRET_ENV.search(name))


def scrub_environment(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Remove secrets from ``environ`` (default ``os.environ``, which child processes inherit); returns
    the names removed. Services call it once their settings are read, and every worker at start."""
    environ = os.environ if environ is None else environ
    names = [k for k in list(environ) if is_secret_env(k)]
    for k in names:
        del environ[k]
    return names


def _die_with_service(alive, scratch_root: str) -> None:
    """Block until the service's end of ``alive`` closes (the service exited, even by SIGKILL), then drop
    this worker's scratch folder and exit at once: a killed service leaves no worker running on, nor
    its temp files."""
    try:
        alive.recv()
    except (EOFError, OSError):
        pass
    if scratch_root:
        shutil.rmtree(scratch_root, ignore_errors=True)
    os._exit(70)


def _child_main(conn, env: dict[str, str], preload: tuple[str, ...], scratch_root: str = "", alive=None) -> None:
    scrub_environment()
    os.environ.update(env)
    tmpfiles.set_owner(os.getppid())  # temp names in a store carry the service's pid (swept once it is gone)
    if alive is not None:
        threading.Thread(target=_die_with_service, args=(alive, scratch_root), daemon=True,
                         name="die-with-service").start()
    if scratch_root:  # every temp file of this worker (its jobs, the libraries) lives here
        os.environ["TMPDIR"] = scratch_root
        tempfile.tempdir = scratch_root
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    for mod in preload:
        importlib.import_module(mod)
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "exit":
            return
        _, func_path, kwargs = msg
        module, _, name = func_path.partition(":")

        def progress(stage: str, fraction: float, message: str = "") -> None:
            conn.send(("progress", stage, float(fraction), message))

        # Each job runs in its own scratch folder: some tools (onnxruntime's symbolic shape
        # inference, for one) drop temp files into the working directory.
        scratch = tempfile.mkdtemp(prefix="modelport-job-")
        home = os.getcwd()
        try:
            os.chdir(scratch)
            func = getattr(importlib.import_module(module), name)
            result = func(progress=progress, **kwargs)
            conn.send(("result", result))
        except ModelportError as e:
            conn.send(("error", e.status, e.message, e.details, e.payload))
        except BaseException as e:  # noqa: BLE001 - reported, never leaked to the client
            full = disk_full_error(e, scratch_root)
            if full is not None:
                conn.send(("error", full.status, full.message, full.details, None))
                continue
            traceback.print_exc()
            conn.send(("error", "INTERNAL", _INTERNAL, {}, None))
        finally:
            os.chdir(home)
            shutil.rmtree(scratch, ignore_errors=True)


@dataclass(eq=False)
class _Worker:
    proc: Any
    conn: Any
    jobs: int = 0
    ready: asyncio.Future | None = field(default=None)
    scratch: str = ""
    alive: Any = None
    """Our end of the pipe whose closing tells the worker the service is gone."""

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()
        if self.alive is not None:
            self.alive.close()
        if self.scratch:  # what a killed job left in its temp folders goes with it
            shutil.rmtree(self.scratch, ignore_errors=True)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _death_error(name: str, code: int | None) -> ModelportError:
    """The error for a worker that died mid-job. SIGKILL is what the kernel's out-of-memory killer sends
    (the pool itself only kills workers on timeout or cancel, which never get here): RESOURCE_EXHAUSTED
    with the memory this machine can give, not INTERNAL."""
    if code == -signal.SIGKILL:
        budget = available_bytes()
        limit = f"{fmt_bytes(budget.limit)} limit, " if budget.limit else ""
        return ResourceExhausted(
            f"the {name} process was killed (SIGKILL) while running this job, most likely by the kernel's "
            f"out-of-memory killer: the job needed more memory than this machine or container gives "
            f"({limit}{fmt_bytes(budget.available)} available now, {budget.source}). Run it with more memory, "
            "fewer concurrent jobs, or a smaller model/technique. The service is unaffected.",
            details={"exit": "SIGKILL", "available_bytes": str(budget.available)})
    return Internal(
        f"the {name} process died ({_describe_exit(code)}) while running this job; "
        "the model may crash TensorFlow or need more memory. The service is unaffected.",
        details={"exit": _describe_exit(code)},
    )


class WorkerPool:
    """Runs jobs in warm subprocesses, at most ``size`` at once; the rest queue."""

    def __init__(self, *, size: int = 1, env: dict[str, str] | None = None, preload: tuple[str, ...] = (),
                 max_jobs_per_worker: int = 1, name: str = "worker",
                 on_worker_lost: Callable[[int], Any] | None = None):
        self.size = max(1, size)
        self.env = dict(env or {})
        self.preload = tuple(preload)
        self.max_jobs = max_jobs_per_worker
        self.name = name
        self._ctx = mp.get_context("spawn")
        self._idle: list[_Worker] = []
        self._sem: asyncio.Semaphore | None = None
        self._waiting = 0
        self._closed = False
        self._spares: set[asyncio.Task] = set()
        self.on_worker_lost = on_worker_lost
        """Called in a thread with the pid of a worker killed (cancelled, timed-out job) or dead mid-job, before
        the job's slot frees: the service removes what that job left outside the worker's scratch folder."""

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self, warm: int = 1) -> None:
        """Spawn ``warm`` workers and wait until they have pre-imported their modules."""
        self._sem = asyncio.Semaphore(self.size)
        swept = tmpfiles.sweep_stale(tempfile.gettempdir(), f"modelport-{self.name}-")
        if swept:
            log.info("removed %d scratch folder(s) of killed %s processes", swept, self.name)
        workers = await asyncio.gather(*[self._spawn() for _ in range(min(warm, self.size))])
        self._idle.extend(workers)

    async def close(self) -> None:
        self._closed = True
        for t in list(self._spares):
            t.cancel()
        for w in self._idle:
            try:
                w.conn.send(("exit",))
            except OSError:
                pass
            await asyncio.to_thread(w.proc.join, 5)
            w.kill()
        self._idle.clear()

    @property
    def queued(self) -> int:
        return self._waiting

    async def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        alive_r, alive_w = self._ctx.Pipe(duplex=False)  # the worker sees EOF on alive_r once we are gone
        scratch = tempfile.mkdtemp(prefix=tmpfiles.prefix(f"modelport-{self.name}"))
        proc = self._ctx.Process(target=_child_main, args=(child, self.env, self.preload, scratch, alive_r),
                                 name=self.name, daemon=True)
        try:
            await asyncio.to_thread(proc.start)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            alive_w.close()
            raise
        finally:
            child.close()
            alive_r.close()
        w = _Worker(proc, parent, scratch=scratch, alive=alive_w)
        try:
            msg = await self._recv(w, timeout=600)
        except BaseException:  # cancelled while starting (the pool is closing): leave no process behind
            w.kill()
            raise
        if msg is None or msg[0] != "ready":
            w.kill()
            raise Internal(f"{self.name} process failed to start ({_describe_exit(proc.exitcode)})")
        return w

    def _spawn_spare(self) -> None:
        if self._closed:
            return

        async def spare():
            try:
                w = await self._spawn()
                if self._closed:
                    w.kill()
                else:
                    self._idle.append(w)
            except Exception:  # noqa: BLE001 - next job spawns on demand
                log.exception("could not pre-spawn a %s", self.name)

        t = asyncio.ensure_future(spare())
        self._spares.add(t)
        t.add_done_callback(self._spares.discard)

    async def _recv(self, w: _Worker, timeout: float | None):
        """Wait for one message from a worker; None on EOF (the process died)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        fd = w.conn.fileno()

        def readable():
            if not fut.done():
                fut.set_result(True)

        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            loop.remove_reader(fd)
        try:
            return w.conn.recv()
        except (EOFError, OSError):
            return None

    async def _acquire(self, on_queued: Callable[[int], None] | None) -> None:
        assert self._sem is not None, "WorkerPool.start() was not awaited"
        if self._sem.locked():
            self._waiting += 1
            if on_queued:
                on_queued(self._waiting)
            try:
                await self._sem.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._sem.acquire()

    async def run(self, func_path: str, kwargs: dict[str, Any], *, timeout: float,
                  on_progress: ProgressFn | None = None, on_queued: Callable[[int], None] | None = None) -> Any:
        """Run one job; raises the job's domain error, DeadlineExceeded or Internal on a crash.

        Cancelling the awaiting task (client cancel, deadline) kills the worker.
        """
        await self._acquire(on_queued)
        w: _Worker | None = None
        try:
            w = self._idle.pop() if self._idle else await self._spawn()
            w.conn.send(("run", func_path, kwargs))
            w.jobs += 1
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                msg = await self._recv(w, remaining)
                if msg is None:
                    await asyncio.to_thread(w.proc.join, 5)
                    raise _death_error(self.name, w.proc.exitcode)
                kind = msg[0]
                if kind == "progress" and on_progress:
                    on_progress(msg[1], msg[2], msg[3])
                elif kind == "result":
                    self._release(w)
                    w = None
                    return msg[1]
                elif kind == "error":
                    self._release(w)
                    w = None
                    raise error_for_status(msg[1], msg[2], msg[3], msg[4])
        except TimeoutError:
            raise DeadlineExceeded(
                f"the job ran longer than the per-job timeout of {timeout:g}s and was stopped "
                "(raise the service's job_timeout_s setting for big models)"
            ) from None
        except asyncio.CancelledError:
            log.info("job cancelled; killing its %s", self.name)
            raise
        finally:
            try:
                if w is not None:  # crashed, timed out or cancelled: the worker is not reusable
                    w.kill()
                    self._spawn_spare()
                    if self.on_worker_lost is not None:
                        await asyncio.shield(asyncio.to_thread(self._lost, w.proc.pid))
            finally:
                self._sem.release()

    def _lost(self, pid: int) -> None:
        try:
            self.on_worker_lost(pid)
        except Exception:  # noqa: BLE001 - cleanup is best effort; a restart sweeps the rest
            log.exception("cleaning up after %s %d failed", self.name, pid)

    def _release(self, w: _Worker) -> None:
        if self.max_jobs and w.jobs >= self.max_jobs:
            try:
                w.conn.send(("exit",))
            except OSError:
                pass
            w.proc.join(timeout=0)
            asyncio.get_running_loop().run_in_executor(None, w.kill)
            self._spawn_spare()
        else:
            self._idle.append(w)
