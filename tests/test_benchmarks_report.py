"""Fast tests of the report assembly and the suite runner's discovery/time bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import common, report, run_all

INFO = {
    "cpu": {"model": "Test CPU", "logical_cores": 2, "usable_cores": 2, "simd_flags": ["avx2"]},
    "memory_gib": 24.0, "os": "Linux", "python": "3.11.7",
    "libraries": {"onnxruntime": "1.32.0"}, "git_commit": "abc1234", "date_utc": "2026-01-01 00:00 UTC",
}


def _results(tmp_path: Path) -> Path:
    d = tmp_path / "benchmarks" / "results"
    d.mkdir(parents=True)
    (d / "artifacts.md").write_text("## Artifact transfer\n\n![rss](artifacts_rss.png)\n")
    (d / "serving.md").write_text("## Serving\n\ntext\n")
    (d / "serving_batching.md").write_text("## Serving with batching\n")
    (d / "e2e.md").write_text("## End to end\n\n![x](benchmarks/results/e2e_latency.png)\n")
    (d / "zzz_custom.md").write_text("## Custom\n")
    for png in ["artifacts_rss.png", "e2e_latency.png", "serving_concurrency.png",
                "serving_batching_delay.png", "lonely.png"]:
        (d / png).write_bytes(b"\x89PNG")
    return d


def test_sections_follow_the_fixed_order(tmp_path):
    d = _results(tmp_path)
    names = [p.stem for p in report.ordered_sections(d)]
    assert names == ["e2e", "serving", "serving_batching", "artifacts", "zzz_custom"]


def test_report_has_header_commands_sections_and_every_plot(tmp_path, monkeypatch):
    d = _results(tmp_path)
    monkeypatch.setattr(common, "REPO_ROOT", tmp_path)
    run = {
        "command": ".venv/bin/python -m benchmarks.run_all", "quick": False,
        "started_utc": "2026-01-01 00:00:00 UTC", "elapsed_s": 600.0,
        "benchmarks": [
            {"name": "artifacts", "command": ".venv/bin/python -m benchmarks.bench_artifacts", "status": "ok",
             "elapsed_s": 61.0, "sections_written": ["artifacts.md"], "load_avg_before": [0.5, 0.4, 0.3]},
            {"name": "serving", "command": ".venv/bin/python -m benchmarks.bench_serving", "status": "timeout",
             "elapsed_s": 300.0, "sections_written": [], "log": "benchmarks/results/logs/serving.log",
             "log_tail": "Traceback: stuck"},
        ],
    }
    text = report.build_report(run, results_dir=d, info=INFO)
    assert text.startswith("# modelport benchmarks")
    assert "Test CPU" in text and "onnxruntime 1.32.0" in text
    assert "`.venv/bin/python -m benchmarks.run_all`" in text or ".venv/bin/python -m benchmarks.run_all" in text
    assert "| artifacts | `.venv/bin/python -m benchmarks.bench_artifacts` | ok | 61 s | 0.5 | artifacts.md |" in text
    assert "**timeout**" in text and "Traceback: stuck" in text
    # sections in order, after the header
    order = [text.index(h) for h in ["## End to end", "## Serving\n", "## Serving with batching",
                                     "## Artifact transfer", "## Custom"]]
    assert order == sorted(order)
    # relative image links now resolve from the repo root; repo-relative ones are kept
    assert "![rss](benchmarks/results/artifacts_rss.png)" in text
    assert text.count("benchmarks/results/e2e_latency.png") == 1
    # unreferenced plots attach to the section with the longest matching name, others at the end
    batching = text.index("## Serving with batching")
    assert text.index("benchmarks/results/serving_batching_delay.png") > batching
    assert text.index("benchmarks/results/serving_concurrency.png") < batching
    assert text.index("## Other plots") < text.index("benchmarks/results/lonely.png")
    assert "- [Artifact transfer](#artifact-transfer)" in text


def test_report_without_results_says_how_to_make_them(tmp_path, monkeypatch):
    d = tmp_path / "empty"
    d.mkdir()
    monkeypatch.setattr(common, "REPO_ROOT", tmp_path)
    text = report.build_report(None, results_dir=d, info=INFO)
    assert "Run `make bench`" in text


def test_discover_runs_known_benchmarks_first(tmp_path):
    for n in ["zeta", "e2e", "artifacts", "serving"]:
        (tmp_path / f"bench_{n}.py").write_text("")
    (tmp_path / "common.py").write_text("")
    assert run_all.discover(tmp_path) == ["artifacts", "serving", "e2e", "zeta"]


def test_make_bench_runs_bench_llm_trained_as_its_own_entry(tmp_path, monkeypatch):
    """bench_llm --trained (weight-only quality on a trained GPT-2, section llm_trained) runs right after bench_llm,
    with its own record, log and bound; --quick trains for 20 steps."""
    for n in ["llm", "e2e"]:
        (tmp_path / f"bench_{n}.py").write_text("")
    assert run_all.discover(tmp_path) == ["e2e", "llm", "llm_trained"]
    assert "llm_trained" in run_all.discover()  # the repository's own benchmarks
    assert run_all.bench_command("llm_trained", quick=False) == ("llm", ["--trained"])
    assert run_all.bench_command("llm_trained", quick=True) == ("llm", ["--trained", "--train-steps", "20"])
    assert run_all.bench_command("breadth", quick=False) == ("breadth", ["--budget", "720", "--timeout", "300"])
    assert run_all.bench_command("llm", quick=True) == ("llm", ["--quick"])

    _fake_package(tmp_path, "import sys\nprint('argv', sys.argv[1:])\n")
    monkeypatch.setitem(run_all.VARIANTS, "x_trained", ("x", ["--trained"], ["--trained", "--short"]))
    rec = run_all.run_one("x_trained", False, 60, tmp_path / "logs", package="fakebench", cwd=tmp_path)
    assert rec["status"] == "ok" and rec["command"].endswith("bench_x --trained"), rec
    assert "argv ['--trained']" in (tmp_path / "logs" / "x_trained.log").read_text()


def test_full_suite_bounds_fit_the_30_minute_budget():
    assert run_all.SUITE_BUDGET_S <= 30 * 60
    assert all(t <= run_all.SUITE_BUDGET_S for t in run_all.TIMEOUTS.values())


@pytest.mark.parametrize("title,anchor", [("Artifact transfer (2 GiB)", "artifact-transfer-2-gib"),
                                          ("End-to-end: Keras vs ONNX", "end-to-end-keras-vs-onnx")])
def test_anchor_matches_github(title, anchor):
    assert report._anchor(title) == anchor


def test_plot_helpers_write_pngs(tmp_path):
    from benchmarks import plots

    name = plots.grouped_bars("t_bars", ["a", "b"], {"x": [1.0, 2.0], "y": [0.5, 3.0]}, ylabel="ratio (×)",
                              title="t", baseline=1.0, upper_err={"x": [1.5, 2.5]}, log=True, results_dir=tmp_path)
    assert name == "t_bars.png"
    assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    name = plots.lines("t_lines", [1, 4, 16], {"base": [1, 2, 3], "served": [1, 3, 5]}, xlabel="threads",
                       ylabel="req/s", title="t", baseline_series="base", logx=True, results_dir=tmp_path)
    assert (tmp_path / name).stat().st_size > 1000


def _fake_package(tmp_path, body: str) -> Path:
    pkg = tmp_path / "fakebench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bench_x.py").write_text(body)
    return pkg


def test_run_one_kills_an_overrunning_benchmark_and_its_children(tmp_path):
    import os

    import psutil

    pidfile = tmp_path / "child.pid"
    _fake_package(tmp_path, f"""
import subprocess, sys, threading
child = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait()"])
open({str(pidfile)!r}, "w").write(str(child.pid))
print("started", flush=True)
threading.Event().wait()
""")
    rec = run_all.run_one("x", False, 3, tmp_path / "logs", package="fakebench", cwd=tmp_path)
    assert rec["status"] == "timeout"
    assert rec["returncode"] != 0
    assert "started" in (tmp_path / "logs" / "x.log").read_text()
    child = int(pidfile.read_text())
    # the whole process group went down with it: nothing left running
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert os.getpgid(os.getpid()) != child


def test_run_one_reports_a_failing_benchmark_with_its_log_tail(tmp_path):
    _fake_package(tmp_path, "raise SystemExit('bench_x broke: no model')\n")
    rec = run_all.run_one("x", True, 60, tmp_path / "logs", package="fakebench", cwd=tmp_path)
    assert rec["status"] == "failed" and rec["returncode"] == 1
    assert "bench_x broke: no model" in rec["log_tail"]
    assert rec["command"].endswith("--quick")


def test_partial_rerun_replaces_only_its_records():
    full = {"command": "run_all", "quick": False, "started_utc": "t0", "elapsed_s": 100,
            "benchmarks": [{"name": "artifacts", "status": "ok"}, {"name": "e2e", "status": "timeout"}]}
    part = {"command": "run_all --only e2e", "quick": False, "started_utc": "t1", "elapsed_s": 10,
            "benchmarks": [{"name": "e2e", "status": "ok"}]}
    merged = run_all.merge_runs(full, part)
    assert [(r["name"], r["status"]) for r in merged["benchmarks"]] == [("artifacts", "ok"), ("e2e", "ok")]
    assert merged["benchmarks"][1]["rerun"] == "run_all --only e2e"
    assert merged["reruns"] == [{"command": "run_all --only e2e", "started_utc": "t1"}]
    assert merged["command"] == "run_all"
    # quick records never mix with full ones
    assert run_all.merge_runs(full, {**part, "quick": True})["benchmarks"] == part["benchmarks"]


def test_splice_replaces_one_section_and_keeps_hand_written_notes():
    from benchmarks.report import splice_section

    text = ("# modelport benchmarks\n\nA hand-written note.\n\n## Contents\n\n- [A](#a)\n- [B](#b)\n\n"
            "## A\n\nold a\n\n## B\n\nold b\n")
    out = splice_section(text, "## A\n\nnew a\n")
    assert out == text.replace("old a", "new a")
    out = splice_section(out, "## B\n\nnew b\n")
    assert out.endswith("## B\n\nnew b\n") and "A hand-written note." in out and "old" not in out
    out = splice_section(out, "## C d\n\nc\n")  # a new section: appended, with its contents line
    assert out.endswith("## C d\n\nc\n") and "- [B](#b)\n- [C d](#c-d)\n\n## A" in out
