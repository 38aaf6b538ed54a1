"""Faults against real services (issue #16): crash and resume, a replica killed under load, a full disk.

Every scenario runs real service processes (``python -m converter_svc`` etc. through the
launcher of ``modelport up``, port 0) and counts every request or deploy it makes: sent,
answered OK, answered with which error code, lost (sent but never answered OK, must be 0 where
the scenario promises it).

- ``crash_and_resume``: ``kill -9`` the converter in the middle of a ``modelport deploy`` (while
  its worker runs the job), restart it on the same store, rerun; then the same with the
  optimizer; then rerun once more. The reruns finish, take every finished step from the caches
  (the deploy report marks them ``cached``), and no temp file is left (store ``tmp/``, worker
  scratch folders).
- ``inference_failover``: two inference replicas serve one model; client threads call it through
  ``Client(inference="IP1:P1,IP2:P2")`` (round_robin + gRPC retry policy, see ``Client.channel``)
  and one replica is ``kill -9``-ed mid-load. No request may be lost.
- ``full_disk``: the store on a tmpfs of a few MiB made for the run (``mount -t tmpfs``: needs
  root). An upload and an optimize job that fill it get RESOURCE_EXHAUSTED naming the store and
  the fix, leave nothing partial, the service keeps serving, and both succeed once space is freed.

``run(workdir)`` returns markdown lines for the benchmark report (``benchmarks/bench_reliability.py``);
``python -m benchmarks.reliability_faults`` prints them. The fast tests in
``tests/test_reliability_faults.py`` call the same scenarios with small sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODEL = "faulty"
N_IN, N_OUT = 64, 10
MEASURE = {"measure.warmup": "1", "measure.repeats": "5"}
"""Optimizer options of every job here: faults are under test, not latency."""


@dataclass
class Tally:
    """Requests (or deploys) of one scenario: sent, answered OK, answered with an error code, lost."""

    what: str
    notes: dict = field(default_factory=dict)
    sent: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    wrong: int = 0
    """Answered OK with a wrong result (not in ``ok``: counted as lost)."""

    @property
    def lost(self) -> int:
        """Sent but neither answered OK with the right result nor with an error code."""
        return self.sent - self.ok - sum(self.errors.values())

    def row(self) -> str:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        return f"| {self.what} | {self.sent} | {self.ok} | {errs} | {self.lost} |"


TABLE_HEAD = ["| what | sent | OK | errors by code | lost |", "|---|---:|---:|---|---:|"]


# ---- models ------------------------------------------------------------------------------------
def mlp_onnx(path: Path, hidden: int = 256, seed: int = 0) -> Path:
    """probs = softmax(relu(x @ W1 + b1) @ W2 + b2); x FP32 [-1, 64], probs FP32 [-1, 10]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("W1", rng.normal(size=(N_IN, hidden)) / 8), ("B1", rng.normal(size=(hidden,))),
        ("W2", rng.normal(size=(hidden, N_OUT)) / 16), ("B2", rng.normal(size=(N_OUT,))))]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "W2", "B2"], ["z"]), helper.make_node("Softmax", ["z"], ["probs"], axis=1)],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", N_OUT])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelport-faults")
    model.ir_version = 9
    onnx.save(model, path)
    return path


def mlp_reference(x: np.ndarray, hidden: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w1, b1 = (rng.normal(size=(N_IN, hidden)) / 8).astype(np.float32), rng.normal(size=(hidden,)).astype(np.float32)
    w2, b2 = (rng.normal(size=(hidden, N_OUT)) / 16).astype(np.float32), rng.normal(size=(N_OUT,)).astype(np.float32)
    z = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


KERAS_SCRIPT = """
import sys, keras, numpy as np
keras.utils.set_random_seed(0)
inp = keras.Input((64,), name="x")
h = keras.layers.Dense(int(sys.argv[2]), activation="relu")(inp)
out = keras.layers.Dense(10, activation="softmax", name="probs")(h)
keras.Model(inp, out).save(sys.argv[1])
"""


def mlp_keras(path: Path, hidden: int = 256) -> Path:
    """The same MLP shape as a Keras 3 ``.keras`` file, built in a subprocess (TensorFlow stays out of here)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(path), str(hidden)], check=True, env=env,
                   capture_output=True)
    return path


# ---- processes ---------------------------------------------------------------------------------
def start(names: str | tuple[str, ...], store: Path, logs: Path, env: dict[str, str] | None = None,
          args: list[str] | None = None, timeout: float = 300.0, job_args: list[str] | None = None):
    """Services as real processes (the launcher of ``modelport up``, port 0, started together) on ``store``;
    ``job_args``: extra flags of the converter and optimizer only."""
    from gateway.launcher import Launcher

    names = (names,) if isinstance(names, str) else names
    launcher = Launcher(store, ports=dict.fromkeys(names, 0), services=names, log_dir=logs, env=env,
                        extra_args={n: list(args or []) + (list(job_args or []) if n != "inference" else [])
                                    for n in names})
    launcher.start(timeout=timeout)
    return launcher


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc, no psutil)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(c) for c in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


def wait_gone(pids: list[int], timeout: float = 60.0) -> list[int]:
    """Wait (on pidfds, no polling) until every pid has exited; returns those still running at ``timeout``."""
    from modelport.tmpfiles import pid_alive

    deadline = time.monotonic() + timeout
    left = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        finally:
            os.close(fd)
        if pid_alive(pid):
            left.append(pid)
    return left


def kill9(launcher, name: str) -> list[int]:
    """SIGKILL the service process only (its workers are not signalled), reap it, and wait for its workers
    to notice and exit. Returns the worker pids that outlived it (should be none)."""
    proc = launcher.children[name].proc
    workers = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    code = proc.wait(30)
    assert code == -signal.SIGKILL, code
    return wait_gone(workers, timeout=30)


def temp_entries(store: Path, tmpdir: Path) -> list[str]:
    """What modelport left in the store's tmp/ and in the services' TMPDIR (worker scratch folders;
    onnxruntime's own ``.ses`` session file there is not ours)."""
    return sorted([f"store tmp/{p.name}" for p in (store / "tmp").glob("*")] +
                  [f"TMPDIR/{p.name}" for p in tmpdir.glob("modelport-*")])


def dead_owner_entries(store: Path, tmpdir: Path) -> list[str]:
    """Temp entries whose owner process is gone (what a sweep at start must have removed)."""
    from modelport.tmpfiles import stale

    return [e for e in temp_entries(store, tmpdir) if stale(e.rsplit("/", 1)[-1])]


# ---- crash and resume --------------------------------------------------------------------------
@dataclass
class CrashResume:
    deploys: Tally
    reports: list[dict]
    """The DeployReport dicts of the runs that finished (to_dict)."""
    failures: list[tuple[str, str]]
    """(stage, code) of each deploy the kill interrupted."""
    orphans: list[int]
    """Worker pids that outlived their killed service."""
    leftovers_after_restart: list[str]
    leftovers_at_end: list[str]
    cached: list[list[str]]
    """Stages from cache, per finished run."""
    seconds: list[float]
    swept: list[str] = field(default_factory=list)
    """The services' log lines saying what their start-up sweep removed."""
    left_by_kill: dict[str, list[str]] = field(default_factory=dict)
    """Per killed service, its job's work folders still in the store's tmp/ once its workers were gone: what the
    restart must sweep. A worker that notices its service died while it can still unwind removes its own folder
    (nothing to sweep); one stopped harder leaves it."""


def crash_and_resume(workdir: Path, hidden: int = 256, optimize: tuple[str, ...] = ("graph",),
                     args: list[str] | None = None, source: str = "keras") -> CrashResume:
    """kill -9 the converter, then the optimizer, mid-deploy; restart each on the same store and rerun.
    ``args``: extra flags of the converter and optimizer (the fast test passes ``--warm-workers 0``);
    ``source``: the deployed model, ``keras`` (a conversion lasts seconds: the kill lands in the middle of it)
    or ``onnx`` (its conversion may be over before the kill lands)."""
    from modelport import Client
    from modelport.deploy import Progress, StageFailed

    workdir.mkdir(parents=True, exist_ok=True)
    store, logs, tmpdir = workdir / "store", workdir / "logs", workdir / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = {"TMPDIR": str(tmpdir)}
    model = mlp_keras(workdir / "mlp.keras", hidden) if source == "keras" else mlp_onnx(workdir / "mlp.onnx", hidden)
    first = start(("converter", "optimizer", "inference"), store, logs, env, job_args=args)
    services = dict.fromkeys(first.children, first)
    launchers = [first]
    tally = Tally("deploys (kill -9 converter, then optimizer, mid-job)")
    out = CrashResume(tally, [], [], [], [], [], [], [])

    class KillMidJob(Progress):
        """Kills ``victim``'s service once its worker is in the middle of the job: for convert at the
        "converting" event, for optimize at an event of the worker, and in both cases only once the job's work
        folder exists in the store's tmp/ (what the restart must sweep; checked, not assumed from the order of
        events, after one loaded run of the suite found nothing to sweep)."""

        def __init__(self, victim: str | None):
            self.victim, self.orphans = victim, []

        def update(self, stage: str, fraction: float, message: str = "") -> None:
            at = "converting" if stage == "convert" else ""
            if (self.victim == stage and not message.startswith(("queued", "done")) and message.startswith(at)
                    and any((store / "tmp").glob(f"{stage}-*"))):  # the job's work folder exists: kill now
                self.victim = None
                name = {"convert": "converter", "optimize": "optimizer"}[stage]
                self.orphans += kill9(services[name], name)
                out.left_by_kill[name] = sorted(p.name for p in (store / "tmp").glob(f"{stage}-*"))

    def deploy(victim: str | None):
        addrs = {n: launcher.addresses()[n] for n, launcher in services.items()}
        progress = KillMidJob(victim)
        tally.sent += 1
        t0 = time.perf_counter()
        try:
            with Client(**addrs, timeout=600) as client:
                # the optimizer measures with its defaults here: the job lasts seconds, the kill lands in it
                report = client.deploy(model, name=MODEL, optimize=list(optimize), progress=progress)
        except StageFailed as e:
            tally.errors[e.code] += 1
            out.failures.append((e.stage, e.code))
            return None
        finally:
            out.orphans += progress.orphans
        tally.ok += 1
        out.seconds.append(time.perf_counter() - t0)
        out.reports.append(report.to_dict())
        out.cached.append(report.cached_stages())
        return report

    try:
        for victim in ("convert", "optimize"):
            deploy(victim)
            name = "converter" if victim == "convert" else "optimizer"
            services[name] = start(name, store, logs, env, job_args=args)  # same store; the sweep at start runs
            launchers.append(services[name])
            out.leftovers_after_restart += dead_owner_entries(store, tmpdir)
        deploy(None)  # finishes: upload and convert from cache, optimize runs
        deploy(None)  # everything from cache
    finally:
        for launcher in launchers:
            launcher.stop()
    out.leftovers_at_end = temp_entries(store, tmpdir)
    out.swept = [line.split(": ", 1)[-1] for log in sorted(logs.glob("*.log"))
                 for line in log.read_text(errors="replace").splitlines() if "stale temp entr" in line]
    return out


# ---- a replica killed under load ---------------------------------------------------------------
def write_repository(repo: Path, hidden: int = 256) -> Path:
    (repo / MODEL / "1").mkdir(parents=True, exist_ok=True)
    mlp_onnx(repo / MODEL / "1" / "model.onnx", hidden)
    return repo


def inference_failover(workdir: Path, requests: int = 2000, threads: int = 8, kill_at: float = 0.3,
                       hidden: int = 256) -> Tally:
    """Two inference replicas; ``threads`` clients send ``requests`` in all through one balanced SDK Client;
    ``kill -9`` of replica 1 once ``kill_at`` of them are answered. Every request is checked and counted."""
    from modelport import Client

    workdir.mkdir(parents=True, exist_ok=True)
    repo = write_repository(workdir / "repo", hidden)
    args = ["--repository", str(repo), "--intra-op-threads", "1", "--execution-provider", "cpu"]
    replicas = [start("inference", workdir / f"store{i}", workdir / f"logs{i}", args=args) for i in range(2)]
    tally = Tally(f"inference requests, {threads} clients, 2 replicas, kill -9 one at {kill_at:.0%}")
    lock = threading.Lock()
    reached = threading.Event()
    counter = iter(range(requests))
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(64, 1, N_IN)).astype(np.float32)
    expected = [mlp_reference(x, hidden) for x in xs]
    address = ",".join(next(iter(r.addresses().values())) for r in replicas)

    def client_loop(client) -> None:
        while True:
            with lock:
                i = next(counter, None)
                if i is None:
                    return
                tally.sent += 1
            try:
                out = client.infer(MODEL, {"x": xs[i % len(xs)]}, timeout=60)
                good = np.allclose(out["probs"], expected[i % len(xs)], atol=1e-5)
                with lock:
                    tally.ok += good
                    tally.wrong += not good
            except Exception as e:  # noqa: BLE001 - counted by code
                with lock:
                    tally.errors[getattr(e, "code", type(e).__name__)] += 1
            with lock:
                if tally.ok + sum(tally.errors.values()) >= kill_at * requests:
                    reached.set()

    try:
        with Client(inference=address, timeout=120) as client:
            client.wait_ready(services=["inference"], timeout=60)
            pool = [threading.Thread(target=client_loop, args=(client,)) for _ in range(threads)]
            for t in pool:
                t.start()
            if not reached.wait(600):
                raise RuntimeError(f"the load never reached {kill_at:.0%} of {requests} requests: {tally}")
            orphans = kill9(replicas[0], "inference")
            for t in pool:
                t.join()
        tally.notes["survivor_served"] = inference_count(replicas[1].addresses()["inference"])
    finally:
        for r in replicas:
            r.stop()
    assert not orphans, orphans
    return tally


def inference_count(address: str) -> int:
    """Requests a replica executed for the model (its KServe ModelStatistics)."""
    import grpc

    from modelport.kserve.v2 import grpc_service_pb2 as kpb
    from modelport.kserve.v2 import grpc_service_pb2_grpc as kgrpc

    with grpc.insecure_channel(address) as ch:
        stats = kgrpc.GRPCInferenceServiceStub(ch).ModelStatistics(kpb.ModelStatisticsRequest(name=MODEL), timeout=30)
    return sum(s.inference_count for s in stats.model_stats)


# ---- full disk ---------------------------------------------------------------------------------
class MountError(RuntimeError):
    """A tmpfs could not be mounted (the scenarios need root or CAP_SYS_ADMIN)."""


@contextlib.contextmanager
def small_disk(where: Path, size_mib: int) -> Iterator[Path]:
    """A real filesystem of ``size_mib`` MiB (tmpfs) at ``where``, unmounted after."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise MountError(f"cannot mount a {size_mib} MiB tmpfs at {where} (uid {os.getuid()}): "
                         f"{proc.stderr.strip() or proc.returncode}; run as root or with CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill ``disk`` with one file until only about ``leave_bytes`` are free; returns the file."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "ab") as f:
        block = b"\0" * (1 << 20)
        need = free - leave_bytes
        while need > 0:
            f.write(block[: min(need, len(block))])
            need -= len(block)
    return filler


@dataclass
class DiskFull:
    attempts: Tally
    messages: list[str]
    """The RESOURCE_EXHAUSTED messages (upload, job)."""
    partial: list[str]
    """Store entries or temp files the failures left (must be empty)."""
    serving_while_full: list[str]
    """grpc.health.v1 status after each failure."""
    blobs_before: int = 0
    blobs_after_failures: int = 0
    by_operation: dict[str, Tally] = field(default_factory=dict)


def store_entries(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for sub in ("blobs", "meta", "tmp", "unpacked") for p in (store / sub).rglob("*")
            if p.is_file()}


def full_disk(workdir: Path, disk_mib: int = 8, hidden: int = 1024, upload_mib: int = 6,
              convert: bool = False) -> DiskFull:
    """Upload and jobs on a store that fills up; then free the space and do them again.

    The optimizer (and with ``convert`` the converter, which imports TensorFlow) runs on a store on a
    ``disk_mib`` MiB tmpfs. Sequence: upload the model (OK); fill the disk to 2 MiB free and upload
    ``upload_mib`` MiB (RESOURCE_EXHAUSTED); fill to 64 KiB free and run an fp16 optimize job (and an
    ONNX convert job), whose work files do not fit (RESOURCE_EXHAUSTED); free the space and do all of
    it again (OK)."""
    from gateway.launcher import health_status
    from modelport import Client
    from modelport.client import ClientError

    workdir.mkdir(parents=True, exist_ok=True)
    tmpdir = workdir / "tmp"
    tmpdir.mkdir(exist_ok=True)
    model = mlp_onnx(workdir / "mlp.onnx", hidden)  # 64x1024 + 1024x10 weights: ~300 KiB
    big = workdir / "big.bin"
    big.write_bytes(np.random.default_rng(2).bytes(upload_mib << 20))
    tally = Tally("upload and jobs on a full store (all)")
    out = DiskFull(tally, [], [], [])
    names = ("converter", "optimizer") if convert else ("optimizer",)
    with small_disk(workdir / "disk", disk_mib) as disk:
        store = disk / "store"
        svc = start(names, store, workdir / "logs", env={"TMPDIR": str(tmpdir)})
        try:
            addrs = svc.addresses()
            with Client(optimizer=addrs["optimizer"], converter=addrs.get("converter", addrs["optimizer"]),
                        timeout=300) as client:
                def attempt(what: str, fn):
                    op = out.by_operation.setdefault(what, Tally(what))
                    for t in (tally, op):
                        t.sent += 1
                    try:
                        res = fn()
                    except ClientError as e:
                        for t in (tally, op):
                            t.errors[e.code] += 1
                        if e.code == "RESOURCE_EXHAUSTED":
                            out.messages.append(e.message)
                        return None
                    for t in (tally, op):
                        t.ok += 1
                    return res

                def health() -> str:
                    return ",".join(health_status(a) for a in addrs.values())

                ref = attempt("upload", lambda: client.upload(model, service="optimizer"))
                out.blobs_before = len(store_entries(store))
                # 1. an upload larger than the space left
                filler = fill(disk, leave_bytes=2 << 20)
                before = store_entries(store)
                attempt("upload", lambda: client.upload(big, service="optimizer"))
                out.partial += sorted(store_entries(store) - before)
                out.serving_while_full.append(health())
                # 2. jobs whose work files and results do not fit
                filler.unlink()
                filler = fill(disk, leave_bytes=64 << 10)
                before = store_entries(store)
                jobs = {"optimize job (fp16)": lambda: client.optimize(ref, ["fp16"], output_format="onnx",
                                                                        options=MEASURE)}
                if convert:
                    jobs["convert job (onnx)"] = lambda: client.convert(ref, "onnx")
                for what, job in jobs.items():
                    attempt(what, job)
                    out.serving_while_full.append(health())
                out.partial += sorted(store_entries(store) - before)
                out.blobs_after_failures = len(store_entries(store))
                # 3. space freed: everything works again
                filler.unlink()
                attempt("upload", lambda: client.upload(big, service="optimizer"))
                for what, job in jobs.items():
                    attempt(what, job)
        finally:
            svc.stop()
        out.partial += [e for e in temp_entries(store, tmpdir)]
    return out


# ---- report ------------------------------------------------------------------------------------
def run(workdir: Path) -> list[str]:
    """Run every fault scenario under ``workdir``; markdown lines for "Crash and resume" and "Full disk"."""
    from benchmarks.common import load_average

    workdir = Path(workdir)
    lines = ["### Crash and resume", ""]
    load0, t0 = load_average(), time.perf_counter()
    cr = crash_and_resume(workdir / "crash")
    fo = inference_failover(workdir / "failover")
    took = time.perf_counter() - t0
    lines += [*TABLE_HEAD, cr.deploys.row(), fo.row(), ""]
    lines += [
        f"- Real processes (`python -m converter_svc` etc., port 0, one store); {took:.0f} s for both scenarios; "
        f"load average {load0} before, {load_average()} after. Command: `python -m benchmarks.reliability_faults`.",
        f"- Interrupted deploys failed at (stage, code): {', '.join(f'{s} {c}' for s, c in cr.failures)}; "
        f"workers that outlived their killed service: {len(cr.orphans)}.",
        "- Deployed: a Keras 3 MLP (`.keras`, 64→256→10) → ONNX → `graph` optimization → served. "
        f"Reruns took {cr.seconds[0]:.1f} s (optimize redone) and {cr.seconds[-1]:.2f} s (every job step cached: "
        f"{cr.seconds[0] / max(cr.seconds[-1], 1e-9):.0f}x faster).",
        "- Reruns after the restarts took these stages from the caches: "
        + "; ".join(f"run {i + 1}: {', '.join(c) or 'none'}" for i, c in enumerate(cr.cached)) + ".",
        f"- Temp entries of killed processes left after each restart (store tmp/, worker scratch): "
        f"{len(cr.leftovers_after_restart)}; left after the services stopped: {len(cr.leftovers_at_end)}.",
        f"- Inference: one of two replicas `kill -9`-ed under load; the SDK client (`Client(inference=\"IP1:P1,IP2:P2\")`:"
        f" round_robin, grpc.health.v1 checking, retry policy on UNAVAILABLE/CANCELLED, 5 attempts) lost "
        f"{fo.lost} of {fo.sent}; the surviving replica served {fo.notes.get('survivor_served')}.",
        "",
        "### Full disk",
        "",
    ]
    t0 = time.perf_counter()
    try:
        fd = full_disk(workdir / "disk", convert=True)
    except MountError as e:
        return lines + [f"Not measured: {e}"]
    took = time.perf_counter() - t0
    lines += [*TABLE_HEAD, *(t.row() for t in fd.by_operation.values()), ""]
    lines += [
        "- Store on an 8 MiB tmpfs. Sequence: upload the model → OK; disk filled to 2 MiB free, a 6 MiB upload → "
        "RESOURCE_EXHAUSTED; filled to 64 KiB free, an optimize job (fp16) and a convert job → RESOURCE_EXHAUSTED; "
        "space freed, the same upload and jobs → OK.",
        *(f"- Message: \"{m}\"" for m in dict.fromkeys(fd.messages)),
        f"- Partial entries or temp files left by the failures: {len(fd.partial)}; health while full: "
        f"{', '.join(fd.serving_while_full)}; {took:.0f} s.",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="where stores, logs and mounts go (default: a temp dir)")
    args = ap.parse_args(argv)
    from benchmarks.common import system_info_markdown

    print(system_info_markdown() + "\n")
    if args.workdir is not None:
        print("\n".join(run(args.workdir)))
        return 0
    with tempfile.TemporaryDirectory(prefix="modelport-faults-") as d:
        print("\n".join(run(Path(d))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
