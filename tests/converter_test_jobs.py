"""Test-only converter job functions (never used in production): a job that hangs after reporting its pid."""

from __future__ import annotations

import os
import threading


def hang(progress, **kwargs):
    """Report the worker pid as a progress event, then block until killed or cancelled."""
    progress("loading", 0.1, f"pid={os.getpid()}")
    threading.Event().wait()
