"""Start the three services on this machine: ``modelport up`` (subprocesses) and ``--offline`` (in-process).

``Launcher`` runs ``python -m converter_svc|optimizer_svc|inference_svc`` as child processes
sharing one artifact store, waits for each to print ``"<name> SERVING on port N"`` (so port 0
works) and to answer grpc.health.v1 SERVING, and stops them with SIGTERM (they drain, exit 0).
``in_process_services`` starts the same services in this process on loopback port 0 for the
offline pipeline: the gateway is the composition root, so only it imports all three packages.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORTS = {"converter": 50051, "optimizer": 50052, "inference": 8001}
MODULES = {"converter": "converter_svc", "optimizer": "optimizer_svc", "inference": "inference_svc"}
READY_RE = re.compile(r"^(\w+) SERVING on port (\d+)\s*$")


class LaunchError(RuntimeError):
    """A service did not come up (exited, or was not SERVING in time); the message says which and why."""


@dataclass
class Child:
    """One service process and what it told us."""

    name: str
    proc: subprocess.Popen
    port: int | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    lines: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


# Resolved once in the parent: the child runs only one C call between fork and exec.
_PRCTL = _load_prctl()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child when the launching thread dies, so no service is orphaned."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Launcher:
    """Runs the three services as subprocesses with one shared store.

    ``ports`` maps service name -> port (0 = any free port). ``extra_args`` maps a service name
    to extra command-line flags. Service logs go to ``log_dir/<name>.log`` when given, else to
    this process's stderr.
    """

    def __init__(self, store: Path, ports: dict[str, int] | None = None, host: str = "127.0.0.1",
                 log_dir: Path | None = None, extra_args: dict[str, list[str]] | None = None,
                 env: dict[str, str] | None = None, python: str = sys.executable,
                 services: tuple[str, ...] = ("converter", "optimizer", "inference")):
        self.store = Path(store).resolve()
        self.ports = {**DEFAULT_PORTS, **(ports or {})}
        self.host = host
        self.log_dir = log_dir
        self.extra_args = extra_args or {}
        self.env = env
        self.python = python
        self.services = services
        self.children: dict[str, Child] = {}
        self._logs: list = []
        self._changed = threading.Event()

    def command(self, name: str) -> list[str]:
        return [self.python, "-m", MODULES[name], "--port", str(self.ports[name]), "--host", self.host,
                "--store", str(self.store), *self.extra_args.get(name, [])]

    def start(self, timeout: float = 120.0) -> dict[str, str]:
        """Start every service and wait until all are SERVING; returns name -> address."""
        self.store.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        try:
            for name in self.services:
                stderr = None
                if self.log_dir is not None:
                    self.log_dir.mkdir(parents=True, exist_ok=True)
                    stderr = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
                    self._logs.append(stderr)
                proc = subprocess.Popen(self.command(name), stdout=subprocess.PIPE, stderr=stderr,
                                        stdin=subprocess.DEVNULL, env=env, text=True, bufsize=1,
                                        start_new_session=True,
                                        preexec_fn=_die_with_parent if _PRCTL is not None else None)
                child = Child(name, proc)
                self.children[name] = child
                threading.Thread(target=self._read, args=(child,), daemon=True, name=f"{name}-stdout").start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.addresses()

    def _read(self, child: Child) -> None:
        for line in child.proc.stdout:
            line = line.rstrip("\n")
            child.lines.append(line)
            m = READY_RE.match(line)
            if m and m.group(1) == child.name:
                child.port = int(m.group(2))
                child.ready.set()
                self._changed.set()
            elif self.log_dir is None:
                print(f"[{child.name}] {line}", file=sys.stderr, flush=True)
        child.ready.set()  # stdout closed: the process is gone (start notices it exited)
        self._changed.set()

    def wait_ready(self, timeout: float) -> None:
        """Wait for every READY line (failing fast when any child exits), then confirm SERVING over
        grpc.health.v1."""
        deadline = time.monotonic() + timeout
        pending = dict(self.children)
        while pending:
            for name, child in list(pending.items()):
                if child.port is not None:
                    del pending[name]
                elif child.ready.is_set() or child.proc.poll() is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.proc.wait(10)
                    self._raise(child, f"exited with code {child.proc.returncode}")
            if not pending:
                break
            if time.monotonic() >= deadline:
                self._raise(next(iter(pending.values())), f"not SERVING after {timeout:.0f}s")
            self._changed.wait(0.5)
            self._changed.clear()
        for child in self.children.values():
            status = health_status(child.address, timeout=max(deadline - time.monotonic(), 1.0))
            if status != "SERVING":
                raise LaunchError(f"{child.name} printed its SERVING line but health says {status}")

    def _raise(self, child: Child, why: str) -> None:
        tail = "\n".join(child.lines[-10:])
        log = self.log_dir / f"{child.name}.log" if self.log_dir else None
        if log is not None and log.is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        where = f" (log: {log})" if log else " (its log is above)"
        raise LaunchError(f"{child.name} service {why}{where}" + (f"\n{tail}" if tail and log else ""))

    def addresses(self) -> dict[str, str]:
        return {name: c.address for name, c in self.children.items()}

    def pids(self) -> dict[str, int]:
        return {name: c.proc.pid for name, c in self.children.items()}

    def failed(self) -> Child | None:
        """The first child that exited on its own, if any."""
        return next((c for c in self.children.values() if c.proc.poll() is not None), None)

    def stop(self, timeout: float = 60.0) -> dict[str, int]:
        """SIGTERM every child (they drain and exit 0), SIGKILL after ``timeout``; returns exit codes."""
        for c in self.children.values():
            if c.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = {}
        for name, c in self.children.items():
            try:
                codes[name] = c.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                codes[name] = c.proc.wait()
        for f in self._logs:
            f.close()
        self._logs.clear()
        return codes

    def __enter__(self) -> Launcher:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def health_status(address: str, timeout: float = 5.0, tls=None, token: str | None = None) -> str:
    """The overall grpc.health.v1 status of a server, waiting up to ``timeout`` for it to answer."""
    from modelport.runtime.channels import make_channel

    ch = make_channel(address, tls=tls, token=token)
    try:
        grpc.channel_ready_future(ch).result(timeout=timeout)
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    except grpc.FutureTimeoutError:
        return "UNREACHABLE"
    except grpc.RpcError as e:
        return e.code().name
    finally:
        ch.close()


def run_up(launcher: Launcher, timeout: float = 180.0, on_ready=None) -> int:
    """``modelport up``: start, report addresses, block until SIGINT/SIGTERM or a child dies, stop.

    Returns 0 after a clean stop, 1 when a service failed.
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        launcher.start(timeout)
        if on_ready:
            on_ready(launcher.addresses())
        failed = None
        while not stop.wait(0.5):
            failed = launcher.failed()
            if failed:
                break
        codes = launcher.stop()
        if failed is not None:
            print(f"{failed.name} exited unexpectedly (code {failed.proc.returncode}); stopped the others",
                  file=sys.stderr)
            return 1
        bad = {n: c for n, c in codes.items() if c != 0}
        if bad:
            print(f"services exited with {bad}", file=sys.stderr)
            return 1
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def in_process_services(store: Path, host: str = "127.0.0.1") -> Iterator[dict[str, str]]:
    """The three services on loopback port 0 in this process (offline mode); yields Client kwargs."""
    from converter_svc.service import ConverterService
    from converter_svc.settings import ConverterSettings
    from inference_svc.service import InferenceService
    from inference_svc.settings import InferenceSettings
    from modelport.runtime.background import BackgroundServer
    from optimizer_svc.service import OptimizerService
    from optimizer_svc.settings import OptimizerSettings

    # TensorFlow's C++ banner lines would interleave with the CLI's progress bars (workers inherit this)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    started: dict[str, BackgroundServer] = {}
    try:
        for name, svc_cls, settings_cls in (("converter", ConverterService, ConverterSettings),
                                            ("optimizer", OptimizerService, OptimizerSettings),
                                            ("inference", InferenceService, InferenceSettings)):
            settings = settings_cls(host=host, port=0, store=store, grace_period_s=5.0)
            started[name] = BackgroundServer(svc_cls(settings)).start()
        yield {name: srv.address for name, srv in started.items()}
    finally:
        for srv in reversed(list(started.values())):
            srv.stop()
