"""Run every ``benchmarks/bench_*.py`` in its own subprocess with a time bound, then assemble
``BENCHMARKS.md`` (``make bench`` runs this).

    .venv/bin/python -m benchmarks.run_all            # full suite (< 30 min on 2 cores)
    .venv/bin/python -m benchmarks.run_all --quick    # every benchmark in --quick mode
    .venv/bin/python -m benchmarks.run_all --only artifacts serving

A benchmark that fails or overruns its bound is reported as such (its log tail is kept under
``benchmarks/results/logs/``) and the suite carries on with the next one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common, report

BENCH_DIR = Path(__file__).resolve().parent

#: Per-benchmark time bounds in seconds for a full run (``--quick`` uses QUICK_TIMEOUT).
#: The sum stays under the 30-minute budget of ``make bench`` on 2 cores.
TIMEOUTS = {
    "artifacts": 180,
    "convert": 300,
    "optimize": 420,
    "optimize_attention": 600,
    "serving": 480,
    "e2e": 420,
    "external_data": 420,
    "llm": 900,
    "llm_trained": 360,  # bench_llm --trained: trains a small GPT-2 for 400 steps, quantizes it (~2 min)
    "breadth": 900,
    "large": 1500,  # multi-GB: builds, converts, quantizes and serves 0.55-2.34 GB models (--quick: VGG-16 only;
    # the 6.15 GB t28 runs on its own: --models t28)
    "large_techniques": 1500,  # graph/fp16/int8-static/int8-dynamic on the 1.33 and 2.34 GB transformers
    "reliability": 900,  # its own bound is 15 minutes on 2 cores (soak, jobs, slow clients, faults)
}
#: Extra arguments of a full run: the breadth matrix (~45 models, two converters each) takes well over an
#: hour on 2 cores, so a suite run refreshes its stalest rows for 12 minutes and keeps the others.
FULL_ARGS = {"breadth": ["--budget", "720", "--timeout", "300"]}
DEFAULT_TIMEOUT = 240
QUICK_TIMEOUT = 120
#: ``--quick`` bounds of the benchmarks whose quick mode needs longer than QUICK_TIMEOUT.
QUICK_TIMEOUTS = {
    "breadth": 180,  # MobileNetV2 and an LSTM, two converters each, TensorFlow imported per process
    "reliability": 360,  # short soaks, plus reliability_faults' crash/resume and full-disk runs (about 2.5 min)
    "llm_trained": 180,
    "large_techniques": 420,  # --quick: every technique on the 0.73 GB transformer
}
#: Second runs of a benchmark with other arguments, each an entry of its own (record, log, time bound, section):
#: name -> (the bench_<X>.py it runs, full-run arguments, --quick arguments).
VARIANTS = {
    # weight-only quality on a trained small GPT-2 (its own section, llm_trained; 400 training steps, ~2 min)
    "llm_trained": ("llm", ["--trained"], ["--trained", "--train-steps", "20"]),
}
#: The whole suite's bound: a benchmark only gets the time that is left of it.
SUITE_BUDGET_S = 29 * 60
#: Run order: cheap and independent first, so a late overrun costs the least.
RUN_ORDER = ["artifacts", "convert", "optimize", "serving", "e2e", "llm", "llm_trained"]


def discover(bench_dir: Path = BENCH_DIR) -> list[str]:
    """Names ``X`` of every ``bench_X.py``, and of the VARIANTS of those, in run order (known ones first,
    then alphabetical)."""
    names = sorted(p.stem[len("bench_"):] for p in bench_dir.glob("bench_*.py"))
    names += sorted(v for v, (bench, _, _) in VARIANTS.items() if bench in names)
    known = [n for n in RUN_ORDER if n in names]
    return known + [n for n in names if n not in known]


def bench_command(name: str, quick: bool) -> tuple[str, list[str]]:
    """The ``bench_<X>`` module an entry runs and its arguments (a VARIANT's own, else --quick or FULL_ARGS)."""
    if name in VARIANTS:
        bench, full, quick_args = VARIANTS[name]
        return bench, list(quick_args if quick else full)
    return name, ["--quick"] if quick else list(FULL_ARGS.get(name, []))


def run_one(name: str, quick: bool, timeout: float, log_dir: Path, package: str = "benchmarks",
            cwd: Path | None = None) -> dict:
    """Run ``python -m benchmarks.bench_<name> [--quick]`` in its own process group; kill the
    group (the benchmark and any service it started) on timeout. Returns a status record."""
    bench, extra = bench_command(name, quick)
    cmd = [sys.executable, "-m", f"{package}.bench_{bench}", *extra]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    start = time.time()
    load_before = common.load_average()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd or common.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = proc.wait()
    elapsed = time.time() - start
    status = "ok" if rc == 0 else ("timeout" if timed_out else "failed")
    produced = sorted(
        p.name for p in common.RESULTS_DIR.glob(f"{name}*.md") if p.stat().st_mtime >= start - 1
    ) if common.RESULTS_DIR.is_dir() else []
    rec = {
        "name": name,
        "command": common.command_line([str(BENCH_DIR / f"bench_{bench}.py"), *extra]),
        "status": status,
        "returncode": rc,
        "elapsed_s": round(elapsed, 1),
        "timeout_s": round(timeout, 1),
        "sections_written": produced,
        "load_avg_before": load_before,
        "load_avg_after": common.load_average(),
        "log": str(log_path.relative_to(common.REPO_ROOT)) if log_path.is_relative_to(common.REPO_ROOT)
        else str(log_path),
    }
    if status != "ok":
        rec["log_tail"] = _tail(log_path)
    return rec


def _kill_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the benchmark's own process group (it and the services it started, which then
    drain), wait up to ``grace`` seconds for the whole group to exit, then SIGKILL what is left."""
    pgid = proc.pid  # start_new_session=True made the benchmark its group's leader
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so it does not keep the group alive as a zombie
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def merge_runs(previous: dict, partial: dict) -> dict:
    """A partial run (``--only``/``--skip``) replaces its benchmarks' records in the previous
    run's list and keeps the others, so the report still lists every section's origin."""
    if previous.get("quick") != partial.get("quick"):
        return partial  # never mix quick and full records
    fresh = {r["name"]: {**r, "rerun": partial["command"]} for r in partial["benchmarks"]}
    merged = [fresh.pop(r["name"], r) for r in previous.get("benchmarks", [])] + list(fresh.values())
    return {**previous, "benchmarks": merged,
            "reruns": previous.get("reruns", []) + [{"command": partial["command"],
                                                      "started_utc": partial["started_utc"]}]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run every modelport benchmark and write BENCHMARKS.md.")
    p.add_argument("--quick", action="store_true", help="run each benchmark with --quick")
    p.add_argument("--only", nargs="*", default=None, metavar="NAME", help="run only these (e.g. artifacts e2e)")
    p.add_argument("--skip", nargs="*", default=[], metavar="NAME", help="do not run these")
    p.add_argument("--budget", type=float, default=SUITE_BUDGET_S, help="whole-suite time bound in seconds")
    p.add_argument("--timeout", nargs="*", default=[], metavar="NAME=SECONDS",
                   help="override a benchmark's time bound, e.g. --timeout optimize=600")
    p.add_argument("--no-report", action="store_true", help="do not rewrite BENCHMARKS.md")
    args = p.parse_args(argv)

    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            p.error(f"no benchmarks/bench_<name>.py for {unknown}; available: {names}")
        names = [n for n in names if n in args.only]
    names = [n for n in names if n not in set(args.skip)]
    overrides = {}
    for item in args.timeout:
        name, _, sec = item.partition("=")
        try:
            overrides[name] = float(sec)
        except ValueError:
            p.error(f"--timeout expects NAME=SECONDS (e.g. optimize=600), got {item!r}")

    suite_cmd = common.command_line()
    suite_start = time.time()
    records = []
    for name in names:
        left = args.budget - (time.time() - suite_start)
        bound = overrides.get(name, QUICK_TIMEOUTS.get(name, QUICK_TIMEOUT) if args.quick
                              else TIMEOUTS.get(name, DEFAULT_TIMEOUT))
        if left < 30:
            records.append({"name": name, "status": "skipped", "elapsed_s": 0.0,
                            "reason": f"suite budget of {args.budget:.0f}s used up"})
            print(f"[run_all] {name}: skipped (suite budget used up)", flush=True)
            continue
        timeout = min(bound, left)
        print(f"[run_all] {name}: running (bound {timeout:.0f}s)", flush=True)
        rec = run_one(name, args.quick, timeout, common.RESULTS_DIR / "logs")
        records.append(rec)
        print(f"[run_all] {name}: {rec['status']} in {rec['elapsed_s']:.0f}s "
              f"-> {', '.join(rec['sections_written']) or 'no section written'}", flush=True)
        if rec["status"] != "ok":
            print(rec.get("log_tail", ""), flush=True)

    run = {
        "command": suite_cmd,
        "quick": args.quick,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(suite_start)),
        "elapsed_s": round(time.time() - suite_start, 1),
        "benchmarks": records,
    }
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    run_path = common.RESULTS_DIR / "run_all.json"
    if (args.only or args.skip) and run_path.is_file():
        run = merge_runs(json.loads(run_path.read_text()), run)
    run_path.write_text(json.dumps(run, indent=2) + "\n")
    if not args.no_report:
        path = report.write_report(run)
        print(f"[run_all] wrote {path.relative_to(common.REPO_ROOT)} ({run['elapsed_s']:.0f}s total)", flush=True)
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
