"""Large models through the converter: peak memory of the whole process tree per weight byte, with
plain tf2onnx side by side (issue 13).

Models (random weights, built here): VGG-16 (``keras.applications.VGG16(weights=None)``, 553 MB of
float32 weights), and Keras 3 transformer language models with d_model 2048, 16 heads, FFN 8192, vocab
32000 and sequence 128: 4 blocks (332M parameters, 1.33 GB) and 9 blocks (584M, 2.34 GB: past
protobuf's 2 GiB). Each model is built once in its own process and written in every source format asked
for (``--source``): ``.keras`` (``model.save("x.keras")``), legacy ``.h5`` (``model.save("x.h5")``), SavedModel
(``model.export(dir)``, Keras 3's way to write one) and SavedModel (``tf.saved_model.save(model, dir)``, TensorFlow's
way), then for each:

- **modelport**: a converter service in its own process (one warm worker, TensorFlow pre-imported)
  gets the source through Upload exactly as the CLI sends it (``client.upload_source``: a file as itself, a
  SavedModel folder as one tar archive) and converts it to ONNX (parity on 8 samples included, result
  stored). Peak RSS is the sum over the service and its workers, sampled every 50 ms.
- **plain tf2onnx**: in a fresh process, ``keras.saving.load_model`` then
  ``tf2onnx.convert.from_function(..., large_model=True)`` (what the issue tried). It runs under a
  memory cap enforced by this benchmark (the machine is shared): when its RSS passes the cap it is
  killed and reported as "killed at N GB".

- **then** on the converted artifact (same store): int8-dynamic through an optimizer service subprocess, and
  LoadModel + first inference + steady-state inference of the FP32 and INT8 results through an inference
  service subprocess, each stage with the peak RSS of that service's tree over the weight bytes.

One multi-GB process at a time. Targets: conversion peak <= 2.5x the weight bytes (the model's float32 weights,
whatever the source format holds on disk), served <= 1.5x.

    .venv/bin/python -m benchmarks.bench_large            # VGG-16, 4-block and 9-block transformers
    .venv/bin/python -m benchmarks.bench_large --quick    # VGG-16 only, no plain tf2onnx
    .venv/bin/python -m benchmarks.bench_large --models t4 --cap-gb 14
    .venv/bin/python -m benchmarks.bench_large --models t4,t9 --skip-plain   # plain figures kept from the last run
    .venv/bin/python -m benchmarks.bench_large --models t28 --skip-plain     # the largest (6.15 GB), ~25 min
    .venv/bin/python -m benchmarks.bench_large --models t4 --source h5,savedmodel --skip-plain --skip-serving
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import common

TARGET = 2.5
GB = 1e9
MODELS = {
    "vgg16": "VGG-16 (224x224, weights=None)",
    "t1": "transformer LM, 1 block (d 2048, FFN 8192, vocab 32000, seq 128)",
    "t4": "transformer LM, 4 blocks (d 2048, FFN 8192, vocab 32000, seq 128)",
    "t9": "transformer LM, 9 blocks (d 2048, FFN 8192, vocab 32000, seq 128)",
    # The largest of the family this machine type (24 GB) takes through conversion and serving with room to spare
    # (conversion peaks at about 1.6x the weights + the idle tree); its int8-dynamic is refused by admission.
    "t28": "transformer LM, 28 blocks (d 2048, FFN 8192, vocab 32000, seq 128)",
}
# Source formats a model is written in and uploaded as (rows of other formats than .keras are keyed NAME.SOURCE).
SOURCES = {
    "keras": ".keras",
    "h5": "legacy .h5",
    "savedmodel": "SavedModel (model.export)",
    "tf_saved_model": "SavedModel (tf.saved_model.save)",
}


def source_path(folder: Path, name: str, source: str) -> Path:
    """Where ``build`` writes model ``name`` in format ``source``."""
    return folder / (f"{name}-{source}" if "saved" in source else f"{name}.{source}")


def row_key(name: str, source: str) -> str:
    return name if source == "keras" else f"{name}.{source}"


# ---- models ---------------------------------------------------------------------------------------

def transformer_lm(keras, *, blocks: int, vocab: int = 32000, seq: int = 128, dim: int = 2048, heads: int = 16,
                   ff: int = 8192):
    """Post-norm transformer over int32 token ids with per-token logits (tied to nothing)."""
    ids = keras.Input((seq,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocab, dim, name="tokens")(ids)
    for b in range(blocks):
        a = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=dim // heads, name=f"attn_{b}")(x, x)
        x = keras.layers.LayerNormalization(name=f"ln_a_{b}")(keras.layers.Add()([x, a]))
        f = keras.layers.Dense(ff, activation="gelu", name=f"ff_in_{b}")(x)
        f = keras.layers.Dense(dim, name=f"ff_out_{b}")(f)
        x = keras.layers.LayerNormalization(name=f"ln_f_{b}")(keras.layers.Add()([x, f]))
    logits = keras.layers.Dense(vocab, name="logits")(x)
    return keras.Model(ids, logits, name=f"transformer_lm_{blocks}")


def build(name: str, folder: Path, sources: list[str], single_out: Path | None = None) -> None:
    """Build model ``name`` with random weights once and write it in each of ``sources`` into ``folder``
    (``source_path``; ``single_out`` instead for a single source), with ``NAME.json`` holding its float32 weight bytes."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    if name == "vgg16":
        model = keras.applications.VGG16(weights=None)
    elif name in ("t1", "t4", "t9", "t28"):
        model = transformer_lm(keras, blocks=int(name[1:]))
    else:
        raise SystemExit(f"unknown model {name}")
    weight_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
    (folder / f"{name}.json").write_text(json.dumps({"weight_bytes": weight_bytes}))
    for source in sources:
        out = single_out if single_out is not None and len(sources) == 1 else source_path(folder, name, source)
        if source == "savedmodel":
            model.export(str(out), verbose=False)
        elif source == "tf_saved_model":
            import tensorflow as tf

            tf.saved_model.save(model, str(out))
        else:
            model.save(str(out))


def plain_tf2onnx(path: Path, out: Path) -> None:
    """What a user would try: load the .keras file and call tf2onnx's from_function, large_model=True."""
    import keras
    import tensorflow as tf
    import tf2onnx

    model = keras.saving.load_model(str(path), compile=False)
    spec = [tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=t.name.split(":")[0]) for t in model.inputs]
    fn = tf.function(lambda *a: model(a[0] if len(a) == 1 else list(a), training=False))
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=17, large_model=True, output_path=str(out))


# ---- memory sampling ----------------------------------------------------------------------------

@dataclass
class TreeMemory:
    """Peak RSS of a process and its descendants, and whether the cap killed it."""

    peak_bytes: int = 0
    killed_at_bytes: int = 0
    samples: int = 0


class TreeSampler:
    """Samples the summed RSS of ``pid`` and its descendants every ``interval`` s; kills the tree when
    it passes ``cap_bytes`` (0 = no cap). ``mark(stage)`` attributes the following samples to a stage."""

    def __init__(self, pid: int, cap_bytes: int = 0, interval: float = 0.05):
        import psutil

        self.proc = psutil.Process(pid)
        self.cap = cap_bytes
        self.interval = interval
        self.result = TreeMemory()
        self.stage_peaks: dict[str, int] = {}
        self.stage = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def mark(self, stage: str) -> None:
        self.stage = stage

    def rss(self) -> int:
        import psutil

        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            rss = self.rss()
            self.result.samples += 1
            self.result.peak_bytes = max(self.result.peak_bytes, rss)
            if self.stage:
                self.stage_peaks[self.stage] = max(self.stage_peaks.get(self.stage, 0), rss)
            if self.cap and rss > self.cap and not self.result.killed_at_bytes:
                self.result.killed_at_bytes = rss
                try:
                    for p in [*self.proc.children(recursive=True), self.proc]:
                        p.kill()
                except psutil.Error:
                    pass
            self._stop.wait(self.interval)


def run_capped(cmd: list[str], cap_bytes: int, timeout: float) -> tuple[int, TreeMemory, float, str]:
    """Run ``cmd`` with its tree sampled and capped; (exit code, memory, seconds, stderr tail)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=common.REPO_ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"})
        with TreeSampler(proc.pid, cap_bytes) as sampler:
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
    return rc, sampler.result, time.perf_counter() - t0, " | ".join(tail)[-400:]


# ---- modelport through the converter service ------------------------------------------------------

def modelport_convert(path: Path, store: Path, cap_bytes: int) -> dict:
    """Upload (as the CLI sends ``path``) + Convert through a converter service subprocess; peak RSS of its tree
    per stage."""
    from modelport.client import upload_source
    from modelport.runtime.artifacts import stream_requests
    from modelport.runtime.channels import make_channel
    from modelport.v1 import artifacts_pb2_grpc, converter_pb2, converter_pb2_grpc

    proc, address = common.start_service_subprocess("converter_svc", store=store, timeout=300)
    out: dict = {}
    try:
        with TreeSampler(proc.pid, cap_bytes) as sampler:
            time.sleep(1.0)  # a few idle samples: the service with its warm worker
            out["idle_bytes"] = sampler.rss()
            channel = make_channel(address)
            arts = artifacts_pb2_grpc.ArtifactsStub(channel)
            conv = converter_pb2_grpc.ConverterStub(channel)
            sampler.mark("upload")
            t0 = time.perf_counter()
            src = upload_source(path)
            ref = arts.Upload(stream_requests(src.chunks, src.size, src.media_type), timeout=1800)
            out["upload_bytes"] = src.size
            out["upload_s"] = time.perf_counter() - t0
            stages: dict[str, float] = {}
            last, t_last = "queued", time.perf_counter()
            t0 = time.perf_counter()
            error = ""
            try:
                for ev in conv.Convert(converter_pb2.ConvertRequest(source=ref, target_format="onnx"), timeout=3600):
                    now = time.perf_counter()
                    stages[last] = stages.get(last, 0.0) + now - t_last
                    # The source's parity run is part of the "loading" stage: measured on its own.
                    last = "source parity run" if ev.message.startswith("running the") else ev.stage
                    t_last = now
                    sampler.mark(last)
                    if ev.stage == "done":
                        res = ev.convert_result
                        out["parity_max_abs_diff"] = max(o.max_abs_diff for o in res.parity.outputs)
                        out["parity_passed"] = res.parity.passed
                        out["artifact_bytes"] = res.artifact.size
                        out["media_type"] = res.artifact.media_type
                        out["details"] = dict(res.info.details)
                        out["artifact"] = {"digest": res.artifact.digest, "size": res.artifact.size,
                                           "media_type": res.artifact.media_type}
            except Exception as e:  # noqa: BLE001 - reported in the table
                error = (e.details() if callable(getattr(e, "details", None)) else "") or str(e)
            out["convert_s"] = time.perf_counter() - t0
            out["stages_s"] = stages
            out["error"] = error
            channel.close()
        out["peak_bytes"] = sampler.result.peak_bytes
        out["killed_at_bytes"] = sampler.result.killed_at_bytes
        out["stage_peaks"] = sampler.stage_peaks
    finally:
        common.stop_service_subprocess(proc)
    return out


def _ref(art: dict):
    from modelport.v1 import artifacts_pb2

    return artifacts_pb2.ArtifactRef(digest=art["digest"], size=art["size"], media_type=art["media_type"])


# Few timed runs: the optimizer's latency figures are not what this benchmark is about (bench_optimize is).
OPTIMIZE_OPTIONS = {"measure.warmup": "1", "measure.repeats": "3"}
# Evaluation samples given to the optimizer (without eval data it generates 64, and holds the baseline's and the
# candidate's outputs for all of them: 1 GB each for a 32000-way logits output over 128 tokens).
EVAL_SAMPLES = 8


def _eval_npz(store: Path, artifact: dict, out: Path) -> Path:
    """EVAL_SAMPLES generated inputs of the converted model (read from model.onnx inside its folder artifact)."""
    import tarfile

    import numpy as np
    import onnx

    from modelport.store import ArtifactStore

    with tarfile.open(ArtifactStore(store).path(artifact["digest"])) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".onnx"))
        graph = onnx.load_model_from_string(tar.extractfile(member).read()).graph
    inits = {t.name for t in graph.initializer}
    rng = np.random.default_rng(0)
    arrays = {}
    for vi in graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        shape = [EVAL_SAMPLES] + [d.dim_value or 1 for d in tt.shape.dim][1:]
        arrays[vi.name] = (rng.integers(0, 1000, shape).astype(dtype) if np.issubdtype(dtype, np.integer)
                           else rng.standard_normal(shape).astype(dtype))
    np.savez(out, **arrays)
    return out


def modelport_optimize(store: Path, artifact: dict, cap_bytes: int, technique: str = "int8-dynamic") -> dict:
    """Optimize ``technique`` on the converted artifact (same store) through an optimizer service subprocess of
    its own; peak RSS of its tree per job stage."""
    from modelport import Client

    proc, address = common.start_service_subprocess("optimizer_svc", store=store, timeout=300)
    out: dict = {}
    try:
        with TreeSampler(proc.pid, cap_bytes) as sampler:
            time.sleep(1.0)
            out["idle_bytes"] = sampler.rss()
            stages: dict[str, float] = {}
            last, t_last = "queued", time.perf_counter()

            def on_event(ev) -> None:
                nonlocal last, t_last
                now = time.perf_counter()
                stages[last] = stages.get(last, 0.0) + now - t_last
                # The baseline's measurement apart from the candidates' (both are the job's "measuring" stage).
                last = "measuring baseline" if ev.message == "measuring the baseline" else ev.stage.split(":")[0]
                t_last = now
                sampler.mark(last)

            t0 = time.perf_counter()
            try:
                with Client(optimizer=address, timeout=7200) as client:
                    from modelport import media

                    evals = client.upload(_eval_npz(store, artifact, store.parent / "eval.npz"), media.NPZ,
                                          service="optimizer")
                    res = client.optimize(_ref(artifact), [technique], max_accuracy_drop=1.0, eval_data=evals,
                                          options=OPTIMIZE_OPTIONS, on_event=on_event)
                q = next(c for c in res.candidates if c.technique == technique)
                out.update(chosen=res.chosen_technique, note=q.note, size_bytes=q.size_bytes,
                           baseline_bytes=res.baseline.size_bytes, max_abs_diff=q.max_abs_diff,
                           cosine=q.details.get("cosine", ""), latency_ratio=q.details.get("latency_ratio_paired", ""),
                           build_s=q.details.get("build_seconds", ""))
                if res.chosen_technique == technique:
                    out["artifact"] = {"digest": res.artifact.digest, "size": res.artifact.size,
                                       "media_type": res.artifact.media_type}
                out["error"] = ""
            except Exception as e:  # noqa: BLE001 - reported in the table
                out["error"] = str(e)[:300]
            out["optimize_s"] = time.perf_counter() - t0
            out["stages_s"] = stages
        out.update(peak_bytes=sampler.result.peak_bytes, killed_at_bytes=sampler.result.killed_at_bytes,
                   stage_peaks=sampler.stage_peaks)
    finally:
        common.stop_service_subprocess(proc)
    return out


STEADY_RUNS = 10


def _feed(meta) -> dict:
    """One sample for each input of the served model (batch 1; token ids for integer inputs)."""
    import numpy as np

    from modelport.kserve.codec import numpy_dtype

    rng = np.random.default_rng(0)
    feed = {}
    for t in meta.inputs:
        shape = [d if d > 0 else 1 for d in t.shape]
        dtype = numpy_dtype(t.datatype)
        feed[t.name] = (rng.integers(0, 1000, shape).astype(dtype) if np.issubdtype(dtype, np.integer)
                        else rng.standard_normal(shape).astype(dtype))
    return feed


def modelport_serve(store: Path, artifacts: dict[str, dict], cap_bytes: int) -> dict:
    """LoadModel each artifact (FP32, INT8) from the shared store into a fresh inference service subprocess of
    its own, then one first inference and STEADY_RUNS more (batch 1); peak RSS of that service per stage; then
    unload (and the RSS left)."""
    import statistics

    from modelport import Client

    out: dict = {"stage_peaks": {}, "peak_bytes": 0, "killed_at_bytes": 0}
    for label, art in artifacts.items():
        proc, address = common.start_service_subprocess("inference_svc", store=store, timeout=300)
        r: dict = {}
        try:
            with TreeSampler(proc.pid, cap_bytes) as sampler, Client(inference=address, timeout=3600) as client:
                time.sleep(1.0)
                r["idle_bytes"] = sampler.rss()
                try:
                    sampler.mark(f"{label} load")
                    t0 = time.perf_counter()
                    client.load_model(label, _ref(art))
                    r["load_s"] = time.perf_counter() - t0
                    feed = _feed(client.model_metadata(label))
                    sampler.mark(f"{label} first inference")
                    t0 = time.perf_counter()
                    client.infer(label, feed)
                    r["first_s"] = time.perf_counter() - t0
                    sampler.mark(f"{label} steady")
                    times = []
                    for _ in range(STEADY_RUNS):
                        t0 = time.perf_counter()
                        client.infer(label, feed)
                        times.append(time.perf_counter() - t0)
                    r["steady_p50_s"] = statistics.median(times)
                    sampler.mark("")
                    r["resident_bytes"] = sampler.rss()
                    client.unload_model(label)
                    r["unloaded_bytes"] = sampler.rss()
                    r["error"] = ""
                except Exception as e:  # noqa: BLE001 - reported in the table
                    r["error"] = str(e)[:300]
            out["stage_peaks"].update(sampler.stage_peaks)
            out["peak_bytes"] = max(out["peak_bytes"], sampler.result.peak_bytes)
            out["killed_at_bytes"] = out["killed_at_bytes"] or sampler.result.killed_at_bytes
        finally:
            common.stop_service_subprocess(proc)
        out[label] = r
    return out


# ---- report ---------------------------------------------------------------------------------------

def _gb(n: float | None) -> str:
    return f"{n / GB:.2f} GB" if n else "-"


def _x(n: float | None, w: int) -> str:
    return f"{n / w:.2f}x" if n and w else "-"


def main() -> None:
    p = common.bench_args(__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated subset of: " + ", ".join(MODELS))
    p.add_argument("--source", default="keras",
                   help="comma-separated source formats each model is written in and converted from: "
                        + ", ".join(SOURCES) + " (default keras)")
    p.add_argument("--cap-gb", type=float, default=0.0,
                   help="memory cap per measured process tree (default: MemAvailable minus 3 GB, at most 18 GB)")
    p.add_argument("--skip-plain", action="store_true",
                   help="do not run plain tf2onnx (its figures from the last results/large.json are kept, marked)")
    p.add_argument("--skip-serving", action="store_true", help="convert only: no int8-dynamic, load or inference")
    p.add_argument("--render", action="store_true", help="re-render the section from results/large.json")
    # --build MODEL FOLDER SOURCES (every source format into FOLDER), or --build MODEL OUT.keras (bench_large_techniques)
    p.add_argument("--build", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    p.add_argument("--plain", nargs=2, metavar=("KERAS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build:
        if len(args.build) == 2:
            return build(args.build[0], Path(args.build[1]).parent, ["keras"], single_out=Path(args.build[1]))
        return build(args.build[0], Path(args.build[1]), args.build[2].split(","))
    if args.plain:
        return plain_tf2onnx(Path(args.plain[0]), Path(args.plain[1]))
    if args.render:
        results = json.loads((common.RESULTS_DIR / "large.json").read_text())
        md = render(results)
        (common.RESULTS_DIR / "large.md").write_text(md.rstrip() + "\n")
        return print(md)

    from modelport.memory import available_bytes

    default = ["vgg16"] if args.quick else ["vgg16", "t4", "t9"]  # t28 (6.15 GB) on its own: --models t28
    names = [n for n in (args.models.split(",") if args.models else default) if n]
    sources = [s for s in args.source.split(",") if s]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise SystemExit(f"--source: choose from {', '.join(SOURCES)} (got {args.source!r})")
    cap = int(args.cap_gb * GB) if args.cap_gb else int(min(18 * GB, available_bytes().available - 3 * GB))
    results: dict = {"cap_bytes": cap, "models": {}}
    last = common.RESULTS_DIR / "large.json"
    last_results = json.loads(last.read_text()) if last.is_file() else {}
    previous, last_command = last_results.get("models", {}), last_results.get("command", "")
    me = [sys.executable, "-m", "benchmarks.bench_large"]
    with tempfile.TemporaryDirectory(prefix="bench-large-", dir=os.environ.get("MODELPORT_BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        for name in names:
            rc, mem, secs, tail = run_capped([*me, "--build", name, str(tmp), ",".join(sources)], cap, 3600)
            if rc != 0:
                raise SystemExit(f"building {name} failed ({rc}): {tail}")
            w = json.loads((tmp / f"{name}.json").read_text())["weight_bytes"]
            print(f"[{name}] built in {secs:.0f}s, {w / GB:.2f} GB of weights, written as {', '.join(sources)}",
                  flush=True)
            for source in sources:
                path = source_path(tmp, name, source)
                key = row_key(name, source)
                results["models"][key] = run_source(args, name, source, path, w, secs, mem, cap, tmp, me,
                                                    previous.get(key, {}), last_results)
                subprocess.run(["rm", "-rf", str(path)], check=False)

    # Models not re-run keep their last figures (marked), so a partial run does not drop rows of the section.
    for name, r in previous.items():
        if name not in results["models"]:
            results["models"][name] = {**r, "previous_run": r.get("previous_run") or last_command}
    results["command"] = common.command_line()
    md = render(results)
    common.write_section("large", md, results)
    print(md)


def run_source(args, name: str, source: str, path: Path, w: int, build_s: float, build_mem: TreeMemory, cap: int,
               tmp: Path, me: list[str], previous: dict, last_results: dict) -> dict:
    """Convert (then optimize and serve, unless skipped) model ``name`` uploaded as ``source``; its row."""
    from modelport import formats
    from modelport.memory import weight_bytes

    key = row_key(name, source)
    fmt = {"keras": formats.KERAS, "h5": formats.H5, "savedmodel": formats.SAVEDMODEL,
           "tf_saved_model": formats.SAVEDMODEL}[source]
    r: dict = {"label": MODELS[name], "source": source, "weight_bytes": w,
               "source_weight_bytes": weight_bytes(path, fmt),
               "build": {"seconds": build_s, "peak_bytes": build_mem.peak_bytes}}
    store = tmp / f"store-{key}"
    r["modelport"] = modelport_convert(path, store, cap)
    mp = r["modelport"]
    print(f"[{key}] modelport: peak {_gb(mp['peak_bytes'])} ({_x(mp['peak_bytes'], w)}), "
          f"convert {mp['convert_s']:.1f}s {mp.get('error', '')}", flush=True)
    plain = not args.skip_plain and not args.quick and source == "keras"  # plain tf2onnx loads a .keras
    if mp.get("artifact") and not args.skip_serving:
        if not plain:  # the store holds the converted model: one copy of the weights on disk less
            subprocess.run(["rm", "-rf", str(path)], check=False)
        r["optimize"] = op = modelport_optimize(store, mp["artifact"], cap)
        print(f"[{key}] int8-dynamic: peak {_gb(op['peak_bytes'])} ({_x(op['peak_bytes'], w)}), "
              f"{op['optimize_s']:.0f}s {op.get('error', '')}", flush=True)
        served = {"fp32": mp["artifact"], **({"int8": op["artifact"]} if op.get("artifact") else {})}
        r["serve"] = sv = modelport_serve(store, served, cap)
        print(f"[{key}] served: peak {_gb(sv['peak_bytes'])} ({_x(sv['peak_bytes'], w)})", flush=True)
    subprocess.run(["rm", "-rf", str(store)], check=False)
    if plain:
        rc, mem, secs, tail = run_capped([*me, "--plain", str(path), str(tmp / f"{name}-plain.onnx")], cap, 3600)
        r["plain"] = {"exit_code": rc, "seconds": secs, **asdict(mem), "stderr_tail": tail}
        print(f"[{key}] plain tf2onnx: rc {rc}, peak {_gb(mem.peak_bytes)}, "
              f"killed at {_gb(mem.killed_at_bytes)}, {secs:.0f}s", flush=True)
        for f in tmp.glob(f"{name}-plain.onnx*"):
            f.unlink()
    elif previous.get("plain"):  # not re-run: the last run's figures, marked as such
        r["plain"] = {"cap_bytes": last_results.get("cap_bytes", 0), **previous["plain"],
                      "from_previous_run": True}
    return r


SOURCES_NOTE = [
    "Source formats (issue 13 asks for `.keras`, legacy `.h5` and SavedModel): `.h5` takes the same route as "
    "`.keras` (Keras 3 loads it; the lean loader reads its HDF5 datasets block by block). A Keras 3 "
    "`model.export(dir)` SavedModel stores every weight twice: the model's variables (which the serving signature "
    "reads) and the export archive's `_all_variables` list (`keras/src/export/saved_model_export_archive.py`), "
    "each with its own value in the checkpoint: 2.66 GB of variables data for the 4-block transformer's 1.33 GB "
    "(the source column says so). `tf.saved_model.load` restored both copies: the first measured run of that "
    "row (`--models t4 --source h5,savedmodel --skip-plain --skip-serving --cap-gb 14`, before the lean "
    "SavedModel load) peaked at 3.97 GB, 2.98x, with 2.66x already in the `loading` stage (the .h5 row of that "
    "run: 2.11x). The lean load (`savedmodel_lean_load.py`) loads with `experimental_skip_checkpoint` (variables "
    "created uninitialized) and restores only the variables the signature captures, one at a time, by their "
    "checkpoint keys; a SavedModel whose checkpoint restores anything else (a lookup table's contents) loads the "
    "plain way. The converter's admission estimate counts the same bytes (the signature's variables, read from "
    "`saved_model.pb`), not the variables data: 2.0 x 1.33 GB + 0.5 GB for the 4-block export, not 2.0 x 2.66 GB. "
    "`tf.saved_model.save(model, dir)` of a Keras 3 model writes one copy (its signature's input is `inputs`) "
    "and converts the same way. Plain tf2onnx was run on `.keras` only (its `keras.saving.load_model` + `from_function`). "
    "Wall times of rows from different runs are not comparable: other jobs shared the 2 cores at different loads "
    "(the 4-block .keras row's 161 s against 43 s for its .h5 row; the memory figures do not depend on it).",
    "",
]

CONVERT_MEMORY_NOTE = [
    "Where VGG-16's conversion peak comes from (measured for issue 13 with `/tmp` scripts not kept, bare "
    "processes, VGG-16 0.55 GB): the floor column is the idle tree plus one copy of the weights; for VGG-16 "
    "it is 2.43x, so 2.5x would leave 0.04 GB for the ONNX session, activations and tf2onnx: not reachable "
    "for a model this small next to TensorFlow's fixed 0.67 GB (a worker with TensorFlow imported) and the "
    "service. (1) The verify session: onnxruntime prepacks MatMul/Gemm weights at load while the whole "
    "external data file is mapped, and its arena keeps the run's activations: a bare session peaked at "
    "1.02 GB for 8 samples; without prepacking and arena 0.71 GB, and load + one run took the same time "
    "(interleaved: VGG 1.08x, 1-block LM 0.66x, on a loaded machine). The converter's parity/inspect "
    "sessions (`models.OnnxModel`) now run that way. (2) The source is freed before the result is loaded "
    "(`convert.py`), but with oneDNN on (TensorFlow's default here) TensorFlow's CPU allocator keeps the "
    "freed memory: lean load, source run, `release()` of VGG-16 in one process: 0.67 -> 1.69 -> 1.72 -> "
    "1.69 GB, then ONNX load + run 2.34 GB; with `TF_ENABLE_ONEDNN_OPTS=0` 0.67 -> 1.34 -> 1.44 -> 0.70 GB, "
    "then 1.42 GB (the peak moves to the Keras load, 1.63 GB). A plain `tf.Variable` of 0.41 GB deleted: "
    "1.10 GB stays with oneDNN on, 0.68 GB with it off. Turning oneDNN off in the converter worker (an "
    "environment setting read when TensorFlow is imported, so for every conversion, and it changes "
    "TensorFlow's kernels for the source run) is not done here: left to a decision on the worker's "
    "environment. (3) The lean Keras load holds the weights about 1.9x after loading with oneDNN on "
    "(+1.02 GB for 0.55 GB: the scratch variable it fills block by block is freed into that pool), 1.2x "
    "with it off.",
    "",
]

SERVED_MEMORY_NOTE = [
    "Served memory (measured for issue 13 on the 1-block transformer LM, 0.73 GB FP32, 0.18 GB INT8, with "
    "`/tmp` scripts not kept: a bare session, then `python -m inference_svc` fed through `Client`): a bare "
    "onnxruntime session of the INT8 model holds 0.24 GB after its first batch-1 inference (the quantized "
    "embedding is gathered as int8 and only the gathered rows are dequantized; `session.disable_quant_qdq` "
    "changes nothing; `session.disable_prepacking` lowers the RSS after load from 0.18 to 0.06 GB but not after "
    "the first inference, 0.24 GB, and the run takes ~1.7x as long). The 2.24x of the earlier run came from "
    "the service: (1) onnxruntime's CPU arena keeps the largest working set a run has needed, and the load-time "
    "tuning probe runs a batch of 8: bare session, INT8 0.61 GB after a batch of 8 against 0.23 GB before "
    "(FP32 0.95 against 0.58); (2) after an unload glibc kept the freed memory in its per-thread arenas (64 MB "
    "heaps in /proc/PID/smaps): a service that had served and unloaded the FP32 model stayed at 0.69 GB. Now "
    "the tuner ends with one batch-1 run with `memory.enable_memory_arena_shrinkage` (`sessions.release_arena`: "
    "INT8 0.61 -> 0.22 GB, FP32 0.95 -> 0.56 GB, bare) and the service collects and `malloc_trim`s after "
    "LoadModel/UnloadModel (`memory.release_freed_memory`): in a fresh service INT8 resident 0.73 -> 0.34 GB "
    "(0.47x the FP32 weights, 1.9x its own file with the service's 0.09 GB), FP32 then INT8 in one service "
    "0.92 -> 0.36 GB, and an unload gives the model's memory back (0.69 -> 0.18 GB). Batch-1 latency after the "
    "probe, interleaved, with and without the shrink run: MLP 64-256-256-10 10.7 vs 10.6-10.9 us (3000 rounds, "
    "twice), INT8 LM 127 vs 123 ms: the run path is untouched (the shrink happens once, at load). "
    "`tests/test_served_memory.py` holds an INT8 model's served RSS under 4.5x its file and what an unload "
    "leaves under 2x (measured 3.7-3.8x and 1.0-1.1x; 5.75-6.3x and 6x before).",
    "",
]

STAGES = ["upload", "loading", "source parity run", "converting", "verifying", "storing"]


def render(results: dict) -> str:
    """The BENCHMARKS.md section from a results dict (also: ``--render`` re-renders results/large.json)."""
    cap = results["cap_bytes"]
    plain_caps = sorted({r["plain"].get("cap_bytes") or cap for r in results["models"].values() if r.get("plain")})
    plain_cap = " / ".join(f"{c / GB:.1f} GB" for c in plain_caps) or f"{cap / GB:.1f} GB"
    rows, stage_rows = [], []
    for name, r in _ordered(results["models"]):
        if r.get("previous_run"):
            r = {**r, "label": f"{r['label']} [previous run: `{r['previous_run']}`]"}
        rows.append(_row(name, r))
        w, mp = r["weight_bytes"], r["modelport"]
        peaks = mp.get("stage_peaks", {})
        times = mp.get("stages_s", {})
        stage_rows.append([r["label"].split(" (")[0], _source_cell(r)] + [
            f"{_x(peaks.get(st), w)} / {times.get(st, mp.get('upload_s') if st == 'upload' else 0) or 0:.0f}s"
            for st in STAGES])
    after = [_after_row(r) for _, r in _ordered(results["models"]) if r.get("optimize") or r.get("serve")]
    table = common.markdown_table(
        ["model", "source uploaded", "weights", "modelport peak RSS (service + worker)", "/ weights", "(peak - idle) / weights",
         "idle service + worker", "floor: (idle + weights) / weights", "Convert s", "parity max abs diff", "result", "plain tf2onnx"], rows)
    stages = common.markdown_table(["model", "source", *STAGES], stage_rows)
    return "\n".join([
        "## Large models: Keras -> ONNX with bounded memory",
        "",
        "Peak RSS of the whole process tree (converter service + its worker, TensorFlow pre-imported) while it "
        "converts an upload to ONNX (load, parity on 8 generated samples, export, store), sampled every "
        f"50 ms, against the model's float32 weight bytes; target <= {TARGET}x. The model is built once per run and "
        "written in each source format of `--source`: `.keras` (`model.save('x.keras')`), legacy `.h5` "
        "(`model.save('x.h5')`), SavedModel (`model.export(dir)`, Keras 3's way to write one, or "
        "`tf.saved_model.save(model, dir)`, TensorFlow's), each uploaded as "
        "the CLI sends it (`client.upload_source`: a file as itself, a SavedModel folder as one tar archive). The "
        "route: weights as inputs (`modelport/conversion/large_export.py`), a lean Keras load for `.keras` and "
        "`.h5` (`keras_lean_load.py`), a lean SavedModel load (`savedmodel_lean_load.py`: only the variables the "
        "serving signature reads are restored), the source run and "
        "freed before the result is loaded; results past 256 MiB of weights are `model.onnx` + `model.onnx.data` "
        "in one folder artifact (`onnx+tar`). Plain tf2onnx = a fresh process calling `keras.saving.load_model` "
        "then `tf2onnx.convert.from_function(..., large_model=True)`, under this benchmark's memory cap of "
        f"{plain_cap} (the machine is shared by other jobs): \"killed at N GB\" means its RSS passed the "
        "cap and the benchmark killed it (on this machine type without a cap the kernel kills it at 24 GB, "
        "FACTS.md). One multi-GB process at a time; wall times are from a shared 2-core machine.",
        "",
        f"Command: `{results.get('command', common.command_line())}`",
        "",
        common.system_info_markdown(results.get("system")),
        "",
        table,
        "",
        "Per stage of the Convert job: peak RSS of the tree / weight bytes, and the stage's wall time (the source "
        "parity run is the end of the `loading` stage, measured on its own):",
        "",
        stages,
        "",
        *SOURCES_NOTE,
        *CONVERT_MEMORY_NOTE,
        "The graph: on the small models of `tests/test_large_export.py` (transformer blocks, MLP, multi-input, "
        "Conv1D) the ONNX graph has the classic route's op types node for node (weight-only nodes folded while "
        "the weights stream, LayerNorm and attention fused): 72 nodes for both routes on a 2-block d=128 "
        "encoder. A Conv followed by BatchNormalization leaves 2 Transpose (and one Add) more than the classic "
        "graph (12 vs 10 nodes; 29 vs 26 for the test CNN), because tf2onnx folds the normalization into the "
        "kernel only when the kernel is a constant; onnxruntime's basic level at session load makes the graphs "
        "equal (7 vs 7, 25 vs 25; asserted there). The admission estimate for this route is 2.0x the weight bytes "
        "+ 0.5 GB over what the worker holds before the job (`convert.FACTOR_WEIGHTS_ROUTE`), above every "
        "measured (peak - idle) / weights here.",
        "",
        *([
            "After the conversion, on the same store: **int8-dynamic** through an optimizer service subprocess "
            f"(`Optimize` with {EVAL_SAMPLES} generated eval samples, options {OPTIMIZE_OPTIONS}: few timed runs, "
            "the latency ratio is indicative only) and "
            "**serving**: `LoadModel` of the FP32 result, and of the INT8 one, each into a fresh inference service "
            f"subprocess of its own, a first inference, then {STEADY_RUNS} more (batch 1, p50). Peak RSS of each "
            "service's tree per stage over the FP32 weight bytes (their idle RSS, about 0.09 GB, included); "
            "resident = after the steady runs. The load stage includes the service's tuning probe (runs at batch "
            "1 and 8 on zero inputs, whose batch-8 activations set the load peak). These stages ran under this "
            f"run's cap of {cap / GB:.1f} GB: \"killed at\" there means the benchmark's cap, not the kernel. Rows "
            "marked [previous run] in the table above keep the figures of that run here too.",
            "",
            common.markdown_table(
                ["model", "int8-dynamic peak / weights (s)", "INT8 size / FP32", "INT8 latency / FP32 (paired)",
                 "INT8 cosine", "FP32 load peak / weights (s)", "FP32 first inference (s)", "FP32 steady p50",
                 "FP32 resident / weights", "INT8 load peak / weights (s)", "INT8 first inference (s)",
                 "INT8 steady p50", "INT8 resident / weights"], after),
            "",
            *SERVED_MEMORY_NOTE,
            "Optimizer admission factors (`optimizer_svc/admission.py`): measured through the optimizer service, "
            "every technique on the 1.33 and 2.34 GB transformers, the job's whole peak (the baseline's session "
            "held while each candidate is built and measured): section *Large models: every optimizer technique* "
            "(`benchmarks/bench_large_techniques.py`). The factors before were measured on each technique's build "
            "alone and were below every job's peak through the service. A job whose estimate does not fit is "
            "refused before it starts: the 6.16 GB t28's int8-dynamic row here.",
            "",
            "",
        ] if after else []),
    ])


def _after_row(r: dict) -> list:
    """One row of the optimize + serve table."""
    w = r["weight_bytes"]
    op, sv = r.get("optimize", {}), r.get("serve", {})
    peaks = sv.get("stage_peaks", {})

    def ms(x) -> str:
        return f"{x * 1e3:.0f} ms" if isinstance(x, (int, float)) else "-"

    def served(label: str) -> list:
        x = sv.get(label, {})
        if not x:
            return ["not run", "-", "-", "-"]
        if x.get("error"):
            return [f"failed: {x['error'][:80]}", "-", "-", "-"]
        resident = _x(x.get("resident_bytes"), w)
        if label == "int8" and x.get("resident_bytes") and op.get("size_bytes"):
            resident += f" ({x['resident_bytes'] / op['size_bytes']:.2f}x its file)"
        return [f"{_x(peaks.get(f'{label} load'), w)} ({x.get('load_s', 0):.1f}s)",
                f"{_x(peaks.get(f'{label} first inference'), w)} ({x.get('first_s', 0):.2f}s)",
                ms(x.get("steady_p50_s")), resident]

    if op.get("killed_at_bytes"):
        opt = [f"killed at {_gb(op['killed_at_bytes'])} ({_x(op['killed_at_bytes'], w)}, the cap) in "
               f"`{max(op.get('stage_peaks', {'-': 0}).items(), key=lambda kv: kv[1])[0]}`", "-", "-", "-"]
    elif op.get("error"):
        opt = [f"failed: {op['error'][:80]}", "-", "-", "-"]
    else:
        opt = [f"{_x(op.get('peak_bytes'), w)} ({op.get('optimize_s', 0):.0f}s)",
               f"{op['size_bytes'] / op['baseline_bytes']:.2f}" if op.get("baseline_bytes") else "-",
               op.get("latency_ratio") or "-", op.get("cosine") or "-"]
    return [r["label"].split(" (")[0] + ("" if r.get("source", "keras") == "keras" else f", {SOURCES[r['source']]}"),
            *opt, *served("fp32"), *served("int8")]


def _ordered(models: dict) -> list[tuple[str, dict]]:
    """Rows by model (MODELS order), then source (SOURCES order)."""
    def rank(item):
        name, r = item
        base = name.split(".")[0]
        return (list(MODELS).index(base) if base in MODELS else len(MODELS), list(SOURCES).index(r.get("source", "keras")))
    return sorted(models.items(), key=rank)


def _source_cell(r: dict) -> str:
    """The source format, with what it holds on disk when that is not the model's weight bytes (a Keras 3
    ``model.export`` SavedModel stores every variable twice)."""
    cell = SOURCES[r.get("source", "keras")]
    held = r.get("source_weight_bytes")
    if held and abs(held - r["weight_bytes"]) > 0.01 * r["weight_bytes"]:
        cell += f" ({held / r['weight_bytes']:.2f}x the weights on disk)"
    return cell


def _row(name: str, r: dict) -> list:
    w = r["weight_bytes"]
    mp = r["modelport"]
    if mp.get("killed_at_bytes"):
        result = f"killed at {_gb(mp['killed_at_bytes'])} (cap)"
    elif mp.get("error"):
        result = "failed: " + mp["error"][:120]
    else:
        result = f"{mp.get('media_type', '').rsplit('.', 1)[-1]}, {_gb(mp.get('artifact_bytes'))}"
    plain = r.get("plain")
    if plain is None:
        plain_cell = "not run"
    elif plain["killed_at_bytes"]:
        plain_cell = f"killed at {_gb(plain['killed_at_bytes'])} after {plain['seconds']:.0f}s" + (
            " (previous run)" if plain.get("from_previous_run") else "")
    elif plain["exit_code"] != 0:
        plain_cell = f"failed after {plain['seconds']:.0f}s (exit {plain['exit_code']}, peak {_gb(plain['peak_bytes'])}): " \
                     f"{plain['stderr_tail'][-120:]}"
    else:
        plain_cell = f"converted in {plain['seconds']:.0f}s, peak {_gb(plain['peak_bytes'])} ({_x(plain['peak_bytes'], w)})"
    peak, idle = mp.get("peak_bytes"), mp.get("idle_bytes")
    above = _x(peak - idle, w) if peak and idle else "-"
    return [r["label"], _source_cell(r), _gb(w), _gb(peak), _x(peak, w), above, _gb(idle), _x(idle + w, w) if idle else "-",
            f"{mp.get('convert_s', 0):.1f}",
            f"{mp.get('parity_max_abs_diff', float('nan')):.1e}", result, plain_cell]


if __name__ == "__main__":
    main()
