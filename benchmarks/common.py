"""Shared helpers for every modelport benchmark: timing with warm-up and percentiles, a
concurrent throughput runner, machine/library info, result sections, service subprocesses.

Typical use in ``benchmarks/bench_<name>.py``::

    from benchmarks import common

    args = common.bench_args("what this measures").parse_args()
    t = common.time_callable(lambda: sess.run(None, feed), warmup=5, repeats=50)
    tp = common.measure_throughput(call, concurrency=4, max_calls=400, max_seconds=10)
    proc, address = common.start_service_subprocess("inference_svc")
    ...
    common.stop_service_subprocess(proc)
    common.write_section("name", markdown, data)

Nothing heavy (TensorFlow, onnxruntime) is imported here; library versions are read from
package metadata.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

#: Distributions whose versions every report names (read via importlib.metadata, no import).
LIBRARIES = (
    "tensorflow",
    "tf-keras",
    "keras",
    "onnxruntime",
    "tf2onnx",
    "onnx",
    "tensorflow-model-optimization",
    "grpcio",
    "protobuf",
    "numpy",
)

# ----------------------------------------------------------------------------------------------
# statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks
    (numpy's default ``linear`` method). Raises ValueError on an empty sequence."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac


@dataclass
class Timing:
    """Repeated measurements of one operation, in seconds."""

    samples: list[float]

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)

    def summary_ms(self) -> dict[str, float]:
        """Summary in milliseconds (what the JSON results hold)."""
        return {
            "n": self.n,
            "median_ms": self.median * 1e3,
            "min_ms": self.min * 1e3,
            "max_ms": self.max * 1e3,
            "mean_ms": self.mean * 1e3,
            "p50_ms": self.p50 * 1e3,
            "p90_ms": self.p90 * 1e3,
            "p99_ms": self.p99 * 1e3,
        }

    def to_dict(self, keep_samples: bool = False) -> dict:
        d: dict = self.summary_ms()
        if keep_samples:
            d["samples_ms"] = [s * 1e3 for s in self.samples]
        return d

    def fmt(self) -> str:
        """``median (min–max) ms`` for a table cell."""
        return f"{fmt_ms(self.median)} ({fmt_ms(self.min)}–{fmt_ms(self.max)})"


def time_callable(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float | None = None,
    min_repeats: int = 3,
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then up to ``repeats`` times timed.

    ``max_seconds`` bounds the timed phase (after at least ``min_repeats`` samples), so a slow
    case cannot blow the benchmark's time budget.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if max_seconds is not None and i + 1 >= min_repeats and time.perf_counter() - start > max_seconds:
            break
    return Timing(samples)


def repeat_runs(fn: Callable[[], float], runs: int = 3) -> dict[str, float]:
    """Run a whole measurement ``fn`` (returning one number, e.g. MB/s) ``runs`` times;
    return median with min/max."""
    vals = [fn() for _ in range(runs)]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}


@dataclass
class Throughput:
    """Result of ``measure_throughput``."""

    concurrency: int
    calls: int
    errors: int
    elapsed_s: float
    items_per_call: int
    latency: Timing
    first_error: str = ""

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def items_per_s(self) -> float:
        return self.calls_per_s * self.items_per_call

    def to_dict(self) -> dict:
        d = {
            "concurrency": self.concurrency,
            "calls": self.calls,
            "errors": self.errors,
            "elapsed_s": self.elapsed_s,
            "items_per_call": self.items_per_call,
            "calls_per_s": self.calls_per_s,
            "items_per_s": self.items_per_s,
            "first_error": self.first_error,
        }
        if self.latency.n:
            d["latency"] = self.latency.summary_ms()
        return d


def measure_throughput(
    fn: Callable[[], object],
    concurrency: int,
    *,
    max_calls: int = 1000,
    max_seconds: float = 10.0,
    warmup: int = 2,
    items_per_call: int = 1,
) -> Throughput:
    """Run ``fn`` from ``concurrency`` threads until ``max_calls`` calls in total finished or
    ``max_seconds`` passed, whichever first. Returns calls/s, items/s and per-call latency.

    Each thread first makes ``warmup`` untimed calls (connections, lazy init); the clock starts
    once all threads are warm. A failing call counts as an error (the first one is kept as
    text) and is not in the latency samples.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    lock = threading.Lock()
    latencies: list[float] = []
    state = {"issued": 0, "errors": 0, "first_error": ""}
    ready = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def take_ticket() -> bool:
        with lock:
            if state["issued"] >= max_calls or time.perf_counter() >= deadline[0]:
                return False
            state["issued"] += 1
            return True

    def worker() -> None:
        for _ in range(warmup):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a warm-up failure shows up again in the timed phase
                pass
        ready.wait()
        local: list[float] = []
        while take_ticket():
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - counted, reported, never hidden
                with lock:
                    state["errors"] += 1
                    if not state["first_error"]:
                        state["first_error"] = f"{type(e).__name__}: {e}"[:500]
                continue
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    deadline[0] = float("inf")
    ready.wait()
    start = time.perf_counter()
    deadline[0] = start + max_seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return Throughput(
        concurrency=concurrency,
        calls=len(latencies),
        errors=state["errors"],
        elapsed_s=elapsed,
        items_per_call=items_per_call,
        latency=Timing(latencies),
        first_error=state["first_error"],
    )


# ----------------------------------------------------------------------------------------------
# formatting


def fmt_ms(seconds: float) -> str:
    """Seconds as a short millisecond string (3 significant digits)."""
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(value: float | None) -> str:
    """A ratio like ``2.41×`` (or ``n/a``)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.2f}×"


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline`` or None when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    out = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# machine and library info


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str]:
    """Installed versions of ``names`` (``"not installed"`` when absent), without importing them."""
    from modelport.runtime.job_cache import tool_versions

    return tool_versions(tuple(names), absent="not installed")


def cpu_info(cpuinfo: str | None = None) -> dict[str, object]:
    """CPU model, logical core count and the SIMD flags that matter for inference, from
    /proc/cpuinfo (``cpuinfo`` may pass the text for testing)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model = ""
    flags: list[str] = []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = value.split()
    interesting = [
        f for f in flags
        if f in ("sse4_2", "avx", "avx2", "fma", "f16c")
        or f.startswith("avx512")
        or f.startswith("amx")
        or f in ("avx_vnni", "avx512_vnni", "avx512_bf16", "avx512_fp16")
    ]
    return {
        "model": model or platform.processor() or "unknown",
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "simd_flags": interesting,
    }


def memory_total_bytes() -> int | None:
    """Physical memory (MemTotal from /proc/meminfo)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def system_info() -> dict[str, object]:
    """Machine, OS, Python and library versions for a report header."""
    mem = memory_total_bytes()
    return {
        "cpu": cpu_info(),
        "memory_gib": round(mem / 2**30, 1) if mem else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libraries": library_versions(),
        "git_commit": git_commit(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_1_5_15": load_average(),
    }


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: on a shared machine, how busy it was while we measured."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_commit() -> str:
    """Short hash of HEAD (plus ``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        return head or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def system_info_markdown(info: dict | None = None) -> str:
    """The machine/library block of a report, as markdown."""
    info = info or system_info()
    cpu = info["cpu"]
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    return "\n".join([
        f"- CPU: {cpu['model']} — {cpu['usable_cores']} usable of {cpu['logical_cores']} logical cores; "
        f"SIMD flags: {', '.join(cpu['simd_flags']) or 'none found'}",
        f"- Memory: {info['memory_gib']} GiB; OS: {info['os']}; Python {info['python']}",
        f"- Libraries: {libs}",
        f"- Commit: {info['git_commit']}; measured {info['date_utc']}"
        + (f"; load average (1/5/15 min) {'/'.join(str(x) for x in info['load_avg_1_5_15'])}"
           if info.get("load_avg_1_5_15") else ""),
    ])


# ----------------------------------------------------------------------------------------------
# command line and results


def command_line(argv: Sequence[str] | None = None) -> str:
    """The exact command that ran this benchmark, as a user would type it from the repo root.

    ``python -m benchmarks.bench_x --quick`` sets ``sys.argv[0]`` to the module's file path;
    that is turned back into ``-m benchmarks.bench_x``.
    """
    argv = list(sys.argv if argv is None else argv)
    exe = sys.executable
    try:
        exe = os.path.relpath(exe, REPO_ROOT) if Path(exe).is_relative_to(REPO_ROOT) else exe
    except ValueError:
        pass
    if not argv:
        return exe
    first = argv[0]
    p = Path(first)
    if p.suffix == ".py":
        try:
            rel = p.resolve().relative_to(REPO_ROOT)
            module = ".".join(rel.with_suffix("").parts)
            head = [exe, "-m", module]
        except ValueError:
            head = [exe, first]
    else:
        head = [first]
    return shlex.join(head + argv[1:])


def bench_args(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark has (``--quick``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (well under a minute) for smoke checks")
    return p


def write_section(name: str, markdown: str, data: dict, results_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``results/<name>.md`` (a section starting with ``## ``) and ``results/<name>.json``.

    The JSON gets ``system`` info added unless the caller put it there already.
    """
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ValueError(f"section name {name!r} must be letters, digits, '_' or '-'")
    if not markdown.lstrip().startswith("## "):
        raise ValueError("a results section must start with a '## ' heading")
    out = Path(results_dir or RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(data)
    data.setdefault("system", system_info())
    md_path, json_path = out / f"{name}.md", out / f"{name}.json"
    md_path.write_text(markdown.rstrip() + "\n")
    json_path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return md_path, json_path


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def pyplot():
    """matplotlib.pyplot with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, name: str, results_dir: Path | None = None) -> Path:
    """Save a figure as ``results/<name>.png`` (tight, 110 dpi) and close it."""
    out = Path(results_dir or RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# services in their own processes

_SERVING_RE = re.compile(r"(\w+) SERVING on port (\d+)")


@dataclass
class ServiceProcess:
    """Bookkeeping for a service started by ``start_service_subprocess``."""

    module: str
    proc: subprocess.Popen
    address: str
    store: Path
    log_path: Path
    stdout_lines: list[str] = field(default_factory=list)
    owned: list[Path] = field(default_factory=list)
    """Temp folders made for this service (its store, its log folder), removed when it is stopped."""


_PROCS: dict[int, ServiceProcess] = {}


def start_service_subprocess(
    module: str,
    *args: str,
    store: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
    log_dir: str | os.PathLike | None = None,
) -> tuple[subprocess.Popen, str]:
    """Launch ``python -m <module> --port 0 --host 127.0.0.1 --store DIR *args`` and wait for
    the ``"<name> SERVING on port N"`` line on its stdout. Returns ``(proc, "127.0.0.1:N")``.

    ``module`` is ``converter_svc``, ``optimizer_svc`` or ``inference_svc``. Without ``store`` a
    fresh temp folder is used. The service's stderr (its logs) goes to a file
    (``service_info(proc).log_path``) so a full pipe can never stall it. Raises RuntimeError
    (with the log tail) if it exits or does not serve within ``timeout`` seconds.
    """
    store_path = Path(store) if store is not None else Path(tempfile.mkdtemp(prefix=f"bench-{module}-store-"))
    log_root = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="bench-logs-"))
    log_root.mkdir(parents=True, exist_ok=True)
    log_path = log_root / f"{module}-{int(time.time() * 1000)}.log"
    cmd = [sys.executable, "-m", module, "--port", "0", "--host", "127.0.0.1", "--store", str(store_path), *args]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    log_file = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log_file, env=child_env,
                            text=True, bufsize=1)
    log_file.close()
    info = ServiceProcess(module, proc, "", store_path, log_path,
                          owned=[p for p, given in ((store_path, store), (log_root, log_dir)) if given is None])
    found = threading.Event()

    def pump() -> None:  # keeps reading stdout for the process's lifetime so it never blocks
        for line in proc.stdout:
            info.stdout_lines.append(line.rstrip("\n"))
            m = _SERVING_RE.search(line)
            if m and not found.is_set():
                info.address = f"127.0.0.1:{m.group(2)}"
                found.set()
        found.set()

    threading.Thread(target=pump, name=f"{module}-stdout", daemon=True).start()
    found.wait(timeout)
    if not info.address:
        rc = proc.poll()
        if rc is None:
            _terminate(proc)
        tail = _tail(log_path)
        for p in info.owned:
            shutil.rmtree(p, ignore_errors=True)
        state = f"exited with code {rc}" if rc is not None else f"did not print SERVING within {timeout:.0f}s"
        raise RuntimeError(f"{shlex.join(cmd)} {state}; log tail:\n{tail}")
    _PROCS[proc.pid] = info
    return proc, info.address


def service_info(proc: subprocess.Popen) -> ServiceProcess:
    """The bookkeeping (address, store, log path) of a process from ``start_service_subprocess``."""
    return _PROCS[proc.pid]


def stop_service_subprocess(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM (graceful drain), then SIGKILL after ``timeout``; the temp store and log folder made for it are
    removed (a benchmark reads what it needs before stopping the service). Returns the exit code."""
    rc = _terminate(proc, timeout)
    info = _PROCS.pop(proc.pid, None)
    for p in info.owned if info is not None else ():
        if rc != 0 and p == info.log_path.parent:  # a service that did not exit cleanly keeps its log
            print(f"{info.module} exited with {rc}; its log: {info.log_path}", file=sys.stderr)
            continue
        shutil.rmtree(p, ignore_errors=True)
    return rc


def _terminate(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def wait_model_ready(address: str, model: str, timeout: float = 180.0, proc: subprocess.Popen | None = None,
                     log: Path | None = None) -> None:
    """Poll KServe ModelReady on ``address`` until ``model`` answers ready; RuntimeError otherwise (at once when
    ``proc``, the server process, exits; with ``log``'s tail when given)."""
    import grpc

    from modelport.kserve.v2 import grpc_service_pb2 as pb
    from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc

    end = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        while time.monotonic() < end and (proc is None or proc.poll() is None):
            try:
                if stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=2).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    who = f"{proc.args} (exit {proc.poll()})" if proc is not None else "the server"
    raise RuntimeError(f"{who} did not serve {model} on {address} within {timeout:.0f}s"
                       + (f"; log tail:\n{_tail(log)}" if log is not None else ""))


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class RssSampler:
    """Samples a process's resident memory (psutil) in a thread: ``before``, ``peak``, ``after``.

    with RssSampler(pid, interval=0.02) as s:
        ...          # the work
    s.before, s.peak, s.after, s.samples
    """

    def __init__(self, pid: int, interval: float = 0.02):
        import psutil

        self._p = psutil.Process(pid)
        self.interval = interval
        self.before = self._p.memory_info().rss
        self.peak = self.before
        self.after = self.before
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self._p.memory_info().rss
            except Exception:  # noqa: BLE001 - the process went away: stop sampling
                return
            self.samples.append((time.perf_counter() - self._t0, rss))
            self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> RssSampler:
        self._stop.set()
        self._thread.join()
        self.after = self._p.memory_info().rss
        self.peak = max(self.peak, self.after)
        return self

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
