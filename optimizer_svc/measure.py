"""Measure a model candidate: size, gzip size, latency p50/p90 and quality against labels/baseline.

ONNX candidates run on onnxruntime with the requested execution provider and thread count
(``modelport.providers``); TFLite candidates on the TFLite interpreter. Every candidate of a job
is measured in the same process as the baseline, on the same inputs, so ratios are fair.
This module never imports grpc.
"""

from __future__ import annotations

import gzip
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelport.providers import DISABLED_OPTIMIZERS

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass
class Measurement:
    """What ``measure`` found for one model file."""

    size_bytes: int
    gzip_size_bytes: int
    latency_p50_ms: float
    latency_p90_ms: float
    outputs: list[np.ndarray]
    accuracy: float = math.nan
    agreement: float = math.nan
    max_abs_diff: float = math.nan
    details: dict[str, str] = field(default_factory=dict)


GZIP_EXACT_MAX = 256 << 20
"""Models up to this many bytes are gzipped whole; larger ones from evenly spaced samples."""
GZIP_SAMPLES = 64
_BLOCK = 1 << 20


def model_files(path: Path) -> list[Path]:
    """The files a model is made of: an ONNX file and its external data files, or the file itself."""
    path = Path(path)
    if path.suffix == ".onnx":
        from modelport.onnx_files import model_files as onnx_model_files

        return [p for _, p in onnx_model_files(path)]
    return [path]


def model_size(path: Path) -> int:
    """Bytes of a model with its external data files."""
    return sum(p.stat().st_size for p in model_files(path))


def gzip_size(path: Path) -> tuple[int, str]:
    """Size of the model (with its external data) compressed with gzip level 9, what a pruned/clustered
    model ships as, and how it was found: streamed exactly up to 256 MiB, estimated above from 64 blocks
    of 1 MiB spread evenly over the bytes (compressed, their ratio scaled to the whole)."""
    import zlib

    files = model_files(path)
    total = sum(p.stat().st_size for p in files)
    if total <= GZIP_EXACT_MAX:
        z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container, as gzip.compress writes
        n = 0
        for p in files:
            with open(p, "rb") as f:
                while block := f.read(_BLOCK):
                    n += len(z.compress(block))
        return n + len(z.flush()), "exact"
    step = total // GZIP_SAMPLES
    raw = packed = 0
    for i in range(GZIP_SAMPLES):
        offset = i * step
        for p in files:  # the file holding this offset
            size = p.stat().st_size
            if offset < size:
                with open(p, "rb") as f:
                    f.seek(offset)
                    block = f.read(_BLOCK)
                raw += len(block)
                packed += len(gzip.compress(block, compresslevel=9)) - 18  # minus the gzip header/trailer
                break
            offset -= size
    return int(total * packed / max(raw, 1)) + 18, f"estimated from {GZIP_SAMPLES} blocks of 1 MiB"


def onnx_runner(path: Path, providers: list, threads: int = 0) -> Runner:
    """A callable feeding a dict of arrays to an onnxruntime session; returns its outputs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads > 0:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=so, providers=providers,
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))  # modelport.providers says why
    names = [i.name for i in sess.get_inputs()]

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return sess.run(None, {n: feed[n] for n in names})

    return run


def tflite_runner(path: Path, input_names: list[str], threads: int = 0) -> Runner:
    """A callable running a TFLite model with the TFLite interpreter (batch resized on demand).

    ``input_names`` are the baseline's input names in order; TFLite inputs are matched to them
    by position (the TFLite converter renames them).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interp = Interpreter(model_path=str(path), num_threads=threads or None)
    details = sorted(interp.get_input_details(), key=lambda d: d["index"])
    if len(details) == len(input_names) > 1:
        by_name = {d["name"].split(":")[0].removeprefix("serving_default_"): d for d in details}
        if all(n in by_name for n in input_names):
            details = [by_name[n] for n in input_names]
    state = {"batch": None}

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        arrays = [feed[n] for n in input_names]
        batch = arrays[0].shape[0]
        if state["batch"] != batch:
            for d, a in zip(details, arrays, strict=False):
                interp.resize_tensor_input(d["index"], list(a.shape))
            interp.allocate_tensors()
            state["batch"] = batch
        for d, a in zip(details, arrays, strict=False):
            interp.set_tensor(d["index"], a.astype(d["dtype"], copy=False))
        interp.invoke()
        outs = sorted(interp.get_output_details(), key=lambda d: d["index"])
        return [interp.get_tensor(o["index"]).copy() for o in outs]

    return run


MIN_TIMED_SECONDS = 0.25
PAIRED_ROUNDS = 6  # interleaved candidate/baseline timing rounds (a sign test over them)
MAX_REPEATS = 5000


def latency(run: Runner, feed: dict[str, np.ndarray], warmup: int, repeats: int) -> tuple[float, float]:
    """p50 and p90 latency in milliseconds of ``run(feed)`` after ``warmup`` untimed runs.

    At least ``repeats`` timed runs, and more (up to 5000) until 0.25 s were timed, so the
    percentiles of microsecond-scale models are not noise.
    """
    for _ in range(warmup):
        run(feed)
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats or (spent < MIN_TIMED_SECONDS and len(times) < MAX_REPEATS):
        t0 = time.perf_counter()
        run(feed)
        dt = time.perf_counter() - t0
        spent += dt
        times.append(dt * 1000.0)
    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def paired_latency(run: Runner, baseline: Runner, feed: dict[str, np.ndarray], warmup: int, repeats: int,
                   rounds: int = 6) -> tuple[float, float, float, int]:
    """Candidate p50, p90, the baseline's p50, and in how many rounds the candidate was faster.

    The two models are timed in alternating blocks whose order flips every round (ABBA), so
    drift (other load on the machine, clock changes) and order effects (who runs first on warm
    caches) spread over both. Counting the rounds the candidate won is a sign test: a model that
    is not really faster wins all ``rounds`` rounds only by chance (1 in 2**rounds).
    """
    for _ in range(warmup):
        run(feed)
        baseline(feed)
    cand: list[float] = []
    base: list[float] = []
    per_block = max(1, repeats // rounds)
    budget = MIN_TIMED_SECONDS / rounds
    wins = 0
    for i in range(rounds):
        blocks: dict[int, list[float]] = {}
        order = ((run, cand), (baseline, base)) if i % 2 == 0 else ((baseline, base), (run, cand))
        for fn, out in order:
            spent, block = 0.0, []
            while len(block) < per_block or (spent < budget and len(block) < MAX_REPEATS // rounds):
                t0 = time.perf_counter()
                fn(feed)
                dt = time.perf_counter() - t0
                spent += dt
                block.append(dt * 1000.0)
            out.extend(block)
            blocks[id(out)] = block
        wins += int(np.median(blocks[id(cand)]) < np.median(blocks[id(base)]))
    c50, c90, b50 = (float(np.percentile(cand, 50)), float(np.percentile(cand, 90)), float(np.percentile(base, 50)))
    return c50, c90, b50, wins


def quick_latency(run: Runner, baseline: Runner, feed: dict[str, np.ndarray], runs: int = 3) -> tuple[float, float]:
    """Median latency (ms) of the candidate and of the baseline over ``runs`` interleaved runs after one
    warm-up each: a cheap probe that tells a model several times slower than the baseline apart from one
    worth the full ``measure`` (it is no substitute for it)."""
    run(feed)
    baseline(feed)
    cand: list[float] = []
    base: list[float] = []
    for _ in range(runs):
        for fn, out in ((run, cand), (baseline, base)):
            t0 = time.perf_counter()
            fn(feed)
            out.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(cand)), float(np.median(base))


def predict(run: Runner, inputs: dict[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
    """All outputs over the whole dataset, in batches."""
    n = next(iter(inputs.values())).shape[0]
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, batch_size):
        chunks.append(run({k: v[start:start + batch_size] for k, v in inputs.items()}))
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def _classes(out: np.ndarray) -> np.ndarray | None:
    if out.ndim >= 2 and out.shape[-1] > 1:
        return out.reshape(out.shape[0], -1, out.shape[-1]).argmax(-1).reshape(out.shape[0], -1)
    return None


def accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy of the first output against integer (or one-hot) labels; NaN if not a classifier."""
    pred = _classes(outputs[0])
    if pred is None:
        return math.nan
    y = labels
    if y.ndim == outputs[0].ndim and y.shape[-1] == outputs[0].shape[-1] and y.shape[-1] > 1:
        y = _classes(y)
    y = np.asarray(y).reshape(pred.shape[0], -1)
    if y.shape != pred.shape:
        return math.nan
    return float((pred == y).all(axis=1).mean())


_CHUNK_ELEMENTS = 1 << 22
"""Elements compared at once (32 MiB in float64): a language model's logits over the eval set are hundreds of MB
in float32, and whole-array float64 copies of them and their products took 1.9 GB on top of two sessions of a
0.73 GB transformer."""


def _rows(outputs: list[np.ndarray], reference: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """The first output and the reference as (samples, features) views; None when their shapes differ."""
    x = outputs[0].reshape(outputs[0].shape[0], -1)
    r = reference[0].reshape(reference[0].shape[0], -1)
    return (x, r) if x.shape == r.shape else None


def _chunks(x: np.ndarray) -> list[slice]:
    """Row slices of ``x`` (samples, features) of at most ``_CHUNK_ELEMENTS`` elements (one row at least)."""
    step = max(1, _CHUNK_ELEMENTS // max(x.shape[1], 1))
    return [slice(i, i + step) for i in range(0, x.shape[0], step)]


FEATURE_COSINE = 0.99
"""A feature vector (one position of a backbone's hidden states, a pooled embedding) agrees with the baseline's
when their cosine similarity is at least this. Weight quantization keeps it near 1 (int8-dynamic on keras_hub's
tiny BERT and GPT-2 backbones: 0.9998 at worst); a candidate that loses the features' direction falls below it."""


def agreement(outputs: list[np.ndarray], reference: list[np.ndarray], features: list[bool] | None = None) -> float:
    """Fraction of samples whose top-1 class equals the reference's (closeness for non-classifiers).

    ``features`` marks outputs that are features, not class scores (a keras_hub backbone's ``sequence_output``
    and ``pooled_output``): when any is marked, a sample agrees when every feature vector of every marked
    output keeps ``FEATURE_COSINE`` with the reference's (``feature_agreement``); the argmax of a hidden state
    is no class, and int8 noise flips it for a tenth of the samples while the features stay 0.9998 alike."""
    if features and any(features):
        pairs = [(o, r) for o, r, f in zip(outputs, reference, features, strict=False) if f]
        return feature_agreement([o for o, _ in pairs], [r for _, r in pairs])
    a, b = _classes(outputs[0]), _classes(reference[0])
    if a is not None and b is not None and a.shape == b.shape:
        return float((a == b).all(axis=1).mean())
    rows = _rows(outputs, reference)
    if rows is None:
        return math.nan
    x, r = rows
    close = np.concatenate([
        (np.abs(x[c].astype(np.float64) - r[c]) <= 1e-2 * (np.abs(r[c].astype(np.float64)) + 1e-3)).all(axis=1)
        for c in _chunks(x)]) if x.shape[0] else np.zeros(0, bool)
    return float(close.mean()) if close.size else math.nan


def feature_agreement(outputs: list[np.ndarray], reference: list[np.ndarray],
                      threshold: float = FEATURE_COSINE) -> float:
    """Fraction of samples whose every feature vector (the last axis: one per position of a sequence output,
    one for a pooled output) has a cosine similarity of at least ``threshold`` with the reference's, in
    every output given. Two zero vectors agree; NaN when shapes differ."""
    ok: np.ndarray | None = None
    for o, r in zip(outputs, reference, strict=False):
        if o.shape != r.shape or o.ndim < 2 or not o.shape[0]:
            return math.nan
        keep = np.ones(o.shape[0], bool)
        for c in _chunks(o.reshape(o.shape[0], -1)):  # float64 copies of a few rows at a time
            rows = len(o[c])
            x = o[c].astype(np.float64).reshape(rows, -1, o.shape[-1])
            y = r[c].astype(np.float64).reshape(rows, -1, o.shape[-1])
            nx, ny = np.linalg.norm(x, axis=-1), np.linalg.norm(y, axis=-1)
            cos = np.sum(x * y, axis=-1) / np.maximum(nx * ny, 1e-30)
            cos[(nx == 0) & (ny == 0)] = 1.0
            keep[c] = (cos >= threshold).all(axis=1)
        ok = keep if ok is None else ok & keep
    return math.nan if ok is None else float(ok.mean())


def max_abs_diff(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Largest absolute difference over all outputs (NaN when shapes differ)."""
    worst = 0.0
    for o, r in zip(outputs, reference, strict=False):
        if o.shape != r.shape:
            return math.nan
        if not o.size:
            continue
        o2, r2 = (o.reshape(o.shape[0], -1), r.reshape(r.shape[0], -1)) if o.ndim else (o.reshape(1, 1), r.reshape(1, 1))
        for c in _chunks(o2):
            worst = max(worst, float(np.max(np.abs(o2[c].astype(np.float64) - r2[c]))))
    return worst


def _cosine_rows(x: np.ndarray, r: np.ndarray, center: np.ndarray | None = None) -> float:
    """Mean per-row cosine of ``x`` and ``r`` (both minus ``center`` when given), in float64, chunk by chunk."""
    sims = []
    for c in _chunks(x):
        xc, rc = x[c].astype(np.float64), r[c].astype(np.float64)
        if center is not None:
            xc -= center
            rc -= center
        den = np.linalg.norm(xc, axis=1) * np.linalg.norm(rc, axis=1)
        den[den == 0] = 1e-12
        sims.append(np.einsum("ij,ij->i", xc, rc) / den)
    return float(np.mean(np.concatenate(sims)))


def cosine(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Mean per-sample cosine similarity of the first output with the reference's."""
    rows = _rows(outputs, reference)
    return math.nan if rows is None else _cosine_rows(*rows)


def centered_cosine(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """``cosine`` after subtracting the reference's mean over samples from both.

    The plain cosine is dominated by what every sample's output shares: a network whose answer barely
    depends on its input (random weights, a saturated head) scores near 1 whatever the candidate does
    to the input-dependent part. This one measures how well that part is kept (NaN with one sample).
    """
    rows = _rows(outputs, reference)
    if rows is None or rows[0].shape[0] < 2:
        return math.nan
    x, r = rows
    return _cosine_rows(x, r, center=r.mean(axis=0, dtype=np.float64, keepdims=True))


def measure(path: Path, run: Runner, inputs: dict[str, np.ndarray], labels: np.ndarray | None,
            reference: list[np.ndarray] | None, *, warmup: int, repeats: int, batch_size: int,
            baseline_run: Runner | None = None, features: list[bool] | None = None) -> Measurement:
    """Size, gzip size (of the model with its external data), latency on the first ``batch_size`` rows,
    and quality over ``inputs`` (``features`` marks outputs judged by ``feature_agreement``).

    With ``baseline_run`` the latency is timed interleaved with the baseline and
    ``details`` get the baseline's p50 from those interleaved runs and the candidate/baseline ratio.
    """
    path = Path(path)
    feed = {k: v[:batch_size] for k, v in inputs.items()}
    base50 = None
    if baseline_run is not None:
        p50, p90, base50, wins = paired_latency(run, baseline_run, feed, warmup, repeats, PAIRED_ROUNDS)
    else:
        p50, p90 = latency(run, feed, warmup, repeats)
    outs = predict(run, inputs)
    gz, how = gzip_size(path)
    m = Measurement(size_bytes=model_size(path), gzip_size_bytes=gz,
                    latency_p50_ms=p50, latency_p90_ms=p90, outputs=outs)
    if how != "exact":
        m.details["gzip_size"] = how
    if base50:
        m.details["baseline_latency_p50_ms_paired"] = f"{base50:.6f}"
        m.details["latency_ratio_paired"] = f"{p50 / base50:.4f}"
        m.details["latency_rounds_faster"] = f"{wins}/{PAIRED_ROUNDS}"
    if labels is not None:
        m.accuracy = accuracy(outs, labels)
    if reference is not None:
        m.agreement = agreement(outs, reference, features)
        if features and any(features):
            m.details["agreement_metric"] = f"feature cosine >= {FEATURE_COSINE:g}"
        m.max_abs_diff = max_abs_diff(outs, reference)
        m.details["cosine"] = f"{cosine(outs, reference):.6f}"
        m.details["cosine_centered"] = f"{centered_cosine(outs, reference):.6f}"
    return m
