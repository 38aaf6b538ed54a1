"""``modelport up``: three SERVING services from one command, stopped cleanly by SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import psutil
import pytest

from gateway.launcher import Launcher, LaunchError, health_status
from modelport.client import Client

# These tests run no jobs: skip the converter/optimizer warm TensorFlow workers (seconds of startup each).
NO_WARM = {**os.environ, "MODELPORT_CONVERTER_WARM_WORKERS": "0", "MODELPORT_OPTIMIZER_WARM_WORKERS": "0"}


def _read_until(proc: subprocess.Popen, pattern: str, lines: list[str], timeout: float = 180.0) -> re.Match:
    """Read proc.stdout lines (in a thread, bounded by ``timeout``) until one matches."""
    found: list[re.Match] = []
    done = threading.Event()

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(pattern, line)
            if m:
                found.append(m)
                break
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(timeout), f"no line matching {pattern!r} in {timeout}s: {lines}"
    assert found, f"stdout closed before {pattern!r}: {''.join(lines)}"
    return found[0]


def test_up_serves_three_services_and_stops_on_sigterm(tmp_path):
    cmd = [sys.executable, "-m", "gateway.cli", "up", "--store", str(tmp_path / "store"),
           "--converter-port", "0", "--optimizer-port", "0", "--inference-port", "0", "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**NO_WARM, "COLUMNS": "200"})
    lines: list[str] = []
    try:
        m = _read_until(proc, r"all services SERVING converter=(\S+) optimizer=(\S+) inference=(\S+)", lines)
        addrs = dict(zip(("converter", "optimizer", "inference"), m.groups(), strict=True))
        with Client(**addrs) as client:
            statuses = client.status()
        assert [(s.service, s.status) for s in statuses] == [
            ("converter", "SERVING"), ("optimizer", "SERVING"), ("inference", "SERVING")]
        children = psutil.Process(proc.pid).children(recursive=False)
        assert len(children) == 3
        mods = sorted(c.cmdline()[2] for c in children)
        assert mods == ["converter_svc", "inference_svc", "optimizer_svc"]
        # one shared store for all three
        assert all(str(tmp_path / "store") in c.cmdline() for c in children)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=90)
        rest = proc.stdout.read()
        assert rc == 0, proc.stderr.read()
        assert "modelport up: stopped" in rest
        # rc 0 also means every service exited 0 (run_up returns 1 otherwise); none is left running
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive
        assert all(health_status(a, timeout=1.0) == "UNREACHABLE" for a in addrs.values())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_launcher_port_offset_layout_and_failure_reason(tmp_path):
    # a service that cannot start is reported by name with its exit code and log tail
    bad = Launcher(tmp_path / "store", ports={"converter": 0, "optimizer": 0, "inference": 0},
                   extra_args={"optimizer": ["--no-such-flag"]}, log_dir=tmp_path / "logs", env=NO_WARM)
    with pytest.raises(LaunchError, match=r"optimizer service exited with code 2"):
        bad.start(timeout=120)
    assert all(c.proc.poll() is not None for c in bad.children.values())  # the others were stopped
    assert "unrecognized arguments: --no-such-flag" in (tmp_path / "logs" / "optimizer.log").read_text()
    cmd = Launcher(tmp_path / "s", ports={"inference": 8101}).command("inference")
    assert cmd[1:] == ["-m", "inference_svc", "--port", "8101", "--host", "127.0.0.1", "--store",
                       str((tmp_path / "s").resolve())]


def test_services_do_not_outlive_a_killed_launcher(tmp_path):
    """SIGKILL gives `modelport up` no chance to clean up: the kernel (PDEATHSIG) stops the services."""
    cmd = [sys.executable, "-m", "gateway.cli", "up", "--store", str(tmp_path / "store"), "--converter-port", "0",
           "--optimizer-port", "0", "--inference-port", "0", "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path,
                            env=NO_WARM)
    try:
        _read_until(proc, r"all services SERVING", [])
        children = psutil.Process(proc.pid).children()
        assert len(children) == 3
    finally:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive
