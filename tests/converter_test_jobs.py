"""Test-only converter job functions (never used in production): a job that hangs after reporting its pid."""

from __future__ import annotations

import os
import threading


def hang(progress, **kwargs):
    """Report the worker pid as a progress event, then block until killed or cancelled."""
    progress("loading", 0.1, f"pid={os.getpid()}")
    threading.Event().wait()


def crash_sniff(progress, **kwargs):
    """A sniff whose parser crashes the process (SIGSEGV), as a hostile file could make a C parser do."""
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


def hang_sniff(progress, **kwargs):
    """A sniff whose parser never returns."""
    threading.Event().wait()
