"""Optimizer benchmark: per technique, size / gzip-size / latency ratios and accuracy (or output
agreement and cosine) change against the FP32 baseline measured in the same job.

Models: a transformer encoder (BERT-Small shape: 4 blocks, d=512, 8 heads, 128 tokens; ONNX techniques; plus
BERT-Mini, d=256, with dynamic INT8 only), MobileNetV2
(``weights=None``, 96x96; ONNX techniques) and the digits CNN trained on scikit-learn digits
(Keras input: every technique). Everything goes through a real optimizer service (gRPC, worker
processes), as a user's request would.

    .venv/bin/python -m benchmarks.bench_optimize [--quick]

Goals checked (reported met or not): dynamic INT8 on the transformer <= 0.6x FP32 latency with
output cosine >= 0.99; 80 % pruning on digits within one accuracy point with gzip size <= 0.4x.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.models import digits_arrays, digits_cnn, transformer_encoder

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ONNX_TECHS = ["graph", "fp16", "int8-dynamic", "int8-static"]
KERAS_TECHS = ["graph", "fp16", "int8-dynamic", "int8-static", "prune", "prune-2:4", "cluster", "qat", "distill",
               "tflite-dynamic", "tflite-fp16", "tflite-int8"]


def build_models(work: Path, quick: bool) -> list[dict]:
    """Build (and for digits, train) the models; returns one spec per model."""
    import keras

    from modelport.conversion.onnx_export import keras_model_to_onnx

    keras.utils.set_random_seed(0)
    specs = []
    rng = np.random.default_rng(0)

    # digits: real data, trained; Keras input so every technique applies.
    x, y = digits_arrays(rng)
    m = digits_cnn(keras, filters=(16, 32), pool_after=2, dense=128)
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x[:1400], y[:1400], epochs=4 if quick else 8, batch_size=32, verbose=0)
    m.save(work / "digits.keras")
    np.savez(work / "digits_train.npz", image=x[:1400], y=y[:1400])
    np.savez(work / "digits_eval.npz", image=x[1400:], y=y[1400:])
    np.savez(work / "digits_calib.npz", image=x[:200])
    specs.append({"name": "digits CNN", "model": work / "digits.keras", "train": work / "digits_train.npz",
                  "eval": work / "digits_eval.npz", "calib": work / "digits_calib.npz",
                  "techniques": ["prune", "int8-dynamic"] if quick else KERAS_TECHS,
                  "budget": 0.01,
                  "options": {"prune.sparsity": "0.8", "train.epochs": "3" if quick else "10",
                              "cluster.clusters": "16"}})

    # transformer encoders: random weights, random token ids; quality = output cosine/agreement.
    # Full run: BERT-Small's published shape (L=4, H=512, A=8, FF=2048; Turc et al. 2019) at 128 tokens,
    # every ONNX technique; and BERT-Mini (L=4, H=256, A=4, FF=1024) with dynamic INT8 only, to show how
    # the INT8 gain depends on width. --quick: one block of d=128 over 64 tokens.
    if quick:
        encoders = [("transformer encoder", transformer_encoder(keras, blocks=1), 64, ["int8-dynamic"], "30")]
    else:
        encoders = [
            ("transformer encoder", transformer_encoder(keras, dim=512, heads=8, ff=2048, blocks=4, seq=128,
                                                        head_units=512), 128, ONNX_TECHS, "60"),
            ("transformer encoder (BERT-Mini)", transformer_encoder(keras, dim=256, heads=4, ff=1024, blocks=4,
                                                                    seq=128, head_units=256), 128,
             ["int8-dynamic"], "100"),
        ]
    for i, (name, t, seq, techs, repeats) in enumerate(encoders):
        keras_model_to_onnx(t, work / f"transformer{i}.onnx")
        ids = rng.integers(0, 1000, size=(64, seq)).astype("int32")
        np.savez(work / f"tr{i}_eval.npz", token_ids=ids)
        np.savez(work / f"tr{i}_calib.npz", token_ids=ids[:32])
        specs.append({"name": name, "model": work / f"transformer{i}.onnx", "eval": work / f"tr{i}_eval.npz",
                      "calib": work / f"tr{i}_calib.npz", "budget": 0.05, "techniques": techs,
                      "options": {"measure.batch_size": "4", "measure.repeats": repeats}})

    if not quick:
        mb = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), classes=10)
        keras_model_to_onnx(mb, work / "mobilenetv2.onnx")
        name = mb.inputs[0].name.split(":")[0]
        from modelport.conversion.onnx_export import keras_input_infos

        name = keras_input_infos(mb)[0].name
        imgs = rng.uniform(-1, 1, size=(48, 96, 96, 3)).astype("float32")
        np.savez(work / "mb_eval.npz", **{name: imgs})
        np.savez(work / "mb_calib.npz", **{name: imgs[:16]})
        specs.append({"name": "MobileNetV2 (weights=None, 96x96)", "model": work / "mobilenetv2.onnx",
                      "eval": work / "mb_eval.npz", "calib": work / "mb_calib.npz", "techniques": ONNX_TECHS,
                      "budget": 0.05,
                      "options": {"measure.repeats": "30", "int8-static.samples": "16"}})
    return specs


def optimize(address: str, spec: dict) -> tuple[object, float]:
    import grpc

    from modelport import media
    from modelport.runtime.artifacts import upload_requests
    from modelport.runtime.channels import channel_options
    from modelport.v1 import artifacts_pb2_grpc, optimizer_pb2, optimizer_pb2_grpc

    ch = grpc.insecure_channel(address, options=channel_options())
    arts = artifacts_pb2_grpc.ArtifactsStub(ch)

    def up(p: Path, mt: str):
        return arts.Upload(upload_requests(p, mt))

    mt = media.KERAS if spec["model"].suffix == ".keras" else media.ONNX
    req = optimizer_pb2.OptimizeRequest(model=up(spec["model"], mt), techniques=spec["techniques"],
                                        budget=optimizer_pb2.AccuracyBudget(max_drop=spec["budget"]))
    for key in ("train", "eval", "calib"):
        if key in spec:
            field = {"train": "train_data", "eval": "eval_data", "calib": "calibration_data"}[key]
            getattr(req, field).CopyFrom(up(spec[key], media.NPZ))
    req.options.update(spec["options"])
    t0 = time.monotonic()
    last = None
    for ev in optimizer_pb2_grpc.OptimizerStub(ch).Optimize(req, timeout=900):
        last = ev
    ch.close()
    return last.optimize_result, time.monotonic() - t0


def rows_for(name: str, res) -> list[dict]:
    b = res.baseline
    out = []
    for c in res.candidates:
        failed = c.details.get("status") in ("failed", "skipped")
        q_base = b.accuracy if not math.isnan(b.accuracy) else None
        out.append({
            "model": name, "technique": c.technique, "format": c.format, "failed": failed, "note": c.note,
            "size_ratio": None if failed else c.size_bytes / b.size_bytes,
            "gzip_ratio": None if failed else c.gzip_size_bytes / b.gzip_size_bytes,
            # timed interleaved with the baseline in the same job (drift on a shared machine cancels out)
            "latency_ratio": None if failed else float(c.details.get("latency_ratio_paired",
                                                                     c.latency_p50_ms / b.latency_p50_ms)),
            "latency_p50_ms": c.latency_p50_ms, "baseline_p50_ms": b.latency_p50_ms,
            "accuracy": None if math.isnan(c.accuracy) else c.accuracy,
            "accuracy_change": (c.accuracy - q_base) if (q_base is not None and not failed) else None,
            "agreement": None if math.isnan(c.agreement) else c.agreement,
            "cosine": float(c.details["cosine"]) if "cosine" in c.details else None,
            "details": dict(c.details),
        })
    return out


def main() -> int:
    args = common.bench_args(__doc__.splitlines()[0]).parse_args()
    from modelport.runtime.background import BackgroundServer
    from optimizer_svc.service import OptimizerService
    from optimizer_svc.settings import OptimizerSettings

    work = Path(tempfile.mkdtemp(prefix="bench-optimize-"))
    t0 = time.monotonic()
    specs = build_models(work, args.quick)
    srv = BackgroundServer(OptimizerService(OptimizerSettings(host="127.0.0.1", port=0, store=work / "store",
                                                              job_timeout_s=900))).start()
    rows, runs = [], []
    try:
        for spec in specs:
            res, secs = optimize(srv.address, spec)
            rows += rows_for(spec["name"], res)
            runs.append({"model": spec["name"], "seconds": secs, "baseline": {
                "size_bytes": res.baseline.size_bytes, "gzip_size_bytes": res.baseline.gzip_size_bytes,
                "latency_p50_ms": res.baseline.latency_p50_ms, "latency_p90_ms": res.baseline.latency_p90_ms,
                "accuracy": None if math.isnan(res.baseline.accuracy) else res.baseline.accuracy},
                "chosen": res.chosen_technique, "reason": res.reason, "options": spec["options"],
                "techniques": spec["techniques"]})
    finally:
        srv.stop()

    goals = []
    for model, label in (("transformer encoder", "the transformer"),
                         ("transformer encoder (BERT-Mini)", "BERT-Mini (narrower, for comparison)")):
        tr = next((r for r in rows if r["model"] == model and r["technique"] == "int8-dynamic"), None)
        if tr and not tr["failed"]:
            met = tr["latency_ratio"] <= 0.6 and tr["cosine"] >= 0.99
            goals.append((f"dynamic INT8 on {label}: latency <= 0.6x FP32, output cosine >= 0.99",
                          f"latency {tr['latency_ratio']:.2f}x, cosine {tr['cosine']:.4f}", met))
    pr = next((r for r in rows if r["model"] == "digits CNN" and r["technique"] == "prune"), None)
    if pr and not pr["failed"]:
        met = pr["accuracy_change"] >= -0.01 and pr["gzip_ratio"] <= 0.4
        goals.append(("80 % pruning on digits: accuracy within 1 point, gzip size <= 0.4x",
                      f"accuracy change {pr['accuracy_change'] * 100:+.2f} points, gzip {pr['gzip_ratio']:.2f}x, "
                      f"sparsity {pr['details'].get('onnx_weight_sparsity')}", met))

    def f(v, fmt="{:.2f}×"):
        return "n/a" if v is None else fmt.format(v)

    md = ["## Optimizer: techniques against the FP32 baseline", "",
          "Each model goes through one Optimize request on a real optimizer service; every candidate is "
          "measured in the same job as its baseline (latency p50 on CPUExecutionProvider or the TFLite "
          "interpreter, onnxruntime default threads; each candidate is timed in alternating blocks with the "
          "baseline and the latency ratio comes from those paired runs). Ratios are candidate / baseline (lower is better for "
          "size and latency). Accuracy change is in points on the labeled eval split (digits); the random-"
          "weight transformer and MobileNetV2 have no labels, so top-1 agreement and the output cosine "
          "against the baseline stand in (budget: 1 point on digits, 5 % agreement elsewhere). Explicit technique "
          "lists return the best candidate within budget even when it is slower ('chosen'); `auto` would not.", "",
          f"Command: `{common.command_line()}`", "", common.system_info_markdown(), ""]
    md += ["### Goals", "", common.markdown_table(["goal", "measured", "met"],
                                                  [(g, m, "yes" if ok else "**no**") for g, m, ok in goals]), ""]
    for run in runs:
        b = run["baseline"]
        md += [f"### {run['model']}", "", f"Options: `{json.dumps(run['options'])}`", "",
               f"Baseline: {b['size_bytes'] / 1024:.0f} KiB ({b['gzip_size_bytes'] / 1024:.0f} KiB gzip), "
               f"p50 {b['latency_p50_ms']:.3f} ms"
               + (f", accuracy {b['accuracy']:.4f}" if b["accuracy"] is not None else "")
               + f". Job time {run['seconds']:.0f} s.", ""]
        table = []
        for r in [r for r in rows if r["model"] == run["model"]]:
            if r["failed"]:
                table.append((r["technique"], r["format"] or "-", "-", "-", "-", "-", "-", "-", r["note"][:120]))
                continue
            acc = "n/a" if r["accuracy_change"] is None else f"{r['accuracy_change'] * 100:+.2f}"
            table.append((r["technique"], r["format"], f(r["size_ratio"]), f(r["gzip_ratio"]), f(r["latency_ratio"]),
                          acc, f(r["agreement"], "{:.3f}"), f(r["cosine"], "{:.4f}"), r["note"][:120]))
        md.append(common.markdown_table(["technique", "format", "size", "gzip size", "latency p50",
                                         "accuracy Δ (points)", "agreement", "cosine", "note"], table))
        md.append("")
    md += ["Notes: MobileNetV2 and the transformer have random weights (no pretrained weights offline), so "
           "agreement/cosine there only show the numerics are sane (MobileNetV2's random softmax is nearly flat); "
           "the size and latency ratios are the signal. The machine is shared (2 cores, other jobs running): "
           "latency ratios of sub-millisecond models move by +-20 % between runs. "
           "On this CPU INT8 is not automatically faster (docs/FACTS.md): the optimizer measures and `auto` "
           "never returns a slower candidate. Pruned/clustered models keep their dense layout, so only the gzip "
           "size shrinks; 2:4 sparsity needs sparse tensor cores to speed anything up.",
           f"Total benchmark time {time.monotonic() - t0:.0f} s."]
    plot(rows)
    common.write_section("optimize", "\n".join(md), {"rows": rows, "runs": runs,
                                                     "goals": [{"goal": g, "measured": m, "met": ok}
                                                               for g, m, ok in goals], "quick": args.quick})
    print("\n".join(md))
    return 0


def plot(rows: list[dict]) -> None:
    plt = common.pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(models), 1, figsize=(9, 2.8 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models, strict=True):
        rs = [r for r in rows if r["model"] == model and not r["failed"]]
        xs = np.arange(len(rs))
        ax.bar(xs - 0.2, [r["latency_ratio"] for r in rs], 0.4, label="latency p50 ratio")
        ax.bar(xs + 0.2, [r["gzip_ratio"] for r in rs], 0.4, label="gzip size ratio")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(xs, [r["technique"] for r in rs], rotation=30, ha="right")
        ax.set_title(model)
        ax.legend(fontsize=7)
    common.save_figure(fig, "optimize")


if __name__ == "__main__":
    raise SystemExit(main())
