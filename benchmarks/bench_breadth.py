"""Converter breadth: every ``keras.applications`` architecture plus recurrent and attention models,
Keras -> ONNX with modelport and with plain tf2onnx side by side (issue 18).

Each model is built with random weights (``weights=None``, 10 classes, the smallest input the
architecture accepts from 32 px up, ``classifier_activation=None``: logits, since a random-weight softmax is
near-uniform or one-hot and a diff on it proves little) and saved as ``.keras`` in its own process; then,
each in a fresh process with a time bound and a memory cap:

- **modelport**: the converter's job function (``modelport.conversion.convert.convert_model``, what
  ``modelport convert model.keras --to onnx --offline`` runs in its worker) at defaults: opset 17, 8
  generated parity samples, the default parity tolerances. Status is the job's outcome (the parity
  check included); max abs diff is the parity report's; conversion time is the ``converting`` stage
  (source to ONNX, before the result is loaded and verified).
- **plain tf2onnx**: ``keras.saving.load_model`` then ``tf2onnx.convert.from_function`` at opset 17
  (what a user would write), its ONNX run with onnxruntime on the same kind of inputs; conversion time
  is ``from_function``'s.

Max abs diff is shown with the largest |output| of the source on the parity samples (random-weight logits can
be as small as 1e-20, far below the default atol). Peak RSS is the process's own high-water mark (``ru_maxrss``: TensorFlow import, load, conversion and
the parity run), divided by the model's weight bytes. A process past the cap is killed and reported so.
Models of more than 400 MB of weights (plain tf2onnx: 64 MB) run under ``flock /tmp/modelport-heavy.lock``.

    .venv/bin/python -m benchmarks.bench_breadth                  # the whole matrix
    .venv/bin/python -m benchmarks.bench_breadth --quick          # MobileNetV2 and an LSTM (rows merged into the matrix)
    .venv/bin/python -m benchmarks.bench_breadth --models ConvNeXtTiny,lstm --timeout 300
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import common

GB = 1e9
CLASSES = 10
HEAVY_LOCK = "/tmp/modelport-heavy.lock"
HEAVY_BYTES = 400 << 20
# Plain tf2onnx peaks at 25-65x the weights (its frozen graph, constant folding): from this size on it may pass
# 4 GiB, so it takes the heavy lock too.
PLAIN_HEAVY_BYTES = 64 << 20
RATIO_FROM = 50 << 20  # below this, peak RSS is TensorFlow's own footprint: shown in GB, not per weight byte
# Input size per family: the smallest the architecture accepts with weights=None (at least 32 px).
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71, "NASNetMobile": 32, "NASNetLarge": 32}
DEFAULT_SIZE = 32
# Models built here (not in keras.applications): recurrent and attention.
EXTRA = {
    "lstm": "LSTM(64) over 20 steps x 16 features -> Dense(10)",
    "gru": "GRU(64) over 20 steps x 16 features -> Dense(10)",
    "bilstm": "Bidirectional(LSTM(32), return_sequences) -> LSTM(32) -> Dense(10)",
    "simplernn": "SimpleRNN(64) over 20 steps -> Dense(10)",
    "transformer_encoder": "int token ids (seq 32, vocab 1000) -> Embedding 128 -> 2 blocks MHA(4 heads)+FFN 256, "
                           "LayerNorm -> pooled Dense(10)",
    "vit_tiny": "ViT: 32x32x3 -> 4x4 patches (Conv) + position embedding -> 2 blocks MHA(4 heads), "
                "LayerNorm pre-norm -> Dense(10)",
    "conv_lstm": "Conv1D(32) -> LSTM(32) -> attention pooling (Attention layer) -> Dense(10)",
}
# The biggest (hundreds of MB of weights whatever the input size): measured last in a fresh matrix.
BIG = {"ConvNeXtXLarge", "ConvNeXtLarge", "ConvNeXtBase", "EfficientNetV2L", "EfficientNetV2M", "NASNetLarge",
       "EfficientNetB7", "EfficientNetB6", "ResNet152", "ResNet152V2", "VGG19", "VGG16"}
QUICK = ["MobileNetV2", "lstm"]


def application_names() -> list[str]:
    """Every architecture function in ``keras.applications`` (capitalized attributes)."""
    import keras

    return sorted(n for n in dir(keras.applications) if n[:1].isupper() and callable(getattr(keras.applications, n)))


def _extra_model(keras, name: str):
    layers = keras.layers
    if name in ("lstm", "gru", "simplernn"):
        cell = {"lstm": layers.LSTM, "gru": layers.GRU, "simplernn": layers.SimpleRNN}[name]
        x = keras.Input((20, 16), name="series")
        return keras.Model(x, layers.Dense(CLASSES)(cell(64)(x)), name=name)
    if name == "bilstm":
        x = keras.Input((20, 16), name="series")
        h = layers.Bidirectional(layers.LSTM(32, return_sequences=True))(x)
        return keras.Model(x, layers.Dense(CLASSES)(layers.LSTM(32)(h)), name=name)
    if name == "conv_lstm":
        x = keras.Input((20, 16), name="series")
        h = layers.Conv1D(32, 3, padding="same", activation="relu")(x)
        h = layers.LSTM(32, return_sequences=True)(h)
        a = layers.Attention()([h, h])
        return keras.Model(x, layers.Dense(CLASSES)(layers.GlobalAveragePooling1D()(a)), name=name)
    if name == "transformer_encoder":
        ids = keras.Input((32,), dtype="int32", name="token_ids")
        h = layers.Embedding(1000, 128)(ids)
        for _ in range(2):
            a = layers.MultiHeadAttention(4, 32)(h, h)
            h = layers.LayerNormalization()(layers.Add()([h, a]))
            f = layers.Dense(128)(layers.Dense(256, activation="gelu")(h))
            h = layers.LayerNormalization()(layers.Add()([h, f]))
        return keras.Model(ids, layers.Dense(CLASSES)(layers.GlobalAveragePooling1D()(h)), name=name)
    if name == "vit_tiny":
        x = keras.Input((32, 32, 3), name="image")
        p = layers.Reshape((64, 64))(layers.Conv2D(64, 4, strides=4)(x))
        pos = layers.Embedding(64, 64)(keras.ops.arange(64))
        h = p + pos
        for _ in range(2):
            n = layers.LayerNormalization()(h)
            h = h + layers.MultiHeadAttention(4, 16)(n, n)
            n = layers.LayerNormalization()(h)
            h = h + layers.Dense(64)(layers.Dense(128, activation="gelu")(n))
        return keras.Model(x, layers.Dense(CLASSES)(layers.GlobalAveragePooling1D()(h)), name=name)
    raise SystemExit(f"unknown model {name}")


def build(name: str, out: Path) -> None:
    """Build ``name`` with random weights and save it to ``out`` (.keras); prints the input size used."""
    import keras

    keras.utils.set_random_seed(0)
    if name in EXTRA:
        model = _extra_model(keras, name)
    else:
        size = MIN_SIZE.get(name, DEFAULT_SIZE)
        # Logits, not softmax: random-weight softmax outputs are (near-)one-hot or uniform, so a diff on them
        # proves little; logits show the numeric fidelity.
        model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=CLASSES,
                                                  classifier_activation=None)
    model.save(str(out))


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_modelport(path: Path, result_file: Path) -> None:
    """The converter job at defaults on ``path``; writes a JSON result."""
    import numpy as np

    import modelport.conversion.convert as cv
    from modelport import media
    from modelport.conversion.convert import convert_model
    from modelport.errors import ModelportError
    from modelport.job_records import ConvertJob
    from modelport.store import ArtifactStore

    marks: dict[str, float] = {}
    scale: list[float] = []
    run_checked = cv.run_checked

    def spy(model, inputs, role, explain=None):  # the source's outputs on the parity samples: their scale
        got = run_checked(model, inputs, role, explain)
        if role == "source":
            scale.append(max(float(np.max(np.abs(v))) for v in got.values() if v.dtype.kind == "f"))
        return got

    cv.run_checked = spy

    def progress(stage: str, fraction: float, message: str = "") -> None:
        marks.setdefault(stage, time.perf_counter())

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="breadth-store-", dir=path.parent) as tmp:
        store = ArtifactStore(tmp)
        ref = store.put_file(path, media.KERAS)
        job = ConvertJob(source_digest=ref.digest, target_format="onnx")
        t0 = time.perf_counter()
        try:
            res = convert_model(store, job, progress)
            out["status"] = "ok"
            out["max_abs_diff"] = max(o.max_abs_diff for o in res.parity.outputs)
            out["export"] = res.info.details.get("export", "")
            out["judged_by"] = sorted({o.judged_by for o in res.parity.outputs})
            out["source_noise"] = res.info.details.get("parity_source_noise", "")
        except ModelportError as e:
            out["status"] = "failed"
            out["error"] = f"{e.status}: {e.message}"
            out["max_abs_diff"] = _parity_diff(e)
        out["job_s"] = time.perf_counter() - t0
        out["output_scale"] = scale[0] if scale else None
        if "converting" in marks:
            out["convert_s"] = marks.get("verifying", time.perf_counter()) - marks["converting"]
    out["peak_rss"] = _peak_rss()
    result_file.write_text(json.dumps(out))


def _parity_diff(err) -> float | None:
    """The max abs diff of a failed parity check (its ``ParityReport`` record travels as the error's payload)."""
    report = err.payload
    if report is None or not hasattr(report, "outputs"):
        return None
    return max((o.max_abs_diff for o in report.outputs), default=None)


def run_plain(path: Path, result_file: Path) -> None:
    """Plain tf2onnx ``from_function`` on the loaded model, then onnxruntime vs Keras on 8 inputs."""
    import keras
    import numpy as np
    import tensorflow as tf
    import tf2onnx

    out: dict = {}
    model = keras.saving.load_model(str(path), compile=False)
    spec = [tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=t.name.split(":")[0]) for t in model.inputs]
    fn = tf.function(lambda *a: model(a[0] if len(a) == 1 else list(a), training=False))
    t0 = time.perf_counter()
    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
        out["convert_s"] = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        feeds = {}
        for s, inp in zip(spec, proto.graph.input, strict=False):
            shape = [8, *s.shape[1:]]
            feeds[inp.name] = (rng.integers(0, 5, shape).astype(s.dtype.as_numpy_dtype) if s.dtype.is_integer
                               else rng.uniform(-1, 1, shape).astype(s.dtype.as_numpy_dtype))
        import onnxruntime as ort

        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds)
        args = list(feeds.values())
        ref = tf.nest.flatten(model(args[0] if len(args) == 1 else args, training=False))
        out["max_abs_diff"] = max(float(np.max(np.abs(np.asarray(r) - g))) for r, g in zip(ref, got, strict=False))
        out["output_scale"] = max(float(np.max(np.abs(np.asarray(r)))) for r in ref)
        ok = all(np.allclose(np.asarray(r), g, rtol=1e-3, atol=1e-4) for r, g in zip(ref, got, strict=False))
        out["status"] = "ok" if ok else "mismatch"
    except Exception as e:  # noqa: BLE001 - reported in the table
        out.setdefault("convert_s", time.perf_counter() - t0)
        out["status"] = "failed"
        out["error"] = f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0][:300]
    out["peak_rss"] = _peak_rss()
    result_file.write_text(json.dumps(out))


# ---- orchestration ------------------------------------------------------------------------------

def _child(args: list[str], timeout: float, cap: int, heavy: bool, result_file: Path) -> dict:
    """Run this module with ``args`` in a fresh process (under the heavy lock when ``heavy``)."""
    from benchmarks.bench_large import run_capped

    cmd = [sys.executable, "-m", "benchmarks.bench_breadth", *args]
    # The heavy lock is taken here, before the clock starts: waiting for another job's lock is not a timeout.
    with _heavy_lock(heavy):
        rc, mem, secs, tail = run_capped(cmd, cap, timeout)
    if result_file.is_file():
        out = json.loads(result_file.read_text())
        result_file.unlink()
    elif mem.killed_at_bytes:
        out = {"status": "killed", "error": f"killed at {mem.killed_at_bytes / GB:.1f} GB (memory cap)"}
    elif secs >= timeout:
        out = {"status": "timeout", "error": f"over the {timeout:.0f}s bound"}
    else:
        out = {"status": "crashed", "error": f"exit {rc}: {tail[-200:]}"}
    out["wall_s"] = secs
    out.setdefault("peak_rss", mem.peak_bytes)
    return out


@contextlib.contextmanager
def _heavy_lock(heavy: bool):
    """``flock /tmp/modelport-heavy.lock`` (the same flock(2) lock) held while a heavy child runs."""
    if not heavy:
        yield
        return
    import fcntl

    with open(HEAVY_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main() -> None:
    p = common.bench_args(__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated subset (keras.applications names, " +
                   ", ".join(EXTRA) + ")")
    p.add_argument("--skip-plain", action="store_true", help="modelport only")
    p.add_argument("--routes", default="modelport,plain", help="which converters to run (the others keep their rows)")
    p.add_argument("--keep-models", default="", help="a folder to keep (and reuse) the built .keras files in")
    p.add_argument("--budget", type=float, default=0, help="start no new model after this many seconds (0: none); "
                   "rows not measured keep their previous figures")
    p.add_argument("--jobs", type=int, default=1, help="models measured at once (each in its own processes)")
    p.add_argument("--timeout", type=float, default=600, help="bound per process, seconds")
    p.add_argument("--cap-gb", type=float, default=0.0, help="memory cap per process (default: (available - 3 GB) / "
                   "jobs, at most 16 GB)")
    p.add_argument("--render", action="store_true", help="re-render the section from results/breadth.json")
    p.add_argument("--child", nargs=3, metavar=("ROLE", "KERAS", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        role, path, result = args.child
        if role == "build":
            return build(path, Path(result))
        return (run_modelport if role == "modelport" else run_plain)(Path(path), Path(result))
    if args.render:
        results = json.loads((common.RESULTS_DIR / "breadth.json").read_text())
        md = render(results)
        (common.RESULTS_DIR / "breadth.md").write_text(md.rstrip() + "\n")
        return print(md)

    from modelport.memory import available_bytes, weight_bytes

    if args.quick:  # run_all's smoke run gives a benchmark 2 minutes
        args.budget, args.timeout = args.budget or 45, min(args.timeout, 90)
    previous = _previous()
    if args.models:
        names = [n for n in args.models.split(",") if n]
    elif args.quick:
        names = QUICK
    else:
        names = application_names_subprocess() + list(EXTRA)
        # The least recently measured first: a run cut short by --budget (run_all) refreshes the stalest rows.
        names.sort(key=lambda n: (previous["models"].get(n, {}).get("measured_unix", 0), n in BIG))
    cap = int(args.cap_gb * GB) if args.cap_gb else \
        int(min(16 * GB, (available_bytes().available - 3 * GB) / max(1, args.jobs)))
    results: dict = {**previous, "names": sorted(set(previous.get("names", [])) | set(names), key=_row_order),
                     "cap_bytes": cap, "timeout_s": args.timeout,
                     "load_avg_before": common.load_average(), "command": common.command_line()}
    results.setdefault("models", {})
    t0 = time.time()
    lock = threading.Lock()
    base = os.environ.get("MODELPORT_BENCH_TMP")
    with tempfile.TemporaryDirectory(prefix="bench-breadth-", dir=base) as tmp:
        from concurrent.futures import ThreadPoolExecutor

        def one(name: str) -> None:
            if args.budget and time.time() - t0 > args.budget:
                return
            r = measure(name, Path(tmp), args, cap, weight_bytes)
            r["measured_unix"] = time.time()
            with lock, _file_lock():  # each finished model is written at once: a run stopped later keeps it
                on_disk = _previous()  # another pass (the other route) may have written rows meanwhile
                results["models"] = {**on_disk["models"], **{k: v for k, v in results["models"].items()
                                                              if k not in on_disk["models"]}}
                results["names"] = sorted(set(results["names"]) | set(on_disk.get("names", [])), key=_row_order)
                old = results["models"].get(name, {})
                results["models"][name] = {**({} if "build_error" in old else old), **r}  # a route not run keeps its row
                results["load_avg_after"] = common.load_average()
                _write(results)

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each model's processes run one after another
            list(pool.map(one, names))
    print(render(results))


@contextlib.contextmanager
def _file_lock():
    """Serialize writers of results/breadth.json (two passes may run at once, one per route)."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / "modelport-bench-breadth.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _previous() -> dict:
    """The committed matrix (each run replaces the rows of the models it measured)."""
    path = common.RESULTS_DIR / "breadth.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"models": {}}
    data.pop("system", None)
    return data


def _write(results: dict) -> None:
    results = {**results, "system": common.system_info()}
    order = {n: i for i, n in enumerate(sorted(results["models"], key=_row_order))}
    results["models"] = dict(sorted(results["models"].items(), key=lambda kv: order[kv[0]]))
    common.write_section("breadth", render(results), results)


def _row_order(name: str) -> tuple[int, str]:
    return (1 if name in EXTRA else 0, name)


def measure(name: str, tmp: Path, args, cap: int, weight_bytes) -> dict:
    """Build ``name`` (or reuse its file in ``--keep-models``), convert it with modelport and/or plain tf2onnx,
    each in its own process."""
    folder = Path(args.keep_models) if args.keep_models else tmp
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.keras"
    result_file = tmp / f"{name}.result.json"
    if not path.is_file():
        part = path.with_name(f"{path.stem}.{os.getpid()}.part.keras")
        b = _child(["--child", "build", name, str(part)], args.timeout, cap, False, result_file)
        if not part.is_file():
            print(f"[{name}] build failed: {b.get('error')}", flush=True)
            return {"build_error": b.get("error", "build failed")}
        part.rename(path)
    w = weight_bytes(path, "keras")
    r: dict = {"weight_bytes": w, "label": EXTRA.get(name, f"{MIN_SIZE.get(name, DEFAULT_SIZE)} px")}
    heavy = w >= HEAVY_BYTES
    routes = [x for x in args.routes.split(",") if x]
    if "modelport" in routes:
        r["modelport"] = _child(["--child", "modelport", str(path), str(result_file)], args.timeout, cap, heavy,
                                result_file)
        print(f"[{name}] {w / 1e6:.0f} MB modelport: {_short(r['modelport'])}", flush=True)
    if "plain" in routes and not args.skip_plain:
        r["plain"] = _child(["--child", "plain", str(path), str(result_file)], args.timeout, cap,
                            w >= PLAIN_HEAVY_BYTES, result_file)
        print(f"[{name}] plain tf2onnx: {_short(r['plain'])}", flush=True)
    if not args.keep_models:
        path.unlink(missing_ok=True)
    return r


def application_names_subprocess() -> list[str]:
    """``application_names`` without importing Keras into the orchestrating process."""
    code = "from benchmarks.bench_breadth import application_names as f; print(','.join(f()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=common.REPO_ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return out.stdout.strip().splitlines()[-1].split(",")


def _short(r: dict) -> str:
    diff = r.get("max_abs_diff")
    d = f"{diff:.1e}" if isinstance(diff, float) else "-"
    return f"{r['status']} diff {d} convert {r.get('convert_s', 0):.1f}s peak {r.get('peak_rss', 0) / GB:.2f} GB " + \
        (r.get("error", "")[:200] if r["status"] != "ok" else "")


# ---- report ---------------------------------------------------------------------------------------

def _cell(r: dict | None, w: int) -> list[str]:
    if r is None:
        return ["not run", "-", "-", "-"]
    diff = r.get("max_abs_diff")
    status = r["status"] if r["status"] == "ok" else f"**{r['status']}**"
    if "source noise" in r.get("judged_by", []):
        status = "ok (source noise)"
    peak = r.get("peak_rss") or 0
    scale = r.get("output_scale")
    shown = f"{diff:.1e}" if isinstance(diff, float) else "-"
    if isinstance(diff, float) and scale:
        shown += f" ({diff / scale:.0e} of {scale:.2g})"
    return [status, shown,
            f"{r['convert_s']:.1f}" if r.get("convert_s") is not None else "-",
            (f"{peak / GB:.2f} GB / {peak / w:.1f}x" if w >= RATIO_FROM else f"{peak / GB:.2f} GB") if peak else "-"]


def render(results: dict) -> str:
    rows, failures = [], []
    counts = {"modelport": 0, "plain": 0, "total": 0}
    for name, r in results["models"].items():
        if "build_error" in r:
            rows.append([name, "-", "-", "build failed: " + r["build_error"][:100]] + ["-"] * 7)
            continue
        w = r["weight_bytes"]
        for who in ("modelport", "plain"):
            if r.get(who):
                counts[who] += r[who]["status"] == "ok"
                counts[f"{who}_run"] = counts.get(f"{who}_run", 0) + 1
        rows.append([name, r["label"] if name in EXTRA else r["label"], f"{w / 1e6:.1f} MB",
                     *_cell(r.get("modelport"), w), *_cell(r.get("plain"), w)])
        for who in ("modelport", "plain"):
            x = r.get(who) or {}
            if x.get("source_noise"):
                failures.append(f"- {name}, modelport: passed against the source's own noise: {x['source_noise']}")
            if x.get("status") not in (None, "ok"):
                failures.append(f"- {name}, {'modelport' if who == 'modelport' else 'plain tf2onnx'}: "
                                f"{x['status']}: {x.get('error', '')[:400]}")
    pending = [n for n in results.get("names", []) if n not in results["models"]]
    for name in pending:
        rows.append([name, EXTRA.get(name, f"{MIN_SIZE.get(name, DEFAULT_SIZE)} px"), "-", "not measured yet"]
                    + ["-"] * 7)
    table = common.markdown_table(
        ["model", "input / structure", "weights", "modelport", "max abs diff (of output scale)", "convert s",
         "peak RSS / weights", "plain tf2onnx", "max abs diff (of output scale)", "convert s", "peak RSS / weights"], rows)
    cap = results.get("cap_bytes", 0)
    return "\n".join([
        "## Converter breadth: every keras.applications architecture, recurrent and attention models",
        "",
        "Keras -> ONNX at defaults (opset 17), random weights (`weights=None`, 10 classes, the smallest input "
        "each architecture accepts from 32 px up, `classifier_activation=None`: the outputs compared are logits, "
        "not a random-weight softmax that is near-uniform or one-hot; the diff is shown with the largest |output| "
        "it is relative to). **modelport**: the converter's job function "
        "(`convert_model`, what `modelport convert model.keras --to onnx --offline` runs), parity on 8 generated "
        "samples included in its status (`ok (source noise)`: outside rtol/atol against the float32 source, which "
        "does not reproduce itself: its float32 run is off its own float64 run by as much; the converted output is "
        "within 4x that of the float64 run, `modelport.conversion.source_noise`). **plain tf2onnx**: `keras.saving.load_model` + "
        "`tf2onnx.convert.from_function(opset=17)`, then onnxruntime vs Keras on 8 inputs (status `mismatch` "
        "past rtol 1e-3 / atol 1e-4). Each in its own process; convert s is the conversion alone (modelport's "
        "`converting` stage, tf2onnx's `from_function`); peak RSS is the process's high-water mark (TensorFlow "
        f"import and the parity run included) over the weight bytes (in GB alone below {RATIO_FROM >> 20} MiB of "
        f"weights, where it is TensorFlow's own footprint). Memory cap {cap / GB:.1f} GB per process, "
        f"bound {results.get('timeout_s', 0):.0f}s; models from {HEAVY_BYTES >> 20} MiB of weights under "
        f"`flock {HEAVY_LOCK}`.",
        "",
        f"Converted with parity, of the models each ran on: **modelport {counts['modelport']}/"
        f"{counts.get('modelport_run', 0)}**, plain tf2onnx {counts['plain']}/{counts.get('plain_run', 0)}"
        + (f" ({len(pending)} architectures not measured yet)." if pending else "."),
        "",
        f"Command: `{results.get('command', common.command_line())}`",
        "",
        *([results["note"], ""] if results.get("note") else []),
        common.system_info_markdown(results.get("system")),
        f"- Load average before/after the matrix: {results.get('load_avg_before')} / {results.get('load_avg_after')}",
        "",
        table,
        "",
        "Failures (first line of each error) and outputs judged against the source's own float32 noise:"
        if failures else "No failures.",
        "",
        *failures,
        "",
    ])


if __name__ == "__main__":
    main()
