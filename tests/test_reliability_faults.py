"""Faults, fast (issue #16): kill -9 mid-deploy and resume, kill -9 an inference replica under load,
a store on a full disk. Real service processes on port 0, a real tmpfs; the scenarios are those of
``benchmarks/reliability_faults.py`` at small sizes. Cheap unit checks of the pieces come first.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks import reliability_faults as rf
from modelport import tmpfiles
from modelport.deploy import DeployReport, StageReport
from modelport.errors import ResourceExhausted
from modelport.store import ArtifactStore, disk_full_error


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- units -------------------------------------------------------------------------------------
def test_sweep_at_start_removes_a_dead_owners_temp_entries_at_once_and_keeps_live_ones(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    gone, me = dead_pid(), os.getppid()  # the parent (pytest's launcher or shell) is alive
    dead_dir = store.tmp_dir / f"convert-o{gone}h{tmpfiles.machine()}-abc"
    (dead_dir / "sub").mkdir(parents=True)
    (dead_dir / "sub" / "model.onnx").write_bytes(b"x" * 10)
    dead_file = store.tmp_dir / f"upload-o{gone}h{tmpfiles.machine()}-xyz"
    dead_file.write_bytes(b"partial")
    live = store.tmp_dir / f"upload-o{me}h{tmpfiles.machine()}-live"
    live.write_bytes(b"in flight")
    other_host = store.tmp_dir / f"upload-o{gone}h00000000-remote"
    other_host.write_bytes(b"another machine's")
    untagged = store.tmp_dir / "upload-old-style"
    untagged.write_bytes(b"fresh")
    assert store.sweep_tmp() == 2
    assert sorted(p.name for p in store.tmp_dir.iterdir()) == sorted([live.name, other_host.name, untagged.name])
    os.utime(other_host, (0, 0))  # the age rule still covers what no tag can vouch for
    assert store.sweep_tmp() == 1 and not other_host.exists()


def test_own_temp_names_carry_this_process_and_are_never_stale(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    work = store.mkdtemp("convert")
    assert f"-o{os.getpid()}h{tmpfiles.machine()}-" in work.name
    assert not tmpfiles.stale(work.name)
    assert store.sweep_tmp() == 0 and work.is_dir()
    assert not tmpfiles.pid_alive(dead_pid())


def test_disk_full_anywhere_in_a_jobs_error_is_resource_exhausted_naming_where_and_the_fix():
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/store/tmp/convert-x/model.onnx")
        except OSError as inner:
            raise ValueError("saving the model failed") from inner
    except ValueError as e:
        err = disk_full_error(e)
    assert isinstance(err, ResourceExhausted) and err.details == {"reason": "disk_full"}
    assert err.message.startswith("the artifact store's disk is full (No space left on device) while running the job")
    assert "nothing was stored" in err.message and "Free space on the store's volume" in err.message
    scratch = disk_full_error(OSError(errno.EDQUOT, "quota", "/tmp/modelport-w/f"), scratch_root="/tmp/modelport-w")
    assert scratch is not None and "worker's temp folder is full" in scratch.message and "TMPDIR" in scratch.message
    library = disk_full_error(RuntimeError("[ONNXRuntimeError] : 1 : FAIL : write: No space left on device"))
    assert library is not None and library.status == "RESOURCE_EXHAUSTED"
    assert disk_full_error(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full_error(ValueError("bad shape")) is None


def test_deploy_report_and_cli_table_name_the_stages_that_came_from_cache():
    report = DeployReport(name="m", model="m.onnx", ok=True, version="2", endpoint="127.0.0.1:1")
    report.stages = [StageReport("upload", "ok", cached=True), StageReport("convert", "ok", cached=True),
                     StageReport("optimize", "ok"), StageReport("load", "ok")]
    assert report.cached_stages() == ["upload", "convert"]
    assert [s["cached"] for s in report.to_dict()["stages"]] == [True, True, False, False]
    from gateway.cli.render import print_report

    console = Console(record=True, width=120)
    print_report(console, report)
    text = console.export_text()
    assert text.count("ok (cached)") == 2
    assert "from cache (done by an earlier run): upload, convert" in text


# ---- real processes ------------------------------------------------------------------------------
def test_kill9_converter_then_optimizer_mid_deploy_then_rerun_resumes_from_cache(tmp_path):
    cr = rf.crash_and_resume(tmp_path, hidden=64, args=["--warm-workers", "0"], source="keras")
    # each kill interrupted its deploy, at the stage whose service died
    assert cr.failures == [("convert", "UNAVAILABLE"), ("optimize", "UNAVAILABLE")]
    assert (cr.deploys.sent, cr.deploys.ok, dict(cr.deploys.errors), cr.deploys.lost) == (4, 2, {"UNAVAILABLE": 2}, 0)
    assert cr.orphans == [], "workers outlived their SIGKILLed service"
    # the first rerun redoes only what was killed; the second takes every job step from the caches
    assert cr.cached == [["upload", "convert"], ["upload", "convert", "optimize"]]
    first, second = ({s["stage"]: s for s in r["stages"]} for r in cr.reports)
    assert first["convert"]["detail"].startswith("cached result;") and "already stored" in first["upload"]["detail"]
    assert first["optimize"]["status"] == "ok" and not first["optimize"]["cached"]
    assert second["optimize"]["detail"].startswith("cached result;")
    assert [r["version"] for r in cr.reports] == ["1", "2"] and all(r["ok"] for r in cr.reports)
    # each restart swept what the killed job left (its work folder, unless its dying worker removed it itself:
    # both happen, by timing); nothing of a dead process was left after the restarts, nothing at the end
    assert set(cr.left_by_kill) == {"converter", "optimizer"} and all(len(v) <= 1 for v in cr.left_by_kill.values())
    assert cr.swept == [f"{name}: removed 1 stale temp entry from the store's tmp/"
                        for name, left in sorted(cr.left_by_kill.items()) if left], cr
    assert cr.leftovers_after_restart == []
    assert cr.leftovers_at_end == []


def test_kill9_one_of_two_inference_replicas_under_load_loses_no_request(tmp_path):
    requests = 600
    tally = rf.inference_failover(tmp_path, requests=requests, threads=8, kill_at=0.3, hidden=64)
    assert (tally.sent, tally.ok, dict(tally.errors), tally.wrong, tally.lost) == (requests, requests, {}, 0, 0)
    # after the kill the survivor took everything (the requests in flight at the kill may have run on either);
    # before it round robin shares the load only once both subchannels are connected, so no split is asserted
    assert requests * 0.7 - 8 <= tally.notes["survivor_served"] <= requests


def test_full_disk_upload_and_job_are_resource_exhausted_leave_nothing_and_recover(tmp_path):
    # needs a real tmpfs: without root/CAP_SYS_ADMIN rf.small_disk raises MountError and this test fails
    fd = rf.full_disk(tmp_path, disk_mib=4, hidden=512, upload_mib=3)
    # upload ok, [disk filled] upload RESOURCE_EXHAUSTED, job RESOURCE_EXHAUSTED, [space freed] upload ok, job ok
    assert (fd.attempts.sent, fd.attempts.ok, dict(fd.attempts.errors)) == (5, 3, {"RESOURCE_EXHAUSTED": 2})
    assert {k: (t.sent, t.ok, dict(t.errors)) for k, t in fd.by_operation.items()} == {
        "upload": (3, 2, {"RESOURCE_EXHAUSTED": 1}), "optimize job (fp16)": (2, 1, {"RESOURCE_EXHAUSTED": 1})}
    upload, job = fd.messages
    for msg, what in ((upload, "receiving an artifact"), (job, "running the job")):
        assert msg.startswith(f"the artifact store's disk is full (No space left on device) while {what}")
        assert "nothing was stored" in msg and "Free space on the store's volume" in msg
        assert str(tmp_path) not in msg  # no internal path reaches the client
    assert fd.partial == [], "a failure left a store entry or a temp file"
    assert fd.blobs_after_failures == fd.blobs_before
    assert fd.serving_while_full == ["SERVING", "SERVING"]
    assert not Path(tmp_path / "disk").is_mount()


def test_small_disk_fails_loudly_when_it_cannot_mount(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no mount binary: what a machine without the tool sees
    (tmp_path / "mount").write_text("#!/bin/sh\necho 'mount: only root can do that' >&2\nexit 1\n")
    (tmp_path / "mount").chmod(0o755)
    with pytest.raises(rf.MountError, match="cannot mount a 1 MiB tmpfs .* only root can do that; run as root"):
        with rf.small_disk(tmp_path / "d", 1):
            pass


def test_job_cache_on_a_full_disk_keeps_the_answer_and_leaves_no_temp(tmp_path):
    from modelport.runtime.job_cache import JobCache

    with rf.small_disk(tmp_path / "disk", 1) as disk:
        cache = JobCache(disk / "store")
        assert cache.put("a" * 64, b"small") is True
        filler = rf.fill(disk, leave_bytes=0)
        assert cache.put("b" * 64, b"x" * (256 << 10)) is False  # not cached; the job's answer stands
        assert sorted(p.name for p in cache.dir.iterdir()) == ["a" * 64 + ".pb"]
        filler.unlink()
        assert cache.put("b" * 64, b"x" * (256 << 10)) is True and cache.get("b" * 64) == b"x" * (256 << 10)
