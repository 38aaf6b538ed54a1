"""End to end: what a user gains by moving a Keras model through modelport.

Per model (a digits CNN trained on scikit-learn digits, MobileNetV2 ``weights=None``, a small
transformer encoder) and batch size (1 and 32), four ways to run the same model, each a ratio
to the first, measured in the same run:

1. Keras in TensorFlow, in-process (the user's starting point; a compiled ``tf.function``
   inference call, the fastest plain-Keras path);
2. the converted ONNX model in onnxruntime, in-process;
3. the ONNX model served by the inference service (own process) over gRPC KServe ModelInfer;
4. the optimized model (the faster of the optimizer's ``graph`` and ``int8-dynamic`` ONNX
   techniques that keeps accuracy/agreement) served the same way.

Then serving overhead against concurrency (1, 4, 16, 64 client threads sending batch-1
requests) with and without the inference service's dynamic batching, against onnxruntime
in-process with the same number of threads.

    .venv/bin/python -m benchmarks.bench_e2e            # full (a few minutes)
    .venv/bin/python -m benchmarks.bench_e2e --quick    # digits CNN only
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.models import digits_arrays, digits_cnn  # noqa: E402

BATCHES = (1, 32)
CONCURRENCY = (1, 4, 16, 64)
WAYS = ("keras", "onnx", "served", "optimized_served")
WAY_LABELS = {
    "keras": "Keras/TF in-process (baseline)",
    "onnx": "ONNX in onnxruntime, in-process",
    "served": "served by modelport (gRPC)",
    "optimized_served": "optimized + served",
}


@dataclass
class ModelCase:
    """A model under test: the Keras model, named inputs per batch size, labels if any."""

    name: str
    title: str
    model: object
    make_inputs: object  # callable(batch) -> dict[name, array]
    eval_inputs: dict | None = None
    eval_labels: np.ndarray | None = None
    note: str = ""


# ----------------------------------------------------------------------------------------------
# models


def digits_case(epochs: int = 40) -> ModelCase:
    """A small CNN trained on scikit-learn's 8x8 digits (real data, real accuracy)."""
    import keras

    keras.utils.set_random_seed(0)
    x, y = digits_arrays(np.random.default_rng(0))
    train, test = slice(0, 1437), slice(1437, None)
    model = digits_cnn(keras, head="gap")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[train], y[train], epochs=epochs, batch_size=32, verbose=0)
    xt = x[test]

    def make(b):
        return {"image": np.ascontiguousarray(np.resize(xt, (b, 8, 8, 1)))}

    return ModelCase("digits_cnn", "digits CNN (8×8×1, trained on sklearn digits)", model, make,
                     {"image": xt}, y[test])


def mobilenet_case(size: int = 224) -> ModelCase:
    """MobileNetV2 with random weights (``weights=None``: no download needed)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), classes=1000)
    from modelport.conversion.onnx_export import keras_input_infos

    in_name = keras_input_infos(model)[0].name
    rng = np.random.default_rng(1)

    def make(b):
        return {in_name: rng.uniform(-1, 1, size=(b, size, size, 3)).astype("float32")}

    return ModelCase("mobilenet_v2", f"MobileNetV2 ({size}×{size}×3, weights=None)", model, make,
                     make(64), None, "random weights: accuracy is top-1 agreement with the FP32 model")


def transformer_case(vocab: int = 2000, seq: int = 64, dim: int = 128, heads: int = 4, ff: int = 256,
                     blocks: int = 2) -> ModelCase:
    """A small transformer encoder classifier over int32 token ids (the benchmarks' shared builder)."""
    import keras

    from benchmarks.models import transformer_encoder

    keras.utils.set_random_seed(0)
    model = transformer_encoder(keras, vocab=vocab, seq=seq, dim=dim, heads=heads, ff=ff, blocks=blocks,
                                head_units=4, head_activation="softmax", head_name="label_probs")
    rng = np.random.default_rng(2)

    def make(b):
        return {"token_ids": rng.integers(0, vocab, size=(b, seq)).astype("int32")}

    return ModelCase("transformer", f"transformer encoder ({blocks} blocks, d={dim}, {heads} heads, seq {seq})",
                     model, make, make(128), None, "random weights: accuracy is top-1 agreement with the FP32 model")


# ----------------------------------------------------------------------------------------------
# ways to run


def keras_runner(model):
    """The baseline: the model's compiled inference function (what ``keras_model_to_onnx`` traces)."""
    import tensorflow as tf

    from modelport.conversion.onnx_export import keras_tf_function

    fn, _, out_names = keras_tf_function(model)

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = fn(*[tf.constant(v) for v in feed.values()])
        return [res[n].numpy() for n in out_names]

    return run


def ort_runner(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return sess.run(None, feed)

    return run


class Served:
    """A model loaded into the inference service process, called over KServe ModelInfer."""

    def __init__(self, channel, name: str):
        from modelport.kserve.v2 import grpc_service_pb2_grpc as kgrpc

        self.stub = kgrpc.GRPCInferenceServiceStub(channel)
        self.name = name

    def request(self, feed: dict[str, np.ndarray]):
        from modelport.kserve import codec
        from modelport.kserve.v2 import grpc_service_pb2 as kpb

        req = kpb.ModelInferRequest(model_name=self.name)
        for name, arr in feed.items():
            dt, shape, raw = codec.to_raw(arr)
            req.inputs.add(name=name, datatype=dt, shape=shape)
            req.raw_input_contents.append(raw)
        return req

    def runner(self, feed: dict[str, np.ndarray]):
        """A call with the request encoded once (measures transport + server, not numpy encoding)."""
        from modelport.kserve import codec

        req = self.request(feed)

        def run(_feed=None) -> list[np.ndarray]:
            return list(codec.decode_outputs(self.stub.ModelInfer(req, timeout=120)).values())

        return run

    def call(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Encode and send ``feed`` (used for evaluation on changing inputs)."""
        return self.runner(feed)()


def upload_and_load(channel, path: Path, name: str, batching: bool, max_batch: int = 64,
                    delay_us: int = 1000) -> dict:
    """Upload an ONNX file to the service and load it as ``name`` (with or without dynamic batching)."""
    from modelport import media
    from modelport.runtime.artifacts import upload_requests
    from modelport.store import sha256_file
    from modelport.v1 import artifacts_pb2_grpc, serving_pb2, serving_pb2_grpc

    ref = artifacts_pb2_grpc.ArtifactsStub(channel).Upload(upload_requests(path, media.ONNX, sha256_file(path)))
    req = serving_pb2.LoadModelRequest(name=name, model=ref, execution_provider="cpu")
    req.batching.CopyFrom(serving_pb2.BatchingConfig(enabled=batching, max_batch_size=max_batch,
                                                     max_queue_delay_us=delay_us if batching else 0))
    t0 = time.perf_counter()
    resp = serving_pb2_grpc.ModelControlStub(channel).LoadModel(req, timeout=600)
    return {"load_s": time.perf_counter() - t0, "state": resp.model.state,
            "provider": resp.model.execution_provider, "warnings": list(resp.warnings)}


# ----------------------------------------------------------------------------------------------
# measurement


def top1(outputs: list[np.ndarray]) -> np.ndarray:
    return np.asarray(outputs[0]).reshape(len(outputs[0]), -1).argmax(axis=1)


def predictions(run, case: ModelCase) -> np.ndarray:
    """Top-1 predictions on the evaluation inputs, in chunks of 32 (so the served model's max
    batch size never limits the evaluation)."""
    n = len(next(iter(case.eval_inputs.values())))
    return np.concatenate([top1(run({k: v[i:i + 32] for k, v in case.eval_inputs.items()}))
                           for i in range(0, n, 32)])


def quality(run, case: ModelCase, reference: np.ndarray | None) -> dict:
    """Accuracy on held-out labels (digits) or top-1 agreement with the FP32 reference."""
    pred = predictions(run, case)
    d = {}
    if case.eval_labels is not None:
        d["accuracy"] = float((pred == case.eval_labels).mean())
    if reference is not None:
        d["agreement"] = float((pred == reference).mean())
    return d


def timed(run, feed, quick: bool) -> common.Timing:
    """Warm-up (fewer calls for slow cases), then repeated calls within a time bound."""
    t0 = time.perf_counter()
    run(feed)
    first = time.perf_counter() - t0
    warmup = max(1, min(5, int(0.5 / max(first, 1e-6))))
    return common.time_callable(lambda: run(feed), warmup=warmup, repeats=300,
                                max_seconds=1.0 if quick else 2.0, min_repeats=5)


def optimize_candidates(onnx_path: Path, work: Path, case: ModelCase, reference, quick: bool) -> dict:
    """Run the optimizer's ONNX techniques (its own functions) and pick the fastest at batch 32
    that keeps accuracy within 1 point (or agreement >= 98%), like the optimizer's ``auto``."""
    from optimizer_svc import onnx_techniques as ot

    base = ort_runner(onnx_path)
    feed = case.feeds[32]
    base_t = timed(base, feed, quick)
    base_q = quality(base, case, reference)
    cands = {"none (FP32 ONNX)": {"path": onnx_path, "median_b32_ms": base_t.median * 1e3, **base_q}}
    for tech, fn in (("graph", lambda o: ot.graph_optimize(onnx_path, o, "extended")),
                     ("int8-dynamic", lambda o: ot.int8_dynamic(onnx_path, o))):
        out = work / f"{case.name}.{tech}.onnx"
        cwd = os.getcwd()
        try:
            # onnxruntime's symbolic shape inference (inside quant_pre_process) saves
            # "sym_shape_infer_temp.onnx" + external data into the *current directory* when it
            # cannot infer every shape (the transformer): keep that litter in the work folder.
            os.chdir(work)
            try:
                details = fn(out)
            finally:
                os.chdir(cwd)
            run = ort_runner(out)
            t = timed(run, feed, quick)
            q = quality(run, case, reference)
            cands[tech] = {"path": out, "median_b32_ms": t.median * 1e3, "details": details, **q}
        except Exception as e:  # noqa: BLE001 - a technique that fails is reported, not fatal
            cands[tech] = {"error": f"{type(e).__name__}: {e}"[:300]}

    def acceptable(c):
        if "error" in c:
            return False
        if "accuracy" in c and "accuracy" in base_q:
            return c["accuracy"] >= base_q["accuracy"] - 0.01
        return c.get("agreement", 1.0) >= 0.98

    ok = {k: v for k, v in cands.items() if acceptable(v)}
    best = min(ok, key=lambda k: ok[k]["median_b32_ms"])
    return {"chosen": best, "candidates": cands}


@dataclass
class CaseData:
    """What the Keras phase hands to the main phase: files, inputs and the Keras numbers."""

    name: str
    onnx_path: Path
    feeds: dict[int, dict[str, np.ndarray]]
    eval_inputs: dict[str, np.ndarray]
    eval_labels: np.ndarray | None
    keras_pred: np.ndarray
    probe: dict[str, np.ndarray]
    keras_probe_out: list[np.ndarray]
    keras: dict


def keras_phase(work: Path, quick: bool) -> None:
    """Child process (the only one that imports TensorFlow): build/train each model, convert it
    with the converter's ``keras_model_to_onnx``, time Keras, save inputs and reference outputs."""
    import json

    from modelport.conversion.onnx_export import keras_model_to_onnx

    builders = [lambda: digits_case(epochs=8 if quick else 40)]
    if not quick:
        builders += [mobilenet_case, transformer_case]
    index = []
    for build in builders:
        t0 = time.perf_counter()
        case = build()
        built_s = time.perf_counter() - t0
        onnx_path = work / f"{case.name}.onnx"
        t0 = time.perf_counter()
        keras_model_to_onnx(case.model, onnx_path)
        convert_s = time.perf_counter() - t0
        print(f"{case.name}: built in {built_s:.1f}s, converted in {convert_s:.1f}s", flush=True)
        run = keras_runner(case.model)
        feeds = {b: case.make_inputs(b) for b in BATCHES}
        probe = case.make_inputs(4)
        arrays = {f"feed{b}__{k}": v for b, f in feeds.items() for k, v in f.items()}
        arrays |= {f"eval__{k}": v for k, v in case.eval_inputs.items()}
        arrays |= {f"probe__{k}": v for k, v in probe.items()}
        arrays |= {f"probe_out{i}": o for i, o in enumerate(run(probe))}
        arrays["keras_pred"] = predictions(run, case)
        if case.eval_labels is not None:
            arrays["labels"] = case.eval_labels
        np.savez(work / f"{case.name}.inputs.npz", **arrays)
        rec = {"name": case.name, "title": case.title, "note": case.note, "build_s": built_s,
               "convert_s": convert_s, "onnx_mb": onnx_path.stat().st_size / 1e6,
               "quality": quality(run, case, None), "batches": {}}
        for b in BATCHES:
            t = timed(run, feeds[b], quick)
            rec["batches"][str(b)] = {**t.summary_ms(), "items_per_s": b / t.median}
            print(f"  {case.name} b{b} keras             p50 {t.p50 * 1e3:8.2f} ms  p99 {t.p99 * 1e3:8.2f} ms  "
                  f"{b / t.median:9.1f} items/s", flush=True)
        index.append(rec)
    (work / "keras_phase.json").write_text(json.dumps(index, indent=2))


def load_cases(work: Path) -> list[CaseData]:
    import json

    cases = []
    for rec in json.loads((work / "keras_phase.json").read_text()):
        with np.load(work / f"{rec['name']}.inputs.npz") as z:
            a = {k: z[k] for k in z.files}

        def pick(prefix, a=a):
            return {k[len(prefix):]: v for k, v in a.items() if k.startswith(prefix)}

        outs = sorted((k for k in a if k.startswith("probe_out")), key=lambda k: int(k[len("probe_out"):]))
        cases.append(CaseData(
            name=rec["name"], onnx_path=work / f"{rec['name']}.onnx",
            feeds={b: pick(f"feed{b}__") for b in BATCHES}, eval_inputs=pick("eval__"),
            eval_labels=a.get("labels"), keras_pred=a["keras_pred"], probe=pick("probe__"),
            keras_probe_out=[a[k] for k in outs], keras=rec))
    return cases


def run_model(case: CaseData, work: Path, channel, quick: bool) -> dict:
    """Everything but Keras, in this process (no TensorFlow here): ONNX in onnxruntime,
    optimization candidates, the served and the optimized+served model."""
    k = case.keras
    res: dict = {"title": k["title"], "note": k["note"], "convert_s": k["convert_s"], "onnx_mb": k["onnx_mb"]}
    ort_run = ort_runner(case.onnx_path)
    reference = case.keras_pred
    res["quality"] = {"keras": k["quality"], "onnx": quality(ort_run, case, reference)}
    res["onnx_max_abs_diff"] = float(max(np.abs(a - b).max() for a, b in
                                         zip(case.keras_probe_out, ort_run(case.probe), strict=True)))
    # Spread of the reference output across classes: ~0 means a flat output (random weights),
    # where agreement and a zero diff say nothing about numerical fidelity.
    res["output_spread"] = float(np.asarray(case.keras_probe_out[0]).std(axis=-1).mean())

    opt = optimize_candidates(case.onnx_path, work, case, reference, quick)
    chosen_path = opt["candidates"][opt["chosen"]]["path"]
    res["optimization"] = {"chosen": opt["chosen"],
                           "candidates": {kk: {x: y for x, y in v.items() if x != "path"}
                                          for kk, v in opt["candidates"].items()}}
    res["load"] = {"served": upload_and_load(channel, case.onnx_path, case.name, batching=False),
                   "optimized_served": upload_and_load(channel, chosen_path, f"{case.name}_opt", batching=False)}
    served, served_opt = Served(channel, case.name), Served(channel, f"{case.name}_opt")
    res["quality"]["served"] = quality(served.call, case, reference)
    res["quality"]["optimized_served"] = quality(served_opt.call, case, reference)

    res["batches"] = {}
    for b in BATCHES:
        feed = case.feeds[b]
        runs = {"onnx": ort_run, "served": served.runner(feed), "optimized_served": served_opt.runner(feed)}
        row = {"keras": dict(k["batches"][str(b)])}
        for way, run in runs.items():
            t = timed(run, feed, quick)
            row[way] = {**t.summary_ms(), "items_per_s": b / t.median}
            print(f"  {case.name} b{b} {way:17s} p50 {t.p50 * 1e3:8.2f} ms  p99 {t.p99 * 1e3:8.2f} ms  "
                  f"{b / t.median:9.1f} items/s", flush=True)
        base = row["keras"]["items_per_s"]
        for way in row:
            row[way]["throughput_vs_keras"] = row[way]["items_per_s"] / base
        res["batches"][str(b)] = row
    return res


def grpc_floor(channel, quick: bool) -> dict:
    """Latency of a no-op unary RPC (KServe ServerLive) to the same server: the part of every
    served call that is Python gRPC on both ends, not the model."""
    from modelport.kserve.v2 import grpc_service_pb2 as kpb
    from modelport.kserve.v2 import grpc_service_pb2_grpc as kgrpc

    stub = kgrpc.GRPCInferenceServiceStub(channel)
    req = kpb.ServerLiveRequest()
    t = common.time_callable(lambda: stub.ServerLive(req, timeout=30), warmup=20, repeats=2000,
                             max_seconds=1.0 if quick else 2.0)
    return t.summary_ms()


def run_concurrency(case: CaseData, work: Path, channel, address: str, quick: bool) -> dict:
    """Batch-1 requests from N client threads: in-process onnxruntime vs served without/with
    dynamic batching. Reuses bench_serving's measurement functions (same method as its section)."""
    from benchmarks import bench_serving as sv

    onnx_path = work / f"{case.name}.onnx"
    batched = f"{case.name}_batched"
    upload_and_load(channel, onnx_path, batched, batching=True, max_batch=32, delay_us=2000)
    (in_name, x), = case.feeds[1].items()
    levels = CONCURRENCY[:2] if quick else CONCURRENCY
    seconds = 1.5 if quick else 4.0
    out: dict = {"model": case.name, "levels": list(levels), "ways": {}, "mean_batch": []}
    ways = {
        "onnx_in_process": lambda c: sv.baseline(onnx_path, in_name, x, c, 10**6, seconds),
        "served": lambda c: sv.served(address, case.name, in_name, x, c, 10**6, seconds),
        "served_batched": lambda c: sv.served(address, batched, in_name, x, c, 10**6, seconds),
    }
    for way, measure in ways.items():
        out["ways"][way] = []
        for c in levels:
            before = sv.server_stats(address, batched) if way == "served_batched" else None
            d = measure(c).to_dict()
            if before is not None:
                after = sv.server_stats(address, batched)
                runs = after["execution_count"] - before["execution_count"]
                d["mean_batch"] = (after["inference_count"] - before["inference_count"]) / runs if runs else 0.0
            out["ways"][way].append(d)
            lat = d.get("latency", {})
            print(f"  concurrency {c:3d} {way:16s} {d['calls_per_s']:8.1f} req/s  p50 {lat.get('p50_ms', 0):7.2f} ms"
                  f"  p99 {lat.get('p99_ms', 0):7.2f} ms  errors {d['errors']}"
                  + (f"  mean batch {d['mean_batch']:.1f}" if "mean_batch" in d else ""), flush=True)
    return out


# ----------------------------------------------------------------------------------------------
# report


def plot(results: dict) -> list[str]:
    plt = common.pyplot()
    names = []
    models = results["models"]
    groups = [(m, b) for m in models for b in models[m]["batches"]]
    colors = {"keras": "grey", "onnx": "tab:blue", "served": "tab:orange", "optimized_served": "tab:green"}

    from benchmarks import plots

    labels = [f"{m}\nbatch {b}" for m, b in groups]
    series = {WAY_LABELS[w]: [models[m]["batches"][b][w]["throughput_vs_keras"] for m, b in groups] for w in WAYS}
    cmap = {WAY_LABELS[w]: c for w, c in colors.items()}
    names.append(plots.grouped_bars(
        "e2e_throughput", labels, series, ylabel="throughput relative to Keras (×, higher is better, log)",
        title="Throughput per model and batch size, as a ratio to Keras in TensorFlow", baseline=1.0,
        baseline_label="Keras baseline = 1", log=True, colors=cmap))
    p50 = {WAY_LABELS[w]: [models[m]["batches"][b][w]["p50_ms"] for m, b in groups] for w in WAYS}
    p99 = {WAY_LABELS[w]: [models[m]["batches"][b][w]["p99_ms"] for m, b in groups] for w in WAYS}
    names.append(plots.grouped_bars(
        "e2e_latency", labels, p50, upper_err=p99, log=True, colors=cmap,
        ylabel="latency per call (ms, log): bar p50, whisker p99", title="Latency per call (lower is better)"))

    # 3. concurrency
    conc = results.get("concurrency")
    if conc:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        labels = {"onnx_in_process": "onnxruntime in-process (baseline)", "served": "served, no batching",
                  "served_batched": "served, dynamic batching"}
        cols = {"onnx_in_process": "tab:blue", "served": "tab:orange", "served_batched": "tab:green"}
        for way, rows in conc["ways"].items():
            xs = [r["concurrency"] for r in rows]
            style = "--" if way == "onnx_in_process" else "-"
            a1.plot(xs, [r["calls_per_s"] for r in rows], style, marker="o", label=labels[way], color=cols[way])
            a2.plot(xs, [r.get("latency", {}).get("p99_ms", float("nan")) for r in rows], style, marker="o",
                    label=labels[way], color=cols[way])
        for a in (a1, a2):
            a.set_xscale("log", base=2)
            a.set_xticks(conc["levels"], [str(c) for c in conc["levels"]])
            a.set_xlabel("concurrent client threads (batch-1 requests)")
            a.grid(alpha=0.3)
        a1.set_ylabel("requests per second (log)")
        a1.set_yscale("log")
        a1.set_title(f"{conc['model']}: throughput vs concurrency")
        a2.set_ylabel("p99 latency (ms)")
        a2.set_yscale("log")
        a2.set_title("p99 latency vs concurrency")
        a1.legend(fontsize=7)
        names.append(common.save_figure(fig, "e2e_concurrency").name)
    return names


def key_figures(results: dict) -> list[str]:
    """One bullet per finding, computed from the numbers (no claim is written by hand)."""
    out = []
    for m, r in results["models"].items():
        for b, row in r["batches"].items():
            best = max(WAYS, key=lambda w: row[w]["items_per_s"])
            overhead = row["served"]["p50_ms"] - row["onnx"]["p50_ms"]
            out.append(f"- {m}, batch {b}: ONNX in-process {common.fmt_ratio(row['onnx']['throughput_vs_keras'])} "
                       f"Keras, served {common.fmt_ratio(row['served']['throughput_vs_keras'])}, optimized+served "
                       f"{common.fmt_ratio(row['optimized_served']['throughput_vs_keras'])}; serving adds "
                       f"{overhead:+.2f} ms p50 per call over in-process; fastest: {WAY_LABELS[best]}.")
    floor = results.get("grpc_floor")
    if floor:
        out.append(f"- A no-op gRPC call (KServe `ServerLive`) to the same server takes {floor['p50_ms']:.2f} ms p50 "
                   f"({floor['p99_ms']:.2f} ms p99): the floor under every served number above, from Python gRPC "
                   "on both ends sharing 2 cores.")
    conc = results.get("concurrency")
    if conc:
        top = max(conc["levels"])
        srv = {r["concurrency"]: r for r in conc["ways"]["served"]}
        bat = {r["concurrency"]: r for r in conc["ways"]["served_batched"]}
        one = {r["concurrency"]: r for r in conc["ways"]["onnx_in_process"]}
        out.append(f"- {conc['model']} at {top} concurrent batch-1 clients: dynamic batching gives "
                   f"{common.fmt_ratio(common.ratio(bat[top]['calls_per_s'], srv[top]['calls_per_s']))} the "
                   f"throughput of unbatched serving (mean batch {bat[top].get('mean_batch', 0):.1f}); served reaches "
                   f"{common.fmt_ratio(common.ratio(max(bat[top]['calls_per_s'], srv[top]['calls_per_s']), one[top]['calls_per_s']))} "
                   f"of in-process onnxruntime. At 1 client, batching costs "
                   f"{bat[1]['latency']['p50_ms'] - srv[1]['latency']['p50_ms']:+.2f} ms p50 (the queue delay).")
    return out


def markdown(results: dict, plots: list[str], command: str) -> str:
    models = results["models"]
    lines = ["## End to end: Keras → ONNX → served → optimized + served", "",
             "Same model, four ways to run it, each measured in this run; **ratios are to Keras in "
             "TensorFlow in-process** (a compiled `tf.function` inference call: the fastest plain-Keras "
             "path, so the ratios are not flattered by `model.predict` overhead). Served = the ONNX model "
             "loaded into the inference service running in its own process, called over gRPC KServe "
             "`ModelInfer` from this process (one request at a time; request encoded once). Optimized = "
             "the faster of the optimizer's `graph` (ORT extended, offline) and `int8-dynamic` techniques "
             "that keeps accuracy within 1 point (or ≥ 98% top-1 agreement), like its `auto`. Client and "
             "server share the same 2 cores, so served numbers include that contention. Latency = one call "
             "(p50 / p99 over repeated calls after warm-up); throughput = batch / median latency.", ""]
    lines += ["Key figures (computed from the tables below):", ""] + key_figures(results) + [""]
    rows = []
    for m, r in models.items():
        for b, row in r["batches"].items():
            for way in WAYS:
                w = row[way]
                rows.append([m, b, WAY_LABELS[way], f"{w['items_per_s']:.1f}", common.fmt_ratio(w["throughput_vs_keras"]),
                             f"{w['p50_ms']:.2f}", f"{w['p99_ms']:.2f}",
                             f"{w['min_ms']:.2f}–{w['max_ms']:.2f}", w["n"]])
    lines += [common.markdown_table(["model", "batch", "way", "items/s", "vs Keras", "p50 ms", "p99 ms",
                                     "min–max ms", "calls"], rows), ""]
    qrows = []
    for m, r in models.items():
        o = r["optimization"]
        q = r["quality"]

        def qf(d):
            parts = []
            if "accuracy" in d:
                parts.append(f"acc {d['accuracy'] * 100:.1f}%")
            if "agreement" in d:
                parts.append(f"agree {d['agreement'] * 100:.1f}%")
            return ", ".join(parts) or "—"

        cands = "; ".join(
            f"{k}: " + (f"{v['median_b32_ms']:.2f} ms" if "error" not in v else f"failed ({v['error'][:80]})")
            for k, v in o["candidates"].items())
        qrows.append([m, r["title"], f"{r['convert_s']:.1f} s", f"{r['onnx_mb']:.2f}",
                      f"{r['onnx_max_abs_diff']:.1e}", qf(q["keras"]), qf(q["onnx"]), qf(q["served"]),
                      f"**{o['chosen']}** → {qf(q['optimized_served'])}", cands])
    lines += ["Models, conversion and quality (accuracy on held-out digits; agreement = top-1 equal to Keras):", "",
              common.markdown_table(["model", "what", "tf2onnx", "ONNX MB", "max abs diff ONNX vs Keras", "Keras",
                                     "ONNX", "served", "optimized (chosen) served",
                                     "optimizer candidates, in-process batch-32 median"], qrows), ""]
    for m, r in models.items():
        note = r.get("note", "")
        if r.get("output_spread", 1.0) < 1e-6:
            note += ("; its output is flat (per-sample spread across classes "
                     f"{r['output_spread']:.1e}), so agreement and the zero diff do not show numerical fidelity here")
        if note:
            lines.append(f"- {m}: {note}.")
    lines.append("")
    conc = results.get("concurrency")
    if conc:
        base = {r["concurrency"]: r for r in conc["ways"]["onnx_in_process"]}
        crow = []
        for way, label in (("onnx_in_process", "onnxruntime in-process (baseline)"),
                           ("served", "served, no batching"), ("served_batched", "served, dynamic batching")):
            for r in conc["ways"][way]:
                lat = r.get("latency", {})
                crow.append([label, r["concurrency"], f"{r['calls_per_s']:.0f}",
                             common.fmt_ratio(common.ratio(r["calls_per_s"], base[r["concurrency"]]["calls_per_s"])),
                             f"{lat.get('p50_ms', float('nan')):.2f}", f"{lat.get('p99_ms', float('nan')):.2f}",
                             f"{r['mean_batch']:.1f}" if "mean_batch" in r else "—", r["errors"]])
        lines += [f"### Serving overhead against concurrency ({conc['model']}, batch-1 requests)", "",
                  "N client threads (one shared gRPC channel, like tritonclient) send batch-1 requests for a fixed "
                  "time; the baseline is N threads calling one onnxruntime session in-process. Dynamic batching: "
                  "max batch 32, max queue delay 2 ms; mean batch = inferences / executions from the service's "
                  "ModelStatistics. Measured with `bench_serving`'s functions. With 2 cores shared by client and "
                  "server, the Python client itself is part of the cost.", "",
                  common.markdown_table(["way", "concurrency", "req/s", "vs in-process", "p50 ms", "p99 ms",
                                         "mean batch", "errors"], crow), ""]
    lines += [f"![{p}]({p})\n" for p in plots]
    lines += ["Command:", "", f"    {command}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = common.bench_args("Keras vs ONNX vs served vs optimized+served, and serving under concurrency")
    p.add_argument("--keras-phase", type=Path, default=None, help=argparse_suppress())
    args = p.parse_args(argv)
    if args.keras_phase is not None:
        keras_phase(args.keras_phase, args.quick)
        return 0
    command = common.command_line()
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    proc = None
    results: dict = {"command": command, "quick": args.quick, "models": {}}
    try:
        # Keras runs in its own process: TensorFlow's thread pools would otherwise compete with
        # onnxruntime's (and the server's) for the 2 cores and distort every other number.
        subprocess.run([sys.executable, "-m", "benchmarks.bench_e2e", "--keras-phase", str(work)]
                       + (["--quick"] if args.quick else []), check=True, cwd=common.REPO_ROOT,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        cases = load_cases(work)
        proc, address = common.start_service_subprocess("inference_svc", store=work / "store", log_dir=work / "logs")
        from modelport.runtime.channels import make_channel

        channel = make_channel(address)
        results["grpc_floor"] = grpc_floor(channel, args.quick)
        print(f"  no-op RPC (ServerLive) p50 {results['grpc_floor']['p50_ms']:.3f} ms", flush=True)
        for case in cases:
            results["models"][case.name] = run_model(case, work, channel, args.quick)
        results["concurrency"] = run_concurrency(cases[0], work, channel, address, args.quick)
        channel.close()
    finally:
        if proc is not None:
            common.stop_service_subprocess(proc)
        shutil.rmtree(work, ignore_errors=True)
    results["tensorflow_in_measuring_process"] = "tensorflow" in sys.modules
    plots = plot(results)
    common.write_section("e2e", markdown(results, plots, command), results)
    return 0


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
