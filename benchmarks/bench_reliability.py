"""Reliability under load: a long inference soak, a jobs soak and slow or vanishing clients, every request counted.

* **Inference soak** — ``python -m inference_svc`` with two models (an MLP 64-256-256-10 with
  ``dynamic_batching`` in its config.pbtxt, and a 64-128-10 "digits" MLP without batching) takes at least
  200,000 requests at concurrency 32 from the unmodified ``tritonclient`` (``benchmarks/peers/soak_client.py``
  in the tritonclient venv): 32 lanes with one request in flight each, mixing unary ``ModelInfer``,
  ``ModelStreamInfer`` streams and system shared memory, on both models. Midway, version 2 of the batched model
  is written to the repository and ``RepositoryModelLoad`` hot-swaps it while traffic runs. Every request is
  counted (sent, OK — the answer equals the expected output of the version that answered —, errors by gRPC
  code, lost = sent without an answer); p50/p99 latency per 10 % slice of the requests; the server's RSS and
  open file descriptors are sampled every 0.5 s.
* **Jobs soak** — real converter and optimizer services (``--worker-max-jobs 0``: one worker runs every job, so
  a per-job leak in the worker would show; the default is a fresh worker per job) run 50 jobs for real (small
  ONNX models, each with new options or a new model so each is a new job key: ONNX→ONNX conversions at
  opsets 13–18 with different parity seeds, ``graph``/``int8-dynamic``/``fp16`` optimizations) and then 500
  repeats answered from the job cache; counts as above, store size, service and worker RSS and open fds.
* **Slow and vanishing clients** — against a fresh inference service: clients (separate processes) that stop
  reading a ``Download`` of a 128 MiB artifact, one that stops reading a ``ModelStreamInfer`` stream of 256 KiB
  answers while sending thousands of requests, and one that dies (SIGKILL) in the middle of an ``Upload``. The
  server's RSS during the stall, whether it still answers others, and what is released once the client is gone
  (temp blob removed, file descriptors back, no further work for the dead stream).
* **Crash and resume, full disk** — ``benchmarks/reliability_faults.py`` (``run(workdir)``), unless
  ``--skip-faults``.

    make bench-reliability                                       # tritonclient's venv, then the full run
    .venv/bin/python -m benchmarks.bench_reliability             # full (7 min measured with load ~13 on 2 cores)
    .venv/bin/python -m benchmarks.bench_reliability --quick     # 20,000 requests, 66 jobs, faults (~4 min)
    .venv/bin/python -m benchmarks.bench_reliability --skip-faults --only soak slow   # parts

The tritonclient venv is found beside the repository (``.venv-triton``) or through MODELPORT_TRITON_PYTHON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.models import mlp_onnx

PEERS_DIR = Path(__file__).resolve().parent / "peers"
MLP_SIZES = (64, 256, 256, 10)
DIGITS_SIZES = (64, 128, 10)
BIG_WIDTH = 65536  # the "big" model's output per request: 1 x 65536 float32 = 256 KiB
MiB = 1 << 20
#: 32 lanes, one request in flight each: (mode, model, lanes)
LANES = (("unary", "mlp", 8), ("unary", "digits", 6), ("stream", "mlp", 5), ("stream", "digits", 5),
         ("shm", "mlp", 4), ("shm", "digits", 4))
GOAL_RSS_GROWTH = 0.05


# --- models ---------------------------------------------------------------------------------------


def big_onnx(path: Path) -> Path:
    """x [N, 64] -> y [N, 65536] (Tile): small requests, 256 KiB answers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    reps = numpy_helper.from_array(np.asarray([1, BIG_WIDTH // 64], np.int64), "reps")
    graph = helper.make_graph([helper.make_node("Tile", ["x", "reps"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", BIG_WIDTH])], [reps])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


# --- process sampling -----------------------------------------------------------------------------

def tree_stats(pid: int) -> dict:
    """RSS and open fds of a process and, separately, of its children (job workers)."""
    import psutil

    p = psutil.Process(pid)
    out = {"rss": p.memory_info().rss, "fds": p.num_fds(), "children_rss": 0, "children_fds": 0, "children": 0}
    for c in p.children(recursive=True):
        try:
            out["children_rss"] += c.memory_info().rss
            out["children_fds"] += c.num_fds()
            out["children"] += 1
        except psutil.NoSuchProcess:
            pass
    return out


class Sampler:
    """Samples ``tree_stats(pid)`` and a progress value every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, progress=lambda: 0, interval: float = 0.5):
        self.pid, self.progress, self.interval = pid, progress, interval
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> dict:
        try:
            s = {"t": time.monotonic() - self._t0, "progress": self.progress(), **tree_stats(self.pid)}
        except Exception:  # noqa: BLE001 - the process went away
            return {}
        self.samples.append(s)
        return s

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def growth(values: list[float], ref: float) -> float | None:
    return (values[-1] - ref) / ref if values and ref else None


# --- gRPC helpers (modelport's stubs) ---------------------------------------------------------------

def kserve_stub(address: str):
    import grpc

    from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
    from modelport.runtime.channels import channel_options

    ch = grpc.insecure_channel(address, options=channel_options())
    return ch, pb_grpc.GRPCInferenceServiceStub(ch)


def model_summary(address: str, model: str) -> dict:
    from modelport.kserve.v2 import grpc_service_pb2 as pb

    ch, stub = kserve_stub(address)
    try:
        cfg = stub.ModelConfig(pb.ModelConfigRequest(name=model)).config
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats
    finally:
        ch.close()
    return {"max_batch_size": cfg.max_batch_size, "dynamic_batching": cfg.HasField("dynamic_batching"),
            "execution": cfg.parameters["execution"].string_value if "execution" in cfg.parameters else "",
            "versions": {s.version: {"success": s.inference_stats.success.count, "fail": s.inference_stats.fail.count,
                                     "inference_count": s.inference_count, "execution_count": s.execution_count}
                         for s in stats}}


def infer_once(address: str, model: str, width: int = 64) -> str:
    """One ModelInfer with modelport's codec: "OK" or the error code."""
    import grpc

    from modelport.kserve import codec

    ch, stub = kserve_stub(address)
    try:
        stub.ModelInfer(codec.make_infer_request(model, {"x": np.ones((1, width), np.float32)}), timeout=30)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name
    finally:
        ch.close()


def triton_python() -> Path:
    value = os.environ.get("MODELPORT_TRITON_PYTHON")
    path = Path(value) if value else common.REPO_ROOT / ".venv-triton" / "bin" / "python"
    if not path.is_file():
        raise RuntimeError("no tritonclient venv: run `make triton-venv` or set MODELPORT_TRITON_PYTHON")
    return path


# --- inference soak -------------------------------------------------------------------------------

def inference_soak(work: Path, total: int, max_seconds: float) -> dict:
    repo = work / "soak-repo"
    mlp_onnx(repo / "mlp" / "1" / "model.onnx", MLP_SIZES, seed=0)
    (repo / "mlp" / "config.pbtxt").write_text(
        'name: "mlp"\nbackend: "onnxruntime"\nmax_batch_size: 32\ndynamic_batching { }\n')
    mlp_onnx(repo / "digits" / "1" / "model.onnx", DIGITS_SIZES, seed=1)
    v2 = mlp_onnx(work / "mlp_v2.onnx", MLP_SIZES, seed=2)
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    expected = {"mlp": {"1": run_onnx(repo / "mlp" / "1" / "model.onnx", x).ravel().tolist(),
                        "2": run_onnx(v2, x).ravel().tolist()},
                "digits": {"1": run_onnx(repo / "digits" / "1" / "model.onnx", x).ravel().tolist()}}
    proc, address = common.start_service_subprocess("inference_svc", "--repository", str(repo), log_dir=work,
                                                    store=work / "soak-store")
    lanes = [{"mode": m, "model": model} for m, model, n in LANES for _ in range(n)]
    out = work / "soak-records.npz"
    cfg = {"url": address, "total": total, "max_seconds": max_seconds, "timeout_s": 60, "input": "x",
           "shape": [1, 64], "x": x.ravel().tolist(), "output": "y", "output_shape": [1, 10], "lanes": lanes,
           "expected": expected, "out": str(out)}
    (work / "soak.json").write_text(json.dumps(cfg))
    progress = {"done": 0}
    swap: dict = {}
    final: dict = {}
    try:
        common.wait_model_ready(address, "mlp")
        common.wait_model_ready(address, "digits")
        before = {m: model_summary(address, m) for m in ("mlp", "digits")}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        client = subprocess.Popen([str(triton_python()), str(PEERS_DIR / "soak_client.py"), str(work / "soak.json")],
                                  stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        with Sampler(proc.pid, lambda: progress["done"]) as sampler:
            for line in client.stdout:
                msg = json.loads(line)
                if msg.get("final"):
                    final = msg
                    continue
                progress["done"] = msg["done"]
                if not swap and msg["done"] >= total // 2:
                    swap = hot_swap(address, repo, v2, msg["done"])
                    print(f"  hot swap to mlp v2 at request {msg['done']}: {swap['seconds']:.2f}s", flush=True)
                if int(msg["t"]) % 15 == 0 and msg["t"] - int(msg["t"]) < 0.5:
                    print(f"  soak: {msg['done']} answered after {msg['t']:.0f}s", flush=True)
            client.wait()
        after = {m: model_summary(address, m) for m in ("mlp", "digits")}
    finally:
        exit_code = common.stop_service_subprocess(proc)
    if client.returncode != 0 or not final:
        raise RuntimeError(f"soak client failed (exit {client.returncode})")
    rec = dict(np.load(out))
    return summarize_soak(final, rec, sampler.samples, swap, before, after, lanes, exit_code)


def hot_swap(address: str, repo: Path, v2: Path, at: int) -> dict:
    """Write version 2 of mlp into the repository and RepositoryModelLoad it while traffic runs."""
    from modelport.kserve.v2 import grpc_service_pb2 as pb

    (repo / "mlp" / "2").mkdir(parents=True, exist_ok=True)
    shutil.copy(v2, repo / "mlp" / "2" / "model.onnx")
    ch, stub = kserve_stub(address)
    t0 = time.perf_counter()
    try:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"), timeout=120)
        error = ""
    except Exception as e:  # noqa: BLE001 - reported
        error = str(e)[:300]
    finally:
        ch.close()
    return {"at_request": at, "seconds": time.perf_counter() - t0, "error": error}


def summarize_soak(final: dict, rec: dict, samples: list[dict], swap: dict, before: dict, after: dict,
                   lanes: list[dict], exit_code: int) -> dict:
    sent = final["sent"]
    order = np.argsort(rec["t_send"], kind="stable")
    ok = rec["outcome"] == 0
    model_of = [lane["model"] for lane in lanes]
    slices = []
    for k in range(10):
        idx = order[k * sent // 10:(k + 1) * sent // 10]
        if not len(idx):
            continue
        lat = rec["latency"][idx][ok[idx]]
        t0, t1 = rec["t_send"][idx[0]], rec["t_send"][idx[-1]] + rec["latency"][idx[-1]]
        lo, hi = k * sent // 10, (k + 1) * sent // 10
        in_slice = [s for s in samples if lo <= s["progress"] < hi] or [min(samples, key=lambda s: abs(s["progress"] - lo))]
        slices.append({"slice": k + 1, "requests": int(len(idx)), "ok": int(ok[idx].sum()),
                       "rate": len(idx) / max(t1 - t0, 1e-9),
                       "p50_s": float(np.percentile(lat, 50)) if len(lat) else None,
                       "p99_s": float(np.percentile(lat, 99)) if len(lat) else None,
                       "rss_mb": float(np.median([s["rss"] for s in in_slice])) / MiB,
                       "rss_max_mb": max(s["rss"] for s in in_slice) / MiB,
                       "fds_max": max(s["fds"] for s in in_slice),
                       "versions": dict(Counter(f"{model_of[ln]} v{v}" for ln, v in
                                                zip(rec["lane"][idx][ok[idx]].tolist(),
                                                    rec["version"][idx][ok[idx]].tolist(), strict=True)))})
    modes = {}
    for n, lane in enumerate(lanes):
        key = f"{lane['mode']} {lane['model']}"
        m = modes.setdefault(key, {"lanes": 0, "idx": []})
        m["lanes"] += 1
        m["idx"].append(np.nonzero(rec["lane"] == n)[0])
    per_mode = {}
    for key, m in modes.items():
        idx = np.concatenate(m["idx"])
        lat = rec["latency"][idx][ok[idx]]
        per_mode[key] = {"lanes": m["lanes"], "sent": int(len(idx)), "ok": int(ok[idx].sum()),
                         "p50_s": float(np.percentile(lat, 50)) if len(lat) else None,
                         "p99_s": float(np.percentile(lat, 99)) if len(lat) else None}
    server_check = {}
    for model, ver in (("digits", "1"), ("mlp", "2")):
        client_ok = int(sum(((rec["version"] == int(ver)) & ok & (rec["lane"] == n)).sum()
                            for n, lane in enumerate(lanes) if lane["model"] == model))
        b4 = before[model]["versions"].get(ver, {}).get("success", 0)
        now = after[model]["versions"].get(ver, {}).get("success")
        server_check[f"{model} v{ver}"] = {"client_ok": client_ok, "server_success": None if now is None else now - b4}
    warm = slices[1]["rss_mb"] if len(slices) > 1 else slices[0]["rss_mb"]
    last = slices[-1]["rss_mb"]
    # After warm-up and before the lanes start closing their connections and regions at the very end.
    after_warm = [s for s in samples if sent // 10 <= s["progress"] < sent * 99 // 100]
    return {"sent": sent, "outcomes": final["outcomes"], "lost": final["lost"], "elapsed_s": final["elapsed_s"],
            "first_errors": final["first_errors"], "client_cpu_s": final["cpu_s"],
            "rate": sent / final["elapsed_s"], "slices": slices, "modes": per_mode, "swap": swap,
            "rss_warm_mb": warm, "rss_end_mb": last, "rss_growth": (last - warm) / warm,
            "rss_peak_after_warm_mb": max(s["rss"] for s in after_warm) / MiB if after_warm else None,
            "fds_after_warm": [min(s["fds"] for s in after_warm), max(s["fds"] for s in after_warm)]
            if after_warm else None,
            "server_before": before, "server_after": after, "server_exit": exit_code, "server_check": server_check,
            "rss_series": [(round(s["t"], 1), s["progress"], s["rss"], s["fds"]) for s in samples]}


# --- jobs soak ------------------------------------------------------------------------------------

@dataclass
class JobCounts:
    sent: int = 0
    ok: int = 0
    cached: int = 0
    errors: Counter = field(default_factory=Counter)
    mismatched: int = 0
    first_errors: dict = field(default_factory=dict)
    seconds: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to_dict(self) -> dict:
        return {"sent": self.sent, "ok": self.ok, "cached": self.cached, "errors": dict(self.errors),
                "wrong_result": self.mismatched, "lost": self.sent - self.ok - sum(self.errors.values())
                - self.mismatched, "first_errors": self.first_errors,
                "p50_s": float(np.median(self.seconds)) if self.seconds else None,
                "p99_s": float(np.percentile(self.seconds, 99)) if self.seconds else None}


def run_job(call, request, field_name: str, counts: JobCounts, expect_digest: str | None) -> str | None:
    """One job: iterate its events; count OK (with its cached flag), an error by code, or a wrong result."""
    import grpc

    with counts.lock:
        counts.sent += 1
    t0 = time.perf_counter()
    result, cached, code, detail = None, False, "", ""
    try:
        for ev in call(request, timeout=600):
            which = ev.WhichOneof("outcome")
            if which == field_name:
                result, cached = getattr(ev, field_name), ev.cached
            elif which == "error":
                code, detail = ev.error.code, ev.error.message
    except grpc.RpcError as e:
        code, detail = code or e.code().name, detail or (e.details() or "")
    except Exception as e:  # noqa: BLE001 - counted
        code, detail = type(e).__name__, str(e)
    with counts.lock:
        counts.seconds.append(time.perf_counter() - t0)
        if result is None:
            code = code or "NO_RESULT"
            counts.errors[code] += 1
            counts.first_errors.setdefault(code, detail[:300])
            return None
        digest = result.artifact.digest
        if expect_digest is not None and digest != expect_digest:
            counts.mismatched += 1
            return None
        counts.ok += 1
        counts.cached += int(cached)
        return digest


def du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def jobs_soak(work: Path, real: int, cached: int) -> dict:
    import grpc

    from modelport.runtime.channels import channel_options
    from modelport.store import ArtifactStore
    from modelport.v1 import converter_pb2, converter_pb2_grpc, optimizer_pb2, optimizer_pb2_grpc

    conv_store, opt_store = work / "conv-store", work / "opt-store"
    models = work / "job-models"
    n_conv, n_opt = real // 2, real - real // 2
    # Models go straight into each store (as an upload would put them).
    conv_ref = ArtifactStore(conv_store).put_onnx(mlp_onnx(models / "conv.onnx", DIGITS_SIZES, seed=10))
    opt_refs = [ArtifactStore(opt_store).put_onnx(mlp_onnx(models / f"opt{k}.onnx", DIGITS_SIZES, seed=100 + k))
                for k in range(n_opt)]
    conv, conv_addr = common.start_service_subprocess("converter_svc", "--worker-max-jobs", "0", store=conv_store,
                                                      log_dir=work)
    opt, opt_addr = common.start_service_subprocess("optimizer_svc", "--worker-max-jobs", "0",
                                                    "--int8-search-s", "0", store=opt_store, log_dir=work)
    from modelport.runtime.artifacts import to_ref

    conv_ch = grpc.insecure_channel(conv_addr, options=channel_options())
    opt_ch = grpc.insecure_channel(opt_addr, options=channel_options())
    convert = converter_pb2_grpc.ConverterStub(conv_ch).Convert
    optimize = optimizer_pb2_grpc.OptimizerStub(opt_ch).Optimize
    conv_reqs = [converter_pb2.ConvertRequest(source=to_ref(conv_ref), target_format="onnx", opset=13 + k % 6,
                                              parity=converter_pb2.ParityOptions(seed=k, num_samples=8))
                 for k in range(n_conv)]
    techniques = ("graph", "int8-dynamic", "fp16")
    opt_reqs = [optimizer_pb2.OptimizeRequest(model=to_ref(opt_refs[k]), techniques=[techniques[k % 3]],
                                              threads=1) for k in range(n_opt)]
    counts = {"real": JobCounts(), "cached": JobCounts()}
    digests: dict[tuple[str, int], str | None] = {}
    checkpoints = []
    series: dict[str, list[dict]] = {"c": [], "o": []}

    def checkpoint(label: str) -> dict:
        c = {"label": label, "converter": tree_stats(conv.pid), "optimizer": tree_stats(opt.pid),
             "conv_store": du(conv_store), "opt_store": du(opt_store),
             "tmp_entries": len(os.listdir(conv_store / "tmp")) + len(os.listdir(opt_store / "tmp"))}
        checkpoints.append(c)
        return c

    t0 = time.perf_counter()
    try:
        checkpoint("start")

        def real_side(kind: str):
            reqs, call, name = (conv_reqs, convert, "convert_result") if kind == "c" else \
                (opt_reqs, optimize, "optimize_result")
            pid = conv.pid if kind == "c" else opt.pid
            for k, req in enumerate(reqs):
                digests[(kind, k)] = run_job(call, req, name, counts["real"], None)
                series[kind].append({"jobs": k + 1, **tree_stats(pid)})

        with ThreadPoolExecutor(2) as ex:  # both services work at once; each runs its jobs one after another
            list(ex.map(real_side, ["c", "o"]))
        real_s = time.perf_counter() - t0
        checkpoint("after the real jobs")
        print(f"  jobs: {real} real in {real_s:.0f}s: {counts['real'].to_dict()['errors'] or 'no errors'}", flush=True)
        plan = [("c" if i % 2 == 0 else "o", (i // 2) % (n_conv if i % 2 == 0 else n_opt)) for i in range(cached)]

        def again(item):
            kind, k = item
            req, call, name = (conv_reqs[k], convert, "convert_result") if kind == "c" else \
                (opt_reqs[k], optimize, "optimize_result")
            run_job(call, req, name, counts["cached"], digests.get((kind, k)) or "")

        t1 = time.perf_counter()
        with ThreadPoolExecutor(8) as ex:
            for j in range(0, cached, 100):
                list(ex.map(again, plan[j:j + 100]))
                checkpoint(f"cached {min(j + 100, cached)}")
        cached_s = time.perf_counter() - t1
        vanish = job_client_vanishes(opt, opt_addr, opt_store, optimize,
                                     ArtifactStore(opt_store).put_onnx(mlp_onnx(models / "vanish.onnx", MLP_SIZES,
                                                                                seed=999)).digest)
        checkpoint("after the vanished client's job")
    finally:
        conv_ch.close()
        opt_ch.close()
        exits = {"converter": common.stop_service_subprocess(conv), "optimizer": common.stop_service_subprocess(opt)}
    return {"real": counts["real"].to_dict(), "cached": counts["cached"].to_dict(), "real_s": real_s,
            "cached_s": cached_s, "checkpoints": checkpoints, "exits": exits, "n_conv": n_conv, "n_opt": n_opt,
            "worker_series": series, "vanish": vanish}


def job_client_vanishes(opt: subprocess.Popen, address: str, store: Path, optimize, digest: str) -> dict:
    """A client SIGKILLed while its optimize job runs: the job's worker is stopped (work released), nothing is
    cached or left in tmp/, and the same request then runs for real to the end."""
    import psutil

    from modelport.v1 import artifacts_pb2, optimizer_pb2

    def workers() -> set[int]:
        return {c.pid for c in psutil.Process(opt.pid).children(recursive=True)}

    before = workers()
    p, _ = start_role("job", address, digest)
    busy = workers()
    p.kill()
    p.wait()
    t0 = time.monotonic()
    while busy & workers() == busy and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    stopped_s = time.monotonic() - t0
    gone = len(busy - workers())
    tmp_after_kill = sorted(os.listdir(store / "tmp"))
    counts = JobCounts()
    req = optimizer_pb2.OptimizeRequest(model=artifacts_pb2.ArtifactRef(digest=digest), techniques=["auto"])
    t1 = time.perf_counter()
    run_job(optimize, req, "optimize_result", counts, None)
    return {"workers_before": len(before), "workers_stopped": gone, "stopped_s": stopped_s,
            "tmp_after_kill": tmp_after_kill, "tmp_left": sorted(os.listdir(store / "tmp")), "rerun": counts.to_dict(), "rerun_cached": counts.cached,
            "rerun_s": time.perf_counter() - t1}


# --- slow and vanishing clients -------------------------------------------------------------------

def client_role(role: str, address: str, arg: str) -> None:
    """Runs in a child process: do the slow/vanishing client's part, print one "stalled" JSON line, then hang
    (the parent SIGKILLs this process: the connection goes away as with a crashed client)."""
    import grpc

    from modelport.kserve import codec
    from modelport.runtime.channels import channel_options
    from modelport.v1 import artifacts_pb2, artifacts_pb2_grpc

    ch = grpc.insecure_channel(address, options=channel_options())
    moved = [0]
    if role == "download":
        it = artifacts_pb2_grpc.ArtifactsStub(ch).Download(artifacts_pb2.DownloadRequest(digest=arg,
                                                                                         chunk_size=MiB))
        moved[0] = len(next(it).data)  # one chunk read, then never again
        time.sleep(2)
    elif role == "stream":
        def requests():
            for i in range(int(arg)):
                moved[0] = i + 1
                yield codec.make_infer_request("big", {"x": np.ones((1, 64), np.float32)}, request_id=str(i))
        from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc

        _responses = pb_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(requests())  # never read
        last = -1
        while moved[0] != last:  # wait until flow control stops the sender
            last = moved[0]
            time.sleep(2)
    elif role == "upload":
        size = int(arg)
        stall = threading.Event()

        def requests():
            yield artifacts_pb2.UploadRequest(header=artifacts_pb2.UploadHeader(media_type="application/octet-stream",
                                                                                expected_size=size))
            block = os.urandom(MiB)
            for _ in range(size // MiB // 2):
                moved[0] += len(block)
                yield artifacts_pb2.UploadRequest(chunk=block)
            stall.set()
            threading.Event().wait()  # the rest never comes

        threading.Thread(target=lambda: artifacts_pb2_grpc.ArtifactsStub(ch).Upload(requests()), daemon=True).start()
        stall.wait()
        time.sleep(1)
    elif role == "job":
        from modelport.v1 import optimizer_pb2, optimizer_pb2_grpc

        req = optimizer_pb2.OptimizeRequest(model=artifacts_pb2.ArtifactRef(digest=arg), techniques=["auto"])
        stages = []
        for ev in optimizer_pb2_grpc.OptimizerStub(ch).Optimize(req, timeout=600):
            stages.append(ev.stage)
            if ev.stage != "queued":  # the worker runs it now
                break
        moved[0] = len(stages)
    print(json.dumps({"stalled": True, "moved": moved[0]}), flush=True)
    threading.Event().wait()


def start_role(role: str, address: str, arg: str) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "PYTHONPATH": str(common.REPO_ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_reliability", "--client-role", role, address, arg],
                         cwd=common.REPO_ROOT, stdout=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    if not line:
        p.wait()
        raise RuntimeError(f"the {role} client exited ({p.returncode}) before stalling")
    return p, json.loads(line)


def settle(pid: int, key: str, target: int, timeout: float = 30.0) -> tuple[dict, float]:
    """Poll the server's stats until ``key`` is at most ``target`` (or ``timeout``); returns the stats and seconds."""
    t0 = time.monotonic()
    while True:
        s = tree_stats(pid)
        if s[key] <= target or time.monotonic() - t0 > timeout:
            return s, time.monotonic() - t0
        time.sleep(0.1)


def slow_clients(work: Path, download_mb: int, stream_requests: int, upload_mb: int) -> dict:
    from modelport.store import ArtifactStore

    repo = work / "slow-repo"
    big_onnx(repo / "big" / "1" / "model.onnx")
    mlp_onnx(repo / "digits" / "1" / "model.onnx", DIGITS_SIZES, seed=1)
    store = work / "slow-store"
    blob = work / "blob.bin"
    with open(blob, "wb") as f:
        for _ in range(download_mb):
            f.write(os.urandom(MiB))
    digest = ArtifactStore(store).put_file(blob, "application/octet-stream").digest
    blob.unlink()
    proc, address = common.start_service_subprocess("inference_svc", "--repository", str(repo), log_dir=work,
                                                    store=store)
    out: dict = {}
    try:
        common.wait_model_ready(address, "big")
        infer_once(address, "big")
        base = tree_stats(proc.pid)
        # 1. Four clients that each read one chunk of a Download and stop reading.
        with Sampler(proc.pid, interval=0.2) as s:
            clients = [start_role("download", address, digest) for _ in range(4)]
            others = infer_once(address, "digits")
        peak = max(x["rss"] for x in s.samples)
        during = tree_stats(proc.pid)
        for p, _ in clients:
            p.kill()
            p.wait()
        after, release_s = settle(proc.pid, "fds", base["fds"])
        out["download"] = {"clients": 4, "artifact_mb": download_mb, "base_rss": base["rss"], "peak_rss": peak,
                           "fds_base": base["fds"], "fds_during": during["fds"], "fds_after": after["fds"],
                           "release_s": release_s, "other_request": others,
                           "read_by_client": [m["moved"] for _, m in clients]}
        # 2. A client that sends thousands of stream requests with 256 KiB answers and reads none.
        base = tree_stats(proc.pid)
        with Sampler(proc.pid, interval=0.2) as s:
            p, m = start_role("stream", address, str(stream_requests))
            others = infer_once(address, "digits")
            ran_stalled = model_summary(address, "big")["versions"]["1"]["inference_count"]
        peak = max(x["rss"] for x in s.samples)
        p.kill()
        p.wait()
        after, release_s = settle(proc.pid, "fds", base["fds"])
        ran_after = model_summary(address, "big")["versions"]["1"]["inference_count"]
        time.sleep(1.0)
        ran_later = model_summary(address, "big")["versions"]["1"]["inference_count"]
        out["stream"] = {"requests_offered": stream_requests, "sent_by_client": m["moved"],
                         "answer_kib": BIG_WIDTH * 4 // 1024, "base_rss": base["rss"], "peak_rss": peak,
                         "unbounded_mb": stream_requests * BIG_WIDTH * 4 / MiB, "executed_stalled": ran_stalled - 1,
                         "executed_after_kill": ran_after - 1, "executed_1s_later": ran_later - 1,
                         "fds_base": base["fds"], "fds_after": after["fds"], "release_s": release_s,
                         "other_request": others}
        # 3. A client that dies half-way through an Upload.
        tmp = store / "tmp"
        base = tree_stats(proc.pid)
        with Sampler(proc.pid, interval=0.2) as s:
            p, m = start_role("upload", address, str(upload_mb * MiB))
            temp_files = [(e.name, e.stat().st_size) for e in os.scandir(tmp)]
            others = infer_once(address, "digits")
        peak = max(x["rss"] for x in s.samples)
        p.kill()
        p.wait()
        t0 = time.monotonic()
        while any(os.scandir(tmp)) and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        left = [e.name for e in os.scandir(tmp)]
        after, _ = settle(proc.pid, "fds", base["fds"])
        out["upload"] = {"size_mb": upload_mb, "sent_before_kill": m["moved"], "temp_during": temp_files,
                         "base_rss": base["rss"], "peak_rss": peak,
                         "temp_left": left, "release_s": time.monotonic() - t0, "fds_base": base["fds"],
                         "fds_after": after["fds"], "other_request": others,
                         "stored_blobs": len(list((store / "blobs" / "sha256").iterdir()))}
        out["still_serving"] = infer_once(address, "big")
    finally:
        out["exit"] = common.stop_service_subprocess(proc)
    return out


# --- report ---------------------------------------------------------------------------------------

def fmt_counts(outcomes: dict) -> str:
    errs = {k: v for k, v in outcomes.items() if k != "OK"}
    return ", ".join(f"{k} {v}" for k, v in sorted(errs.items())) or "none"


def mb(b: float) -> str:
    return f"{b / MiB:.0f}"


def report(data: dict) -> str:
    load = data["loadavg"]
    lines = ["## Reliability: soak, slow and vanishing clients, faults — every request counted", "",
             f"Load average (1 min) before/after: {load['before'][0]:.1f} / {load['after'][0]:.1f} on "
             f"{os.cpu_count()} cores; whole run {data['elapsed_s']:.0f} s"
             + (" (**--quick**: a short run, not the figures to quote)" if data["quick"] else "") + ".", ""]
    s = data.get("soak")
    if s:
        ok = s["outcomes"].get("OK", 0)
        b = s["server_after"]
        lines += [
            "### Inference soak", "",
            f"`python -m inference_svc` (default settings) serving `mlp` (64-256-256-10, config.pbtxt "
            f"`max_batch_size: 32 dynamic_batching {{ }}`; ModelConfig after the run: max_batch_size "
            f"{b['mlp']['max_batch_size']}, dynamic batching {'on' if b['mlp']['dynamic_batching'] else 'off'}) and "
            f"`digits` (64-128-10, no config; dynamic batching "
            f"{'on' if b['digits']['dynamic_batching'] else 'off'}, execution `{b['digits']['execution']}`), "
            f"driven by the unmodified tritonclient from {sum(n for *_, n in LANES)} lanes with one request in "
            "flight each (`benchmarks/peers/soak_client.py`). Every answer is compared with the expected output of "
            "the version that answered. Version 2 of `mlp` was written to the repository and hot-swapped with "
            f"`RepositoryModelLoad` at request {s['swap'].get('at_request', '—')} "
            f"({s['swap'].get('seconds', 0):.2f} s, {s['swap'].get('error') or 'no error'}).", "",
            common.markdown_table(["sent", "OK", "errors (by code)", "lost", "requests/s", "elapsed"],
                                  [[s["sent"], ok, fmt_counts(s["outcomes"]), s["lost"], f"{s['rate']:.0f}",
                                    f"{s['elapsed_s']:.0f} s"]]), "",
            common.markdown_table(
                ["way", "lanes", "sent", "OK", "p50 ms", "p99 ms"],
                [[k, m["lanes"], m["sent"], m["ok"], common.fmt_ms(m["p50_s"] or 0), common.fmt_ms(m["p99_s"] or 0)]
                 for k, m in s["modes"].items()]), "",
            "Per 10 % slice of the requests (in send order): latency of the OK answers, the server's RSS (median of "
            "the samples in the slice) and open fds (max), and which versions answered:", "",
            common.markdown_table(
                ["slice", "requests", "OK", "req/s", "p50 ms", "p99 ms", "server RSS MB", "fds", "versions"],
                [[x["slice"], x["requests"], x["ok"], f"{x['rate']:.0f}", common.fmt_ms(x["p50_s"] or 0),
                  common.fmt_ms(x["p99_s"] or 0), f"{x['rss_mb']:.0f}", x["fds_max"],
                  ", ".join(f"{v}: {n}" for v, n in sorted(x["versions"].items()))] for x in s["slices"]]), "",
            f"Server RSS after warm-up (slice 2) {s['rss_warm_mb']:.0f} MB, at the end {s['rss_end_mb']:.0f} MB: "
            f"growth **{s['rss_growth'] * 100:+.1f} %** (goal < {GOAL_RSS_GROWTH * 100:.0f} %: "
            f"{'met' if s['rss_growth'] < GOAL_RSS_GROWTH else 'NOT met'}); peak after warm-up "
            f"{s['rss_peak_after_warm_mb']:.0f} MB; open fds after warm-up between {s['fds_after_warm'][0]} and "
            f"{s['fds_after_warm'][1]}. Server exit code after SIGTERM: {s['server_exit']}.", "",
            "The server's own count (ModelStatistics successes during the run) against the client's OK answers: "
            + "; ".join(f"{k}: server {v['server_success']}, client {v['client_ok']}"
                        for k, v in s["server_check"].items())
            + " (version 1 of `mlp` was unloaded by the swap, its statistics with it).", ""]
        if s["first_errors"]:
            lines += ["First error of each kind: " + "; ".join(f"{k}: {v}" for k, v in s["first_errors"].items()), ""]
    j = data.get("jobs")
    if j:
        cp = j["checkpoints"]

        def row(label, c):
            return [label, mb(c["converter"]["rss"]), mb(c["converter"]["children_rss"]), c["converter"]["fds"],
                    mb(c["optimizer"]["rss"]), mb(c["optimizer"]["children_rss"]), c["optimizer"]["fds"],
                    f"{(c['conv_store'] + c['opt_store']) / MiB:.1f}", c["tmp_entries"]]

        lines += [
            "### Jobs soak", "",
            f"A converter and an optimizer service (`--worker-max-jobs 0`: one worker process runs every job, the "
            "hard case for leaks; the default gives each job a fresh worker) ran "
            f"{j['n_conv']} ONNX→ONNX conversions (opsets 13–18, a different parity seed each) and {j['n_opt']} "
            "optimizations (`graph`, `int8-dynamic`, `fp16` in turn, each on its own 64-128-10 MLP) for real, both "
            f"services at once, in {j['real_s']:.0f} s; then {j['cached']['sent']} repeats of them from 8 client "
            f"threads, answered from the job cache in {j['cached_s']:.1f} s (each checked to return the same "
            "artifact digest as the real run).", "",
            common.markdown_table(
                ["jobs", "sent", "OK", "of which cached", "errors (by code)", "wrong result", "lost", "p50 s", "p99 s"],
                [[k, c["sent"], c["ok"], c["cached"], fmt_counts(c["errors"]), c["wrong_result"], c["lost"],
                  f"{c['p50_s']:.3f}" if c["p50_s"] is not None else "—",
                  f"{c['p99_s']:.3f}" if c["p99_s"] is not None else "—"]
                 for k, c in (("real", j["real"]), ("cached", j["cached"]))]), "",
            common.markdown_table(
                ["when", "converter RSS MB", "its workers RSS MB", "converter fds", "optimizer RSS MB",
                 "its workers RSS MB", "optimizer fds", "stores MB", "tmp entries"],
                [row(c["label"].replace("cached", "after cached job"), c) for c in cp]), "",
        ]
        for kind, label in (("c", "converter"), ("o", "optimizer")):
            ser = j["worker_series"][kind]
            if len(ser) >= 2:
                picks = sorted({0, len(ser) // 10, len(ser) // 2, len(ser) - 1})
                lines += [f"{label.capitalize()} worker (one process for every job) after real job "
                          + ", ".join(str(ser[i]["jobs"]) for i in picks) + ": RSS "
                          + " / ".join(mb(ser[i]["children_rss"]) for i in picks) + " MB, open fds "
                          + " / ".join(str(ser[i]["children_fds"]) for i in picks) + f"; growth from job "
                          f"{ser[picks[1]]['jobs']} to the last "
                          f"{(ser[-1]['children_rss'] / ser[picks[1]]['children_rss'] - 1) * 100:+.1f} %.", ""]
        v = j.get("vanish")
        if v:
            lines += [f"A client SIGKILLed while its `auto` optimize job ran in the worker: {v['workers_stopped']} "
                      f"worker process(es) stopped {v['stopped_s']:.2f} s after the kill (work released; a spare "
                      f"replaces it), store tmp/ entries right after: {len(v['tmp_after_kill'])}, after the rerun: "
                      f"{len(v['tmp_left'])}; the same request afterwards: "
                      f"{'OK' if v['rerun']['ok'] else fmt_counts(v['rerun']['errors'])}, "
                      f"{'from the cache (the killed job had finished)' if v['rerun_cached'] else 'run for real'} "
                      f"in {v['rerun_s']:.1f} s.", ""]
        lines += [f"Exit codes after SIGTERM: converter {j['exits']['converter']}, optimizer "
                  f"{j['exits']['optimizer']}.", ""]
        errs = {**j["real"]["first_errors"], **j["cached"]["first_errors"]}
        if errs:
            lines += ["First job error of each kind: " + "; ".join(f"{k}: {v}" for k, v in errs.items()), ""]
    sc = data.get("slow")
    if sc:
        d, st, up = sc["download"], sc["stream"], sc["upload"]
        lines += [
            "### Slow and vanishing clients", "",
            "Each client is its own process; after the stall is measured it is killed with SIGKILL (its "
            "connection goes away as with a crashed client).", "",
            common.markdown_table(
                ["client", "what it did", "server RSS before → peak (MB)", "others served meanwhile",
                 "released after the kill"],
                [["stopped reading Download", f"{d['clients']} clients, one 1 MiB chunk read each of a "
                  f"{d['artifact_mb']} MiB artifact", f"{mb(d['base_rss'])} → {mb(d['peak_rss'])}",
                  d["other_request"], f"fds {d['fds_during']} → {d['fds_after']} (before: {d['fds_base']}) in "
                  f"{d['release_s']:.1f} s"],
                 ["stopped reading ModelStreamInfer", f"offered {st['requests_offered']} requests with "
                  f"{st['answer_kib']} KiB answers ({st['unbounded_mb']:.0f} MB if all were answered); its gRPC "
                  f"sent {st['sent_by_client']} (small requests: they wait in the transport's buffers), the "
                  f"server ran {st['executed_stalled']} and waited",
                  f"{mb(st['base_rss'])} → {mb(st['peak_rss'])}", st["other_request"],
                  f"runs of the model: {st['executed_after_kill']} after the kill, {st['executed_1s_later']} a "
                  f"second later; fds {st['fds_after']} (before: {st['fds_base']})"],
                 ["killed mid-Upload", f"sent {up['sent_before_kill'] / MiB:.0f} of {up['size_mb']} MiB; temp "
                  f"blob during the stall: {', '.join(f'{n} ({s / MiB:.0f} MiB)' for n, s in up['temp_during']) or 'none'}",
                  f"{mb(up['base_rss'])} → {mb(up['peak_rss'])}", up["other_request"], f"temp files left: {len(up['temp_left'])} (after {up['release_s']:.2f} s); "
                  f"fds {up['fds_after']} (before: {up['fds_base']})"]]), "",
            f"The server answered a request after all three: {sc['still_serving']}; exit code after SIGTERM: "
            f"{sc['exit']}.", ""]
    if data.get("faults"):
        lines += data["faults"] + [""]
    elif data.get("faults_skipped"):
        lines += ["### Crash and resume, full disk", "", "Not run in this run (`--skip-faults`).", ""]
    lines += [f"Command: `{common.command_line()}`.", "", common.system_info_markdown()]
    return "\n".join(lines)


def main() -> None:
    p = common.bench_args("Reliability: inference soak, jobs soak, slow and vanishing clients")
    p.add_argument("--skip-faults", action="store_true", help="do not run reliability_faults (crash, full disk)")
    p.add_argument("--only", nargs="*", default=None, choices=["soak", "jobs", "slow", "faults"],
                   help="run only these parts")
    p.add_argument("--client-role", nargs=3, metavar=("ROLE", "ADDRESS", "ARG"), help=argparse_hidden())
    args = p.parse_args()
    if args.client_role:
        client_role(*args.client_role)
        return
    parts = set(args.only or ["soak", "jobs", "slow", "faults"])
    if args.skip_faults:
        parts.discard("faults")
    data_skip = "faults" not in parts
    quick = args.quick
    t0 = time.time()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    data: dict = {"quick": quick, "faults_skipped": data_skip}
    try:
        if "soak" in parts:
            print("inference soak", flush=True)
            data["soak"] = inference_soak(work, 20_000 if quick else 200_000, 150 if quick else 480)
        if "jobs" in parts:
            print("jobs soak", flush=True)
            data["jobs"] = jobs_soak(work, 6 if quick else 50, 60 if quick else 500)
        if "slow" in parts:
            print("slow and vanishing clients", flush=True)
            data["slow"] = slow_clients(work, 64 if quick else 128, 2000 if quick else 5000, 64)
        if "faults" in parts:
            print("crash and resume, full disk (benchmarks/reliability_faults.py)", flush=True)
            try:
                from benchmarks import reliability_faults
            except ModuleNotFoundError as e:
                if e.name != "benchmarks.reliability_faults":
                    raise
                data["faults"] = ["### Crash and resume, full disk", "",
                                  "Not run: benchmarks/reliability_faults.py is not in this tree."]
            else:
                fault_dir = work / "faults"
                fault_dir.mkdir()
                try:
                    data["faults"] = reliability_faults.run(fault_dir)
                except Exception as e:  # noqa: BLE001 - reported in the section; the run then exits non-zero
                    failed = f"{type(e).__name__}: {e}"
                    data["faults"] = ["### Crash and resume, full disk", "",
                                      f"**Failed**: `reliability_faults.run` raised {failed[:500]}"]
                    data["faults_error"] = failed
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    data["elapsed_s"] = time.time() - t0
    md = report(data)
    common.write_section("reliability", md, data)
    print(md)
    if data.get("faults_error"):
        sys.exit(f"reliability_faults failed: {data['faults_error']}")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    t_start = time.time()
    main()
    if not any(a == "--client-role" for a in sys.argv):
        print(f"done in {time.time() - t_start:.0f}s")
