"""Conversion through the converter service vs calling tf2onnx in-process (Keras -> ONNX).

For MobileNetV2 (``weights=None``) and a small transformer encoder, one warm converter
(worker reused, ``worker_max_jobs=0``) converts the uploaded ``.keras`` file to ONNX; the job
cache is bypassed by giving each request a different parity seed (the conversion work is the
same). The baseline, in this process and in the same run: load the ``.keras`` file and call
``tf2onnx.convert.from_function`` (``modelport.conversion.onnx_export.keras_model_to_onnx``).
The service also verifies parity (runs both models on 8 samples) and stores the result; the
per-stage split shows where its extra time goes. Goal (issue 3): service <= 1.3x direct.

    .venv/bin/python -m benchmarks.bench_convert           # 3 timed runs per model and method
    .venv/bin/python -m benchmarks.bench_convert --quick   # MobileNetV2 at 96x96, 1 run
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.models import transformer_encoder

GOAL = 1.3


def build_models(quick: bool, folder: Path) -> dict[str, Path]:
    """Save MobileNetV2 and a transformer encoder as .keras files."""
    import keras

    keras.utils.set_random_seed(0)
    size = 96 if quick else 224
    mobilenet = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3))
    transformer = transformer_encoder(keras, vocab=1000, seq=64, dim=128, heads=4, ff=512, blocks=2,
                                      ff_activation="gelu", head_units=2, head_activation="softmax", head_name="label")
    paths = {}
    for name, model in ((f"MobileNetV2 {size}x{size}", mobilenet), ("transformer encoder (2 blocks, d=128)", transformer)):
        p = folder / (name.split()[0].lower() + ".keras")
        model.save(str(p))
        paths[name] = p
    return paths


def direct_convert(path: Path, out: Path) -> float:
    """Baseline: load the .keras file and convert with tf2onnx in this process; seconds."""
    import keras

    from modelport.conversion.onnx_export import keras_model_to_onnx

    t0 = time.perf_counter()
    model = keras.saving.load_model(str(path), compile=False)
    keras_model_to_onnx(model, out, opset=17)
    return time.perf_counter() - t0


def service_convert(stub, ref, seed: int) -> tuple[float, dict[str, float]]:
    """One Convert through the service; (seconds, seconds per stage as seen by the client)."""
    from modelport.v1 import converter_pb2

    req = converter_pb2.ConvertRequest(source=ref, target_format="onnx",
                                       parity=converter_pb2.ParityOptions(seed=seed))
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    last_stage, last_t = "queued", t0
    for ev in stub.Convert(req, timeout=1800):
        now = time.perf_counter()
        stages[last_stage] = stages.get(last_stage, 0.0) + (now - last_t)
        last_stage, last_t = ev.stage, now
        if ev.HasField("error"):
            raise RuntimeError(ev.error.message)
        if ev.stage == "done":
            assert not ev.cached, "the cache was not bypassed"
            assert ev.convert_result.parity.passed, ev.convert_result.parity
    return time.perf_counter() - t0, stages


def main() -> None:
    args = common.bench_args(__doc__.splitlines()[0]).parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    runs = 1 if args.quick else 3

    from converter_svc.service import ConverterService
    from converter_svc.settings import ConverterSettings
    from modelport.runtime.artifacts import upload_requests
    from modelport.runtime.background import BackgroundServer
    from modelport.runtime.channels import make_channel
    from modelport.v1 import artifacts_pb2_grpc, converter_pb2_grpc

    rows, data = [], {"runs": runs, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        tmp = Path(tmp)
        paths = build_models(args.quick, tmp)
        settings = ConverterSettings(host="127.0.0.1", port=0, store=tmp / "store", worker_max_jobs=0)
        srv = BackgroundServer(ConverterService(settings)).start()
        try:
            channel = make_channel(srv.address)
            conv = converter_pb2_grpc.ConverterStub(channel)
            arts = artifacts_pb2_grpc.ArtifactsStub(channel)
            seed = 1000
            for name, path in paths.items():
                ref = arts.Upload(upload_requests(path, "application/vnd.modelport.keras"))
                # warm-up (untimed): traces TF functions once in each process
                direct_convert(path, tmp / "warm.onnx")
                seed += 1
                service_convert(conv, ref, seed)
                direct, service, stage_runs = [], [], []
                for _ in range(runs):
                    direct.append(direct_convert(path, tmp / "direct.onnx"))
                    seed += 1
                    t, stages = service_convert(conv, ref, seed)
                    service.append(t)
                    stage_runs.append(stages)
                d, s = statistics.median(direct), statistics.median(service)
                stage_med = {k: statistics.median(st.get(k, 0.0) for st in stage_runs) for k in stage_runs[0]}
                r = common.ratio(s, d)
                data["models"][name] = {"direct_s": direct, "service_s": service, "stages_s": stage_runs,
                                        "ratio": r, "model_bytes": path.stat().st_size}
                conv_only = stage_med.get("converting", 0.0)
                rows.append([name, f"{path.stat().st_size / 1e6:.1f} MB", f"{d:.2f}", f"{s:.2f}",
                             common.fmt_ratio(r), f"{stage_med.get('loading', 0):.2f}", f"{conv_only:.2f}",
                             f"{stage_med.get('verifying', 0):.2f}", f"{stage_med.get('storing', 0):.2f}",
                             "yes" if r is not None and r <= GOAL else "**no**"])
            channel.close()
        finally:
            srv.stop()

    table = common.markdown_table(
        ["model", ".keras size", "direct s (median)", "service s (median)", "ratio", "svc loading s",
         "svc converting s", "svc verifying s", "svc storing s", f"<= {GOAL}x"], rows)
    md = "\n".join([
        "## Converter: Keras -> ONNX through the service vs tf2onnx in-process",
        "",
        "Direct = load the `.keras` file with Keras and call `tf2onnx.convert.from_function` in the benchmark "
        "process. Service = one `Convert` RPC to a warm converter (worker reused; job cache bypassed by a new "
        "parity seed per request), which additionally runs the source and the ONNX model on 8 generated samples "
        "(parity) and stores the result. Times are medians of "
        f"{runs} timed run(s) after one untimed warm-up each; stage times are measured by the client "
        "between JobEvents.",
        "",
        f"Command: `{common.command_line()}`",
        "",
        common.system_info_markdown(),
        "",
        table,
        "",
    ])
    common.write_section("convert", md, data)
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(data["models"])
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [statistics.median(data["models"][n]["direct_s"]) for n in names], 0.4,
           label="tf2onnx in-process")
    ax.bar([x + 0.2 for x in xs], [statistics.median(data["models"][n]["service_s"]) for n in names], 0.4,
           label="converter service (incl. parity)")
    ax.set_xticks(list(xs), [n.split(" (")[0] for n in names])
    ax.set_ylabel("seconds")
    ax.legend()
    common.save_figure(fig, "convert")
    print(md)


if __name__ == "__main__":
    main()
