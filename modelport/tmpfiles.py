"""Temp names that say which process owns them, so a restarted service sweeps what a killed one left.

A temp entry (a blob being uploaded, a job's work folder in the store's ``tmp/``, a worker's scratch
folder) carries an owner tag ``o<pid>h<machine>`` in its name: ``pid`` is the *service* process
(its workers write under their service's pid: ``set_owner``), ``machine`` a short hash of this
host's name and boot id. ``stale(name)`` holds when the tag is this machine's and that process no
longer runs (gone, or a zombie): its entries can go at once, whatever their age. Entries of other
machines sharing a volume, or without a tag, are left to an age rule (``ArtifactStore.sweep_tmp``).

This module never imports grpc.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket

_TAG_RE = re.compile(r"-o(\d+)h([0-9a-f]{8})-")
_owner_pid: int | None = None
_machine: str | None = None


def machine() -> str:
    """8 hex characters naming this host and boot (pids of another host or an earlier boot never match)."""
    global _machine
    if _machine is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
        except OSError:
            boot = ""
        _machine = hashlib.sha256(f"{socket.gethostname()}|{boot}".encode()).hexdigest()[:8]
    return _machine


def set_owner(pid: int) -> None:
    """Tag this process's temp names with ``pid`` (a worker passes its service's pid)."""
    global _owner_pid
    _owner_pid = pid


def owner_pid() -> int:
    return _owner_pid or os.getpid()


def tag() -> str:
    return f"o{owner_pid()}h{machine()}"


def prefix(kind: str) -> str:
    """A temp-name prefix ``<kind>-o<pid>h<machine>-`` for ``tempfile.mkstemp``/``mkdtemp``; in a worker
    (whose owner is its service) ``<kind>-o<pid>h<machine>-w<worker pid>-``, so the service can remove what
    one killed worker left while the service itself goes on (``remove_worker_entries``)."""
    worker = f"w{os.getpid()}-" if owner_pid() != os.getpid() else ""
    return f"{kind}-{tag()}-{worker}"


def remove_worker_entries(folder: str | os.PathLike, worker_pid: int) -> int:
    """Remove the entries of ``folder`` that worker ``worker_pid`` of this service made (call it once that
    worker is dead: a job it ran was cancelled, timed out or crashed); returns how many went."""
    mark = f"-{tag()}-w{worker_pid}-"
    try:
        entries = [e for e in os.scandir(folder) if mark in e.name]
    except OSError:
        return 0
    return sum(remove_entry(entry) for entry in entries)


def remove_entry(entry: os.DirEntry) -> bool:
    """Remove one temp entry (a folder with what it holds, or a file); False when it is gone meanwhile or busy
    (the next sweep tries again)."""
    try:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    except OSError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this machine (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def stale(name: str) -> bool:
    """Whether a temp entry's owner (from its name) is a process of this machine that no longer runs."""
    m = _TAG_RE.search(name)
    if m is None or m.group(2) != machine():
        return False
    pid = int(m.group(1))
    return pid not in (os.getpid(), owner_pid()) and not pid_alive(pid)


def sweep_stale(folder: str | os.PathLike, startswith: str = "") -> int:
    """Remove the entries of ``folder`` (named ``startswith``…) whose owner process is gone; returns how many."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    return sum(remove_entry(entry) for entry in entries
               if entry.name.startswith(startswith) and stale(entry.name))
