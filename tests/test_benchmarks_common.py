"""Fast tests of the benchmark helpers (statistics, throughput runner, results, info)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

# `benchmarks` is a top-level folder, not an installed package: `python -m pytest` finds it via
# the working directory, the `pytest` script does not.
from benchmarks import common


@pytest.mark.parametrize("q", [0, 1, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q):
    rng = np.random.default_rng(7)
    values = rng.exponential(3.0, size=101).tolist()
    assert common.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_interpolates_and_rejects_bad_input():
    assert common.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert common.percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError, match="empty"):
        common.percentile([], 50)
    with pytest.raises(ValueError, match="0..100"):
        common.percentile([1.0], 101)


def test_timing_summary_in_ms():
    t = common.Timing([0.001, 0.002, 0.003, 0.010])
    s = t.summary_ms()
    assert s["n"] == 4
    assert s["median_ms"] == pytest.approx(2.5)
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(10.0)
    assert s["p99_ms"] == pytest.approx(float(np.percentile([1, 2, 3, 10], 99)))
    assert t.fmt() == "2.50 (1.00–10.0)"


def test_time_callable_warms_up_then_times_repeats():
    calls = []
    t = common.time_callable(lambda: calls.append(1), warmup=4, repeats=7)
    assert len(calls) == 11
    assert t.n == 7


def test_measure_throughput_stops_at_max_calls_and_counts_errors():
    counter = {"n": 0}
    lock = threading.Lock()

    def fn():
        with lock:
            counter["n"] += 1
            n = counter["n"]
        if n % 10 == 0:
            raise RuntimeError("boom")

    r = common.measure_throughput(fn, concurrency=3, max_calls=60, max_seconds=30, warmup=0)
    assert r.calls + r.errors == 60
    assert r.errors == 6
    assert r.first_error == "RuntimeError: boom"
    assert r.latency.n == r.calls
    assert r.to_dict()["calls_per_s"] > 0


def test_measure_throughput_stops_at_time_bound():
    ev = threading.Event()
    r = common.measure_throughput(lambda: ev.wait(0.01), concurrency=2, max_calls=10**9, max_seconds=0.2, warmup=0)
    assert 0.2 <= r.elapsed_s < 2
    assert r.calls > 0


def test_ratio_and_formatting():
    assert common.ratio(10, 4) == 2.5
    assert common.ratio(1, 0) is None and common.ratio(None, 1) is None
    assert common.fmt_ratio(2.5) == "2.50×" and common.fmt_ratio(None) == "n/a"
    assert common.fmt_ms(0.0123) == "12.3"
    table = common.markdown_table(["a", "b"], [[1, "x|y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]


def test_command_line_turns_module_path_back_into_dash_m():
    argv = [str(common.REPO_ROOT / "benchmarks" / "bench_serving.py"), "--quick"]
    assert common.command_line(argv).endswith("-m benchmarks.bench_serving --quick")


def test_cpu_info_parses_model_and_simd_flags():
    text = "processor : 0\nmodel name : Test CPU 3000\nflags : fpu sse4_2 avx avx2 fma avx512f avx512_vnni\n"
    info = common.cpu_info(text)
    assert info["model"] == "Test CPU 3000"
    assert info["simd_flags"] == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni"]


def test_library_versions_reads_metadata_without_importing():
    v = common.library_versions(["numpy", "surely-not-a-package-xyz"])
    assert v["numpy"] == np.__version__
    assert v["surely-not-a-package-xyz"] == "not installed"


def test_write_section_writes_md_and_json(tmp_path):
    md, js = common.write_section("demo", "## Demo\n\nhello", {"x": 1.5}, results_dir=tmp_path)
    assert md.read_text() == "## Demo\n\nhello\n"
    data = json.loads(js.read_text())
    assert data["x"] == 1.5 and "libraries" in data["system"]
    with pytest.raises(ValueError, match="'## ' heading"):
        common.write_section("demo", "# wrong level", {}, results_dir=tmp_path)
    with pytest.raises(ValueError, match="section name"):
        common.write_section("../evil", "## x", {}, results_dir=tmp_path)


def test_artifact_bench_file_is_streamed_and_hashed(tmp_path):
    from benchmarks import bench_artifacts
    from modelport.store import sha256_file

    path = tmp_path / "a.bin"
    digest = bench_artifacts.make_file(path, 3 * bench_artifacts.BLOCK + 5)
    assert path.stat().st_size == 3 * bench_artifacts.BLOCK + 5
    assert digest == sha256_file(path)
    blocks = path.read_bytes()
    # every block differs (a counter is mixed in), so nothing can be deduplicated or compressed away
    b = bench_artifacts.BLOCK
    assert blocks[:b] != blocks[b:2 * b]
    assert bench_artifacts.size_label(2 << 30) == "2 GiB" and bench_artifacts.size_label(256 << 20) == "256 MiB"


def test_rss_sampler_sees_this_process(tmp_path):
    import os

    with common.RssSampler(os.getpid(), interval=0.005) as s:
        block = bytearray(64 << 20)  # touch 64 MiB so RSS visibly grows
        for i in range(0, len(block), 4096):
            block[i] = 1
    # stop() takes a final reading while the block is still alive, so the peak must include it
    assert s.peak - s.before >= 32 << 20
    assert s.after >= s.before + (32 << 20) and len(s.samples) >= 1
    del block
