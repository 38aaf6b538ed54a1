"""Job functions run inside WorkerPool subprocesses by tests/test_workers.py (test-only)."""

from __future__ import annotations

import os
import signal
import threading

from modelport.errors import InvalidArgument


def echo(progress, value):
    progress("working", 0.5, "half way")
    return {"value": value, "pid": os.getpid()}


def fail(progress):
    raise InvalidArgument("dataset array 'x' has shape (3,), expected (N, 8, 8, 1)", {"array": "x"})


def crash(progress):
    progress("working", 0.1, "about to crash")
    os.kill(os.getpid(), signal.SIGSEGV)


def killed(progress):
    """Dies the way the kernel's out-of-memory killer ends a process: SIGKILL, no chance to report."""
    progress("working", 0.1, "about to be killed")
    os.kill(os.getpid(), signal.SIGKILL)


def unexpected(progress):
    raise KeyError("internal detail")


def hang(progress, marker):
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    threading.Event().wait()


def env(progress, name):
    return os.environ.get(name)


def write_in_cwd(progress):
    with open("stray.tmp", "w") as f:
        f.write("x")
    return os.getcwd()


def hang_in_tmp(progress, marker):
    """Write a temp file (in the worker's scratch folder), report pid and its path, then hang."""
    import tempfile

    fd, path = tempfile.mkstemp()
    os.close(fd)
    with open(marker, "w") as f:
        f.write(f"{os.getpid()}\n{path}")
    threading.Event().wait()


def hang_in_store(progress, store_root, marker):
    """Make a job work folder in the store's tmp/ (as the optimizer does), report pid and its path, then hang."""
    from modelport.store import ArtifactStore

    work = ArtifactStore(store_root).mkdtemp("optimize")
    (work / "candidate.onnx").write_bytes(b"x" * 1024)
    with open(marker, "w") as f:
        f.write(f"{os.getpid()}\n{work}")
    threading.Event().wait()
