"""Serving speed side by side: modelport vs the Python servers a user would pick instead, and the floor.

For an MLP (64-256-256-10, built with onnx.helper: per-request overhead dominates) and MobileNetV2
(``keras.applications``, ``weights=None``, converted to ONNX once in a separate subprocess so this process
never imports TensorFlow), at client concurrency 1, 8 and 32 with batch-1 requests, the same ONNX file is
served by:

* **KServe 0.21** ``ModelServer`` with the obvious model (``benchmarks/peers/kserve_peer.py``: an
  ``onnxruntime.InferenceSession`` with default options, KServe's own codec), in ``.venv-kserve``;
* **MLServer 1.7.1** with the obvious runtime (``benchmarks/peers/mlserver_peer.py``, MLServer's NumpyCodec),
  in ``.venv-mlserver``;
* **modelport** ``python -m inference_svc --repository R`` with default settings (no tuning flags; the
  repository holds only ``<model>/1/model.onnx``);
* **the floor**: a do-nothing ``grpc.aio`` KServe server (``benchmarks/peers/floor_server.py``) that parses
  the request and answers a prepared response: what any Python gRPC server costs at the least.

Every server is driven by the same unmodified ``tritonclient`` sync gRPC client
(``benchmarks/peers/load_client.py`` in the tritonclient venv): N threads, one ``InferenceServerClient``
each, every response checked. Rounds are interleaved (each round visits every server at every concurrency,
the server order rotating), so drifting background load hits all alike. Reported per cell: requests/s,
p50/p99 latency, errors, and the CPU time the server process (with its children) and the client used per
request — the CPU figures move far less than throughput when other work shares the machine. In-process
onnxruntime (default session, one thread calling ``run``) is given at concurrency 1 as a reference.

    make peer-venvs triton-venv                              # once: the peers' and the client's venvs
    .venv/bin/python -m benchmarks.bench_serving             # full (a few minutes)
    .venv/bin/python -m benchmarks.bench_serving --quick     # short smoke run (MobileNetV2 only if cached)
    .venv/bin/python -m benchmarks.bench_serving --models mlp --servers floor,modelport --rounds 5
                                                             # focused: printed, results/ left as they are

The venvs are found beside the repository (``.venv-kserve``, ``.venv-mlserver``, ``.venv-triton``) or
through MODELPORT_KSERVE_PYTHON, MODELPORT_MLSERVER_PYTHON, MODELPORT_TRITON_PYTHON. A peer whose venv is
missing is left out and the report says so.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks import common

CACHE = Path(tempfile.gettempdir()) / "modelport-bench-serving"
MOBILENET = CACHE / "mobilenetv2.onnx"
PEERS_DIR = Path(__file__).resolve().parent / "peers"
CONCURRENCY = (1, 8, 32)
MLP_SIZES = (64, 256, 256, 10)
SERVERS = ("floor", "kserve", "mlserver", "modelport")
PEERS = ("kserve", "mlserver")
LABELS = {"floor": "floor (bare grpc.aio)", "kserve": "KServe 0.21", "mlserver": "MLServer 1.7.1",
          "modelport": "modelport", "in_process": "in-process onnxruntime"}
GOAL_PEER_RATIO = 1.3
GOAL_FLOOR_RATIO = 0.85

EXPORT_SCRIPT = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import keras
from modelport.conversion.onnx_export import keras_model_to_onnx
keras.utils.set_random_seed(0)
model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
keras_model_to_onnx(model, sys.argv[1])
"""


# --- models ---------------------------------------------------------------------------------------

def build_mlp(path: Path, sizes=MLP_SIZES) -> Path:
    """An MLP (Gemm + Relu layers, random weights from seed 0) with a dynamic batch dimension."""
    from benchmarks.models import mlp_onnx

    return mlp_onnx(path, sizes, seed=0)


def ensure_mobilenet(allow_build: bool) -> Path | None:
    """MobileNetV2 ONNX, converted once in a TensorFlow subprocess and cached."""
    if MOBILENET.is_file():
        return MOBILENET
    if not allow_build:
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = MOBILENET.with_suffix(".tmp.onnx")
    subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, str(tmp)], cwd=common.REPO_ROOT, check=True, timeout=600)
    os.replace(tmp, MOBILENET)
    return MOBILENET


@dataclass
class ModelIO:
    """What the client sends and what the floor answers for one model."""

    input: str
    shape: list[int]
    output: str
    output_shape: list[int]


def model_io(path: Path) -> ModelIO:
    """Batch-1 input/output names and shapes (dynamic dims as 1) of the model's first input and output."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]

    def concrete(shape):
        return [1] + [d if isinstance(d, int) else 1 for d in shape[1:]]

    return ModelIO(inp.name, concrete(inp.shape), out.name, concrete(out.shape))


def in_process(path: Path, io: ModelIO, max_s: float) -> common.Throughput:
    """onnxruntime in this process, default session options, one thread calling run (concurrency 1)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {io.input: np.random.default_rng(0).random(io.shape, dtype=np.float32)}
    return common.measure_throughput(lambda: sess.run(None, feed), 1, max_calls=10**6, max_seconds=max_s, warmup=5)


def item_cpu_ms(path: Path, io: ModelIO, max_s: float) -> dict[str, float]:
    """CPU milliseconds per item of onnxruntime on one thread (no hand-offs, no spinning), batch 1 and 8: the
    least compute CPU a request of this model can cost on this machine (``batch8`` only for a model that takes
    a batch of 8)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = {}
    for batch in (1, 8):
        feed = {io.input: np.random.default_rng(0).random([batch, *io.shape[1:]], dtype=np.float32)}
        try:
            sess.run(None, feed)
        except Exception:  # noqa: BLE001 - a fixed batch dimension of 1
            continue
        runs, cpu0, end = 0, time.process_time(), time.perf_counter() + max_s / 2
        while time.perf_counter() < end or runs < 3:
            sess.run(None, feed)
            runs += 1
        out[f"batch{batch}"] = (time.process_time() - cpu0) * 1e3 / (runs * batch)
    return out


# --- servers --------------------------------------------------------------------------------------

def venv_python(env_var: str, venv: str, exe: str = "python") -> Path | None:
    """A peer's interpreter (or script) from ``env_var`` or ``<repo>/<venv>/bin/<exe>``; None when absent."""
    value = os.environ.get(env_var)
    path = Path(value) if value else common.REPO_ROOT / venv / "bin" / "python"
    if exe != "python":
        path = path.parent / exe
    return path if path.is_file() else None


def free_port() -> int:
    """A port free right now (the peers take fixed ports; a race with another process is unlikely here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """One running server: its process, address and log."""

    kind: str
    proc: subprocess.Popen
    address: str
    log: Path
    pids: list[int] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process and every live child (MLServer's workers)."""
        import psutil

        total = 0.0
        try:
            p = psutil.Process(self.proc.pid)
            for q in [p, *p.children(recursive=True)]:
                try:
                    t = q.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        return total

    def stop(self) -> int:
        if self.kind.partition(":")[0] == "modelport":
            return common.stop_service_subprocess(self.proc)
        return common._terminate(self.proc, timeout=20)


def start_server(kind: str, model: str, path: Path, io: ModelIO, work: Path,
                 variants: dict[str, dict[str, str]] | None = None) -> Server:
    """Start one server for one model and wait until the model is ready.

    ``kind`` ``modelport:NAME`` is modelport started with the environment of ``variants[NAME]`` added (an A/B
    of a setting against the defaults, in the same interleaved rounds)."""
    log = work / f"{kind}-{model}.log"
    if kind == "modelport" or kind.startswith("modelport:"):
        repo = work / f"repo-{model}"
        (repo / model / "1").mkdir(parents=True, exist_ok=True)
        target = repo / model / "1" / "model.onnx"
        if not target.exists():
            os.symlink(path, target)
        env = (variants or {}).get(kind.partition(":")[2], {})
        proc, address = common.start_service_subprocess("inference_svc", "--repository", str(repo),
                                                        log_dir=work, env=env)
        server = Server(kind, proc, address, common.service_info(proc).log_path)
        common.wait_model_ready(address, model, proc=proc, log=server.log)
        return server
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a peer imports only its own venv
    if kind == "floor":
        cmd = [sys.executable, str(PEERS_DIR / "floor_server.py"), "--port", str(port), "--output", io.output,
               "--output-shape", ",".join(map(str, io.output_shape))]
        env["PYTHONPATH"] = str(common.REPO_ROOT)
    elif kind == "kserve":
        py = venv_python("MODELPORT_KSERVE_PYTHON", ".venv-kserve")
        cmd = [str(py), str(PEERS_DIR / "kserve_peer.py"), "--name", model, "--path", str(path),
               "--grpc_port", str(port), "--http_port", str(free_port())]
    elif kind == "mlserver":
        folder = work / f"mlserver-{model}"
        (folder / model).mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(json.dumps(
            {"grpc_port": port, "http_port": free_port(), "metrics_port": free_port()}))
        (folder / model / "model-settings.json").write_text(json.dumps(
            {"name": model, "implementation": "mlserver_peer.OnnxRuntime", "parameters": {"uri": str(path)}}))
        cmd = [str(venv_python("MODELPORT_MLSERVER_PYTHON", ".venv-mlserver", "mlserver")), "start", str(folder)]
        env["PYTHONPATH"] = str(PEERS_DIR)
    else:
        raise ValueError(kind)
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work)
    address = f"127.0.0.1:{port}"
    server = Server(kind, proc, address, log)
    try:
        common.wait_model_ready(address, model, proc=proc, log=log)
    except BaseException:
        server.stop()
        raise
    return server


def available_servers() -> tuple[list[str], dict[str, str]]:
    """Servers this machine can run, and why the others cannot."""
    missing = {}
    if venv_python("MODELPORT_KSERVE_PYTHON", ".venv-kserve") is None:
        missing["kserve"] = "no .venv-kserve (make peer-venvs, or set MODELPORT_KSERVE_PYTHON)"
    if venv_python("MODELPORT_MLSERVER_PYTHON", ".venv-mlserver", "mlserver") is None:
        missing["mlserver"] = "no .venv-mlserver (make peer-venvs, or set MODELPORT_MLSERVER_PYTHON)"
    return [s for s in SERVERS if s not in missing], missing


# --- client ---------------------------------------------------------------------------------------

class LoadClient:
    """The tritonclient load generator (benchmarks/peers/load_client.py --serve) in the tritonclient venv."""

    def __init__(self):
        py = venv_python("MODELPORT_TRITON_PYTHON", ".venv-triton")
        if py is None:
            raise RuntimeError("no tritonclient venv: run `make triton-venv` or set MODELPORT_TRITON_PYTHON")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.proc = subprocess.Popen([str(py), str(PEERS_DIR / "load_client.py"), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        if not json.loads(self.proc.stdout.readline() or "{}").get("ready"):
            raise RuntimeError("the load client did not start (see its stderr above)")

    def run(self, address: str, model: str, io: ModelIO, concurrency: int, seconds: float) -> dict:
        self.proc.stdin.write(json.dumps({"url": address, "model": model, "input": io.input, "shape": io.shape,
                                          "concurrency": concurrency, "seconds": seconds}) + "\n")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load client exited")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


@dataclass
class Cell:
    """Every round of one server at one concurrency, combined."""

    calls: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    def add(self, r: dict, server_cpu_s: float) -> None:
        self.calls += r["calls"]
        self.errors += r["errors"]
        self.elapsed_s += r["elapsed_s"]
        self.client_cpu_s += r["cpu_s"]
        self.server_cpu_s += server_cpu_s
        self.latencies.extend(r["latencies_s"])
        self.first_error = self.first_error or r["first_error"]

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s else 0.0

    def to_dict(self) -> dict:
        lat = common.Timing(self.latencies) if self.latencies else None
        n = max(self.calls, 1)
        return {"calls_per_s": self.rate, "calls": self.calls, "errors": self.errors, "first_error": self.first_error,
                "elapsed_s": self.elapsed_s, "p50_s": lat.p50 if lat else None, "p99_s": lat.p99 if lat else None,
                "server_cpu_ms_per_call": self.server_cpu_s * 1e3 / n,
                "client_cpu_ms_per_call": self.client_cpu_s * 1e3 / n}


def modelport_stats(address: str, model: str) -> dict:
    """What modelport did with the requests: executions vs requests (batching) from ModelStatistics."""
    import grpc

    from modelport.kserve.v2 import grpc_service_pb2 as pb
    from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        s = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0]
        cfg = stub.ModelConfig(pb.ModelConfigRequest(name=model)).config
    return {"inference_count": s.inference_count, "execution_count": s.execution_count,
            "mean_batch": s.inference_count / s.execution_count if s.execution_count else 0.0,
            "max_batch_size": cfg.max_batch_size, "dynamic_batching": cfg.HasField("dynamic_batching"),
            "parameters": {k: v.string_value for k, v in cfg.parameters.items()}}


def measure_model(model: str, path: Path, servers: list[str], client: LoadClient, rounds: int, seconds: float,
                  work: Path, variants: dict[str, dict[str, str]] | None = None,
                  concurrency: tuple[int, ...] = CONCURRENCY) -> dict:
    """Every server at every concurrency for one model, rounds interleaved."""
    io = model_io(path)
    running: dict[str, Server] = {}
    cells = {s: {c: Cell() for c in concurrency} for s in servers}
    ref = []
    try:
        for s in servers:
            running[s] = start_server(s, model, path, io, work, variants)
        for r in range(rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for c in concurrency:
                for s in order:
                    srv = running[s]
                    cpu0 = srv.cpu_seconds()
                    res = client.run(srv.address, model, io, c, seconds)
                    cells[s][c].add(res, srv.cpu_seconds() - cpu0)
                    print(f"  {model} round {r + 1} c={c} {s}: {res['calls'] / res['elapsed_s']:.0f}/s, "
                          f"{res['errors']} errors", flush=True)
            ref.append(in_process(path, io, seconds))
        item_cpu = item_cpu_ms(path, io, seconds)
        stats = modelport_stats(running["modelport"].address, model) if "modelport" in running else {}
    finally:
        exits = {s: srv.stop() for s, srv in running.items()}
    base = ref[0]
    return {"io": io.__dict__, "runs": {s: {str(c): cell.to_dict() for c, cell in per.items()}
                                        for s, per in cells.items()},
            "in_process_c1": {"calls_per_s": sum(t.calls for t in ref) / sum(t.elapsed_s for t in ref),
                              "p50_s": base.latency.p50},
            "item_cpu_ms": item_cpu, "modelport_stats": stats, "exit_codes": exits}


# --- report ---------------------------------------------------------------------------------------

def best_peer(runs: dict, c: int) -> tuple[str | None, float | None]:
    """The fastest peer at concurrency ``c`` and its requests/s."""
    rates = [(runs[p][str(c)]["calls_per_s"], p) for p in PEERS if p in runs]
    if not rates:
        return None, None
    rate, peer = max(rates)
    return peer, rate


def c1_bound(d: dict) -> float | None:
    """Requests/s no server can exceed at concurrency 1: one request at a time costs at least the floor's transport
    (the do-nothing server's time per request) plus one in-process onnxruntime run, one after the other."""
    floor = d["runs"].get("floor", {}).get("1")
    run = d["in_process_c1"]["calls_per_s"]
    if not floor or not floor["calls_per_s"] or not run:
        return None
    bound = 1.0 / (1.0 / floor["calls_per_s"] + 1.0 / run)
    # Under load from other processes the in-process run (all cores, between the rounds) suffers most, and a server
    # whose gRPC path costs less than the floor server's (fewer registered methods, uvloop) can beat the floor
    # itself: a server measured above the bound shows it did not hold in this run, and it is not reported.
    # The floor itself does not run the model, so it is not held to the bound.
    if any(r.get("1", {}).get("calls_per_s", 0) > bound * 1.02 for s, r in d["runs"].items() if s != "floor"):
        return None
    return bound


def cpu_budget(d: dict, c: int, cores: int) -> float | None:
    """Requests/s at concurrency ``c`` that the machine's CPU allows a server whose transport costs what the floor
    server's does and whose model runs at its cheapest (one thread, the cheaper of batch 1 and 8): ``cores``
    divided by the CPU of one request, the client's (measured with modelport) + the floor server's + that run's.
    An estimate, not a proof: a server's transport can cost a little less than the floor server's."""
    floor = d["runs"].get("floor", {}).get(str(c))
    mp = d["runs"].get("modelport", {}).get(str(c))
    item = min(d.get("item_cpu_ms", {}).values(), default=None)
    if not floor or not mp or item is None:
        return None
    return cores * 1e3 / (mp["client_cpu_ms_per_call"] + floor["server_cpu_ms_per_call"] + item)


def report(data: dict, missing: dict[str, str], rounds: int, seconds: float) -> str:
    titles = {"mlp": f"MLP {'-'.join(map(str, MLP_SIZES))} (onnx.helper, random weights; overhead-bound)",
              "mobilenetv2": "MobileNetV2 224x224 (keras.applications, weights=None, via tf2onnx; compute-bound)"}
    conc = tuple(data["concurrency"])
    load = data["loadavg"]
    # The load at the end is the benchmark's own servers and client (about 3); only the load before it started
    # says whether other work shared the machine.
    loaded = load["before"][0] >= 1.0
    lines = [
        "## Serving: modelport vs KServe, MLServer and the bare grpc.aio floor",
        "",
        "Batch-1 requests from the same unmodified `tritonclient` sync gRPC client (N threads, one "
        "`InferenceServerClient` each, every response checked) to each server in turn, on the same machine. "
        "KServe 0.21 and MLServer 1.7.1 serve the same ONNX file with the obvious runtime a user would write "
        "(`benchmarks/peers/`: an `onnxruntime.InferenceSession` with default options, each library's own "
        "codec, default server settings); modelport is `python -m inference_svc --repository R` with default "
        f"settings and only `<model>/1/model.onnx` in the repository (event loop: {data['modelport_event_loop']}; "
        "its default idle spin polls the loop for up to 2 ms after the last request finished, so its server CPU "
        "per request includes a core kept awake while a one-at-a-time client prepares its next request); "
        "the floor is a do-nothing `grpc.aio` KServe server answering a prepared response. "
        "KServe runs its sync `predict` on its event loop (uvloop) and, by default, logs every request; MLServer "
        "hands each request to its inference worker process (its default `parallel_workers`); the floor runs on "
        "asyncio's own loop and does not run the model (it bounds the transport only). "
        f"Each cell: {rounds} interleaved round(s) of {seconds:.1f} s (every server at every concurrency each "
        "round, server order rotating). "
        f"Load average (1 min) before/after: {load['before'][0]:.1f} / {load['after'][0]:.1f} on "
        f"{os.cpu_count()} cores.",
        "",
    ]
    if loaded:
        lines += ["**The machine was shared with other work when this started (load average ≥ 1.0 on 2 cores): the "
                  "absolute figures are low and noisy; ratios within a row were measured in the same interleaved "
                  "rounds and are the figures to read. CPU ms per request (second table) moves least with load.**",
                  ""]
    else:
        lines += [f"The machine had no other work when this started (load average {load['before'][0]:.1f}); the load at "
                  "the end is the benchmark's own servers and client.", ""]
    if missing:
        lines += [f"Left out: {', '.join(f'{k} ({v})' for k, v in missing.items())}.", ""]
    goal_rows = []
    cores = data.get("cores") or os.cpu_count() or 1
    for model, d in data["models"].items():
        runs = d["runs"]
        bound = c1_bound(d)
        budgets = {c: cpu_budget(d, c, cores) for c in conc if c > 1}
        lines += [f"### {titles.get(model, model)}", ""]
        rows = []
        for c in conc:
            peer, peer_rate = best_peer(runs, c)
            mp = runs.get("modelport", {}).get(str(c))
            fl = runs.get("floor", {}).get(str(c))
            row = [c] + [f"{runs[s][str(c)]['calls_per_s']:.0f}" if s in runs else "—" for s in SERVERS]
            r_peer = common.ratio(mp["calls_per_s"], peer_rate) if mp else None
            r_floor = common.ratio(mp["calls_per_s"], fl["calls_per_s"]) if mp and fl else None
            errors = sum(runs[s][str(c)]["errors"] for s in runs)
            row += [common.fmt_ratio(r_peer) + (f" ({LABELS[peer]})" if peer else ""), common.fmt_ratio(r_floor),
                    f"{mp['errors']}" if mp else "—", errors]
            rows.append(row)
            goal_rows.append([f"{model}, c={c}: modelport / best peer", r_peer, GOAL_PEER_RATIO,
                              common.ratio(bound if c == 1 else budgets[c], peer_rate)])
            if model == "mlp" and c == 1:
                goal_rows.append([f"{model}, c={c}: modelport / floor", r_floor, GOAL_FLOOR_RATIO,
                                  common.ratio(bound, fl["calls_per_s"]) if fl else None])
        lines += [common.markdown_table(
            ["concurrency", *(f"{LABELS[s]} req/s" for s in SERVERS), "modelport / best peer", "modelport / floor",
             "modelport errors", "errors (all servers)"], rows), ""]
        detail = []
        variants = [s for s in runs if s not in SERVERS]  # modelport:NAME (focused A/B runs)
        for s in [*SERVERS, *variants]:
            for c in conc:
                r = runs.get(s, {}).get(str(c))
                if r:
                    detail.append([LABELS.get(s, s), c, f"{r['calls_per_s']:.0f}", common.fmt_ms(r["p50_s"] or 0),
                                   common.fmt_ms(r["p99_s"] or 0), f"{r['server_cpu_ms_per_call']:.3f}",
                                   f"{r['client_cpu_ms_per_call']:.3f}", r["errors"]])
        ip = d["in_process_c1"]
        lines += [f"In-process onnxruntime (default session: every core, one calling thread): {ip['calls_per_s']:.0f} runs/s "
                  f"(p50 {common.fmt_ms(ip['p50_s'])} ms), measured between the rounds.", ""]
        if d.get("item_cpu_ms"):
            lines += ["CPU per item on one thread (the least a request's model run costs here): "
                      + ", ".join(f"{k} {v:.3f} ms" for k, v in d["item_cpu_ms"].items()) + ". "
                      + ("CPU budget above concurrency 1 (client and server share the machine's "
                         f"{cores} cores): {cores} cores / (the client's CPU per request + the floor server's + that "
                         "run) = " + ", ".join(f"c={c} **{b:.0f} req/s**" for c, b in budgets.items() if b)
                         + "; a server whose transport costs what the floor's does cannot exceed it."
                         if any(budgets.values()) else ""), ""]
        if bound is None and 1 in conc and "floor" in runs:
            lines += ["Bound at concurrency 1: not valid in this run (a server answered faster than the floor's "
                      "transport plus the in-process run measured between the rounds: other work slowed the "
                      "in-process run, or a server's transport costs less than the floor server's own: modelport's loop keeps "
                      "polling between requests (its idle spin), where the floor's sleeps and wakes on an idle core).",
                      ""]
        if bound is not None and 1 in conc:
            peer, peer_rate = best_peer(runs, 1)
            lines += [f"Bound at concurrency 1: with one request at a time, a request costs at least the floor's "
                      f"transport (1 / {runs['floor']['1']['calls_per_s']:.0f} req/s) plus one in-process run "
                      f"(1 / {ip['calls_per_s']:.0f} runs/s), so no server here can exceed **{bound:.0f} req/s** = "
                      f"{common.fmt_ratio(common.ratio(bound, peer_rate))} the best peer"
                      + (f" ({LABELS[peer]})" if peer else "") + ".", ""]
        lines += [
                  common.markdown_table(["server", "concurrency", "req/s", "p50 ms", "p99 ms",
                                         "server CPU ms/req", "client CPU ms/req", "errors"], detail), ""]
        for v in variants:
            lines += [f"{v} / best peer: " + ", ".join(
                f"c={c} {common.fmt_ratio(common.ratio(runs[v][str(c)]['calls_per_s'], best_peer(runs, c)[1]))}"
                for c in conc) + "; / modelport: " + ", ".join(
                f"c={c} {common.fmt_ratio(common.ratio(runs[v][str(c)]['calls_per_s'], runs[m][str(c)]['calls_per_s']))}"
                for c in conc for m in ["modelport"] if m in runs), ""]
        st = d.get("modelport_stats")
        if st:
            params = st["parameters"]
            lines += [f"modelport's choices for this model (ModelConfig): max_batch_size {st['max_batch_size']}, "
                      f"dynamic batching {'on' if st['dynamic_batching'] else 'off'}, "
                      + ", ".join(f"{k} {v}" for k, v in sorted(params.items())
                                  if k in ("intra_op_thread_count", "execution", "auto_batching", "tuning"))
                      + f"; over the whole run {st['inference_count']} requests ran in {st['execution_count']} "
                      f"executions (mean batch {st['mean_batch']:.2f}).", ""]
    data["goals"] = {g: {"value": v, "target": t, "met": v is not None and v >= t, "bound": b}
                     for g, v, t, b in goal_rows}
    lines += ["Goals (issue #15, default settings). *Bound*, as the same ratio: at concurrency 1 the most any server "
              "can reach (the floor's transport + an in-process run); above it the CPU budget (see each model's "
              "section). A target above the bound cannot be met on this machine.", "",
              common.markdown_table(["goal", "measured", "target", "bound", "met"],
                                    [[g, common.fmt_ratio(v), f"≥ {t}×", common.fmt_ratio(b) if b else "—",
                                      "n/a" if v is None else ("yes" if v >= t else
                                                               "NO (target above the bound)" if b and b < t else "NO")]
                                     for g, v, t, b in goal_rows]),
              "", "![serving throughput](benchmarks/results/serving_peers.png)", "",
              f"Command: `{data.get('command') or common.command_line()}` (from a checkout: `make bench-serving` builds the venvs of the "
              "peers and of tritonclient, then runs it; on a quiet machine the figures are the ones to quote).", "",
              common.system_info_markdown(data.get("system"))]
    return "\n".join(lines)


def plot(data: dict) -> None:
    """Grouped bars of requests/s per model and concurrency, one bar per server."""
    plt = common.pyplot()
    models = list(data["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        runs = data["models"][model]["runs"]
        servers = [s for s in SERVERS if s in runs]
        width = 0.8 / len(servers)
        for i, s in enumerate(servers):
            vals = [runs[s][str(c)]["calls_per_s"] for c in CONCURRENCY]
            style = {"color": "lightgrey", "hatch": "//", "edgecolor": "grey"} if s == "floor" else {}
            ax.bar([j + i * width for j in range(len(CONCURRENCY))], vals, width, label=LABELS[s], **style)
        ax.set_xticks([j + width * (len(servers) - 1) / 2 for j in range(len(CONCURRENCY))],
                      [f"c={c}" for c in CONCURRENCY])
        ax.set_title(f"{model} (the floor runs no model)")
        ax.set_ylabel("requests/s")
        ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, "serving_peers")


def modelport_event_loop() -> str:
    """The event loop ``python -m inference_svc`` runs on here (``--event-loop auto``: uvloop when installed)."""
    probe = subprocess.run([sys.executable, "-c", "import uvloop; print(uvloop.__version__)"], capture_output=True,
                           text=True, cwd=common.REPO_ROOT)
    return f"uvloop {probe.stdout.strip()}" if probe.returncode == 0 else "asyncio (uvloop not installed)"


def main() -> None:
    parser = common.bench_args("modelport vs KServe vs MLServer vs the bare grpc.aio floor")
    parser.add_argument("--models", default="mlp,mobilenetv2",
                        help="comma-separated subset of mlp,mobilenetv2 (a focused run: printed, not written)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated subset of {','.join(SERVERS)} (a focused run: printed, not written)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:ENV=VALUE[,ENV=VALUE]",
                        help="also run modelport with these environment variables as server modelport:NAME "
                             "(an A/B of settings in the same interleaved rounds; a focused run)")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)),
                        help="comma-separated client concurrencies (a subset: a focused run)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, --quick 1)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per cell and round (default 2)")
    parser.add_argument("--render", action="store_true",
                        help="re-render the section from results/serving.json (after a change to the report)")
    args = parser.parse_args()
    if args.render:
        data = json.loads((common.RESULTS_DIR / "serving.json").read_text())
        md = report(data, data.get("missing", {}), data["rounds"], data["seconds"])
        common.write_section("serving", md, data)
        print(md)
        return
    quick = args.quick
    rounds, seconds = (1, 1.0) if quick else (3, 2.0)
    rounds = args.rounds or rounds
    seconds = args.seconds or seconds
    wanted_models = [m for m in args.models.split(",") if m]
    wanted_servers = [s for s in args.servers.split(",") if s]
    unknown = set(wanted_models) - {"mlp", "mobilenetv2"} | set(wanted_servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown model or server: {', '.join(sorted(unknown))}")
    concurrency = tuple(int(c) for c in args.concurrency.split(",") if c)
    variants = {}
    for v in args.variant:
        name, _, assignments = v.partition(":")
        variants[name] = dict(a.split("=", 1) for a in assignments.split(",") if a)
    focused = (set(wanted_models) != {"mlp", "mobilenetv2"} or set(wanted_servers) != set(SERVERS)
               or bool(variants) or concurrency != CONCURRENCY)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    models = {"mlp": build_mlp(work / "mlp.onnx")} if "mlp" in wanted_models else {}
    mobilenet = ensure_mobilenet(allow_build=not quick) if "mobilenetv2" in wanted_models else None
    if mobilenet is not None:
        models["mobilenetv2"] = mobilenet
    servers, missing = available_servers()
    servers = [s for s in servers if s in wanted_servers] + [f"modelport:{name}" for name in variants]
    data = {"models": {}, "rounds": rounds, "seconds": seconds, "quick": quick, "missing": missing,
            "concurrency": list(concurrency), "modelport_event_loop": modelport_event_loop()}
    client = LoadClient()
    try:
        for model, path in models.items():
            data["models"][model] = measure_model(model, path, servers, client, rounds, seconds, work, variants,
                                                  concurrency)
    finally:
        client.close()
    data["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    data["cores"] = len(os.sched_getaffinity(0))
    data["command"], data["system"] = common.command_line(), common.system_info()
    md = report(data, missing, rounds, seconds)
    if focused:  # a subset is not the section: print it only
        print(md.replace("## Serving:", "## (focused run, not written) Serving:", 1))
        return
    common.write_section("serving", md, data)
    plot(data)
    print(md)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"done in {time.time() - t0:.0f}s")
