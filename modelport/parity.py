"""Output parity between a converted model and its source (numpy only; builds a ``ParityReport`` record).

Every conversion result carries one: per output the max absolute and relative difference,
whether ``np.allclose`` holds at the requested tolerances, whether the candidate introduced
NaN/Inf, the smallest per-sample cosine, and top-1 / top-k agreement for classifier-like outputs
(2-D, last dim > 1).

Quantized outputs are judged differently. Two faithful runs of an int8 model (TFLite's integer kernels,
onnxruntime's) may round an intermediate value differently, and the difference carries to the output as
a few quantization steps of the output's scale: rtol/atol made for float models read that as failure. An
output with quantization parameters (``Quantization``: an int8/uint8 output, or a float output
dequantized from one) passes when its largest difference is within ``quant_max_steps`` steps, its mean
difference within ``quant_mean_steps`` (a broken scale or zero point shifts every element), every sample's
cosine is at least ``min_cosine`` and, for classifiers, the source's top-1 class is among the target's
top-k on at least ``min_topk_agreement`` of the samples. Integer outputs are compared as the real values
they stand for, ``(q - zero_point) * scale``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from modelport.errors import FailedPrecondition, InvalidArgument
from modelport.job_records import OutputParity, ParityReport

JUDGED_BY_SOURCE_NOISE = "source noise"
"""``OutputParity.judged_by`` of an output passed against the source's float64 run
(``modelport.conversion.source_noise``): the float32 source could not reproduce itself within the tolerances."""

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4
# Quantized outputs (module docstring). 8 steps leaves room for rounding that compounds through a deep
# int8 network (a published int8 classifier differed by 6 steps of 1/256 between TFLite and onnxruntime,
# with the same top-1 everywhere); the mean and cosine bounds catch a broken scale, zero point or weight,
# which moves many elements, not a few.
DEFAULT_QUANT_MAX_STEPS = 8.0
DEFAULT_QUANT_MEAN_STEPS = 1.0
DEFAULT_MIN_COSINE = 0.99
DEFAULT_MIN_TOPK_AGREEMENT = 0.8
TOP_K = 5


@dataclass(frozen=True)
class Quantization:
    """An output's quantization: real value = (q - zero_point) * scale; ``source`` says where it was found."""

    scale: float
    zero_point: int = 0
    source: str = ""


@dataclass(frozen=True)
class QuantTolerances:
    """How quantized outputs are judged (0 in a request = the default)."""

    max_steps: float = DEFAULT_QUANT_MAX_STEPS
    mean_steps: float = DEFAULT_QUANT_MEAN_STEPS
    min_cosine: float = DEFAULT_MIN_COSINE
    min_topk_agreement: float = DEFAULT_MIN_TOPK_AGREEMENT

    @classmethod
    def from_options(cls, options) -> QuantTolerances:
        """From ``ParityOptions`` (a record or the message; unset fields take the defaults); InvalidArgument
        when out of range."""
        t = cls(options.quant_max_steps or DEFAULT_QUANT_MAX_STEPS, options.quant_mean_steps or DEFAULT_QUANT_MEAN_STEPS,
                options.min_cosine or DEFAULT_MIN_COSINE, options.min_topk_agreement or DEFAULT_MIN_TOPK_AGREEMENT)
        if t.max_steps < 0 or t.mean_steps < 0 or not -1 <= t.min_cosine <= 1 or not 0 <= t.min_topk_agreement <= 1:
            raise InvalidArgument(f"quantized parity tolerances out of range ({t}): steps must be >= 0, min_cosine "
                                  "in [-1, 1], min_topk_agreement in [0, 1]")
        return t


def _align(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """Pairs (reference name, candidate name): by name, else by position when counts match."""
    if set(reference) == set(candidate):
        return [(k, k) for k in reference]
    if len(reference) == len(candidate):
        return list(zip(reference, candidate, strict=False))
    raise InvalidArgument(
        f"the converted model has outputs {sorted(candidate)} but the source has {sorted(reference)}; "
        "output names and counts must match for a parity check"
    )


def _dequantize(a: np.ndarray, q: Quantization) -> np.ndarray:
    return (a.astype(np.float64) - q.zero_point) * q.scale if a.dtype.kind in "iu" else a.astype(np.float64)


def _cosine(r: np.ndarray, c: np.ndarray) -> float:
    """Smallest per-sample cosine (first axis = samples); 1 where both are zero, 0 where one is."""
    if r.size == 0:
        return 1.0
    r2 = r.reshape(r.shape[0], -1) if r.ndim > 1 else r.reshape(1, -1)
    c2 = c.reshape(r2.shape)
    fin = np.isfinite(r2) & np.isfinite(c2)
    r2, c2 = np.where(fin, r2, 0.0), np.where(fin, c2, 0.0)
    nr, nc = np.linalg.norm(r2, axis=1), np.linalg.norm(c2, axis=1)
    dot = np.sum(r2 * c2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((nr == 0) & (nc == 0), 1.0, np.where((nr == 0) | (nc == 0), 0.0, dot / (nr * nc)))
    return float(np.min(cos))


def _topk_agreement(r: np.ndarray, c: np.ndarray, k: int) -> float:
    """Fraction of rows whose reference argmax scores at least the candidate's k-th largest value (ties count)."""
    top = np.argmax(r, axis=-1)
    kth = np.sort(c, axis=-1)[:, -k]
    return float(np.mean(c[np.arange(len(c)), top] >= kth))


# Outputs larger than this many elements are compared in slices of samples (first axis): the comparison
# holds several float64 temporaries of the output's size, and a language model's logits for 8 samples of
# 128 tokens are 33M elements (2 GB of temporaries at once otherwise).
CHUNK_ELEMENTS = 1 << 21


def compare_output(name: str, ref: np.ndarray, cand: np.ndarray, rtol: float, atol: float,
                   quant: Quantization | None = None, tol: QuantTolerances | None = None) -> OutputParity:
    """Parity of one output (``cand`` is reshaped to ``ref``'s shape when only the shape differs).

    With ``quant`` the output is judged in quantization steps (``tol``, module docstring), else by allclose.
    """
    ref = np.asarray(ref)
    cand = np.asarray(cand)
    tol = tol or QuantTolerances()
    if ref.ndim >= 2 and ref.shape == cand.shape and ref.size > CHUNK_ELEMENTS and ref.shape[0] > 1 \
            and ref.dtype.kind in "fiub" and cand.dtype.kind in "fiub":
        return _compare_in_slices(name, ref, cand, rtol, atol, quant, tol)
    return _compare_whole(name, ref, cand, rtol, atol, quant, tol)


def _compare_in_slices(name: str, ref: np.ndarray, cand: np.ndarray, rtol: float, atol: float,
                       quant: Quantization | None, tol: QuantTolerances) -> OutputParity:
    """``_compare_whole`` over slices of samples, merged: every figure is a max, min, any, all or an
    element-weighted mean over samples, so the result is the whole comparison's, with bounded temporaries."""
    rows = max(1, CHUNK_ELEMENTS // max(1, ref[0].size))
    starts = range(0, ref.shape[0], rows)
    parts = [_compare_whole(name, ref[i:i + rows], cand[i:i + rows], rtol, atol, quant, tol) for i in starts]
    weights = [min(rows, ref.shape[0] - i) for i in starts]
    total = sum(weights)
    out = dataclasses.replace(parts[0])
    out.max_abs_diff = max(p.max_abs_diff for p in parts)
    out.max_rel_diff = max(p.max_rel_diff for p in parts)
    out.nan_or_inf = any(p.nan_or_inf for p in parts)
    out.allclose = all(p.allclose for p in parts)
    out.cosine = min(p.cosine for p in parts)
    classifier = ref.ndim == 2 and ref.shape[-1] > 1
    if classifier:
        out.top1_agreement = sum(p.top1_agreement * w for p, w in zip(parts, weights, strict=True)) / total
        out.topk_agreement = sum(p.topk_agreement * w for p, w in zip(parts, weights, strict=True)) / total
    if out.judged_by != "quantized":
        out.passed = out.allclose
        return out
    out.max_diff_steps = max(p.max_diff_steps for p in parts)
    out.mean_diff_steps = sum(p.mean_diff_steps * w for p, w in zip(parts, weights, strict=True)) / total
    out.passed = (not out.nan_or_inf and out.max_diff_steps <= tol.max_steps and out.mean_diff_steps <= tol.mean_steps
                  and out.cosine >= tol.min_cosine and (not classifier or out.topk_agreement >= tol.min_topk_agreement))
    return out


def _compare_whole(name: str, ref: np.ndarray, cand: np.ndarray, rtol: float, atol: float,
                   quant: Quantization | None, tol: QuantTolerances) -> OutputParity:
    out = OutputParity(name=name, top1_agreement=-1.0, topk_agreement=-1.0, cosine=1.0, judged_by="allclose")
    if ref.dtype.kind in "OSU" or cand.dtype.kind in "OSU":
        same = ref.shape == cand.shape and bool(np.all(ref == cand))
        out.allclose = out.passed = same
        out.max_abs_diff = 0.0 if same else float("inf")
        out.max_rel_diff = out.max_abs_diff
        return out
    if ref.shape != cand.shape:
        if ref.size != cand.size:
            out.allclose = out.passed = False
            out.max_abs_diff = out.max_rel_diff = float("inf")
            return out
        cand = cand.reshape(ref.shape)
    if quant is not None and quant.scale > 0:
        r, c = _dequantize(ref, quant), _dequantize(cand, quant)
    else:
        quant = None
        r, c = ref.astype(np.float64), cand.astype(np.float64)
    r_fin = np.isfinite(r)
    c_fin = np.isfinite(c)
    out.nan_or_inf = bool(np.any(~c_fin & r_fin))
    same = (r == c) | (np.isnan(r) & np.isnan(c))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(same, 0.0, np.abs(r - c))
    diff = np.where(np.isnan(diff), np.inf, diff)
    denom = np.maximum(np.abs(np.where(r_fin, r, 0.0)), max(atol, 1e-12))
    rel = diff / denom
    out.max_abs_diff = float(diff.max()) if diff.size else 0.0
    out.max_rel_diff = float(rel.max()) if rel.size else 0.0
    out.allclose = bool(np.allclose(c, r, rtol=rtol, atol=atol, equal_nan=True)) and not out.nan_or_inf
    out.cosine = _cosine(r, c)
    classifier = r.ndim == 2 and r.shape[-1] > 1 and r.shape[0] > 0
    if classifier:
        out.top1_agreement = float(np.mean(np.argmax(r, axis=-1) == np.argmax(c, axis=-1)))
        out.top_k = min(TOP_K, r.shape[-1] - 1)
        out.topk_agreement = _topk_agreement(r, c, out.top_k)
    if quant is None:
        out.passed = out.allclose
        return out
    out.judged_by = "quantized"
    out.quant_scale, out.quant_zero_point, out.quant_source = quant.scale, quant.zero_point, quant.source
    steps = diff / quant.scale
    out.max_diff_steps = float(steps.max()) if steps.size else 0.0
    out.mean_diff_steps = float(steps.mean()) if steps.size else 0.0
    out.passed = (not out.nan_or_inf and out.max_diff_steps <= tol.max_steps and out.mean_diff_steps <= tol.mean_steps
                  and out.cosine >= tol.min_cosine and (not classifier or out.topk_agreement >= tol.min_topk_agreement))
    return out


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, *,
                    inputs_source: str = "", samples: int | None = None,
                    quantization: dict[str, Quantization] | None = None,
                    quant_tolerances: QuantTolerances | None = None) -> ParityReport:
    """Compare the candidate's outputs to the reference's; ``passed`` when every output passes.

    Outputs pair by name, or by position when the names differ but the counts match. Outputs named in
    ``quantization`` (by the reference's name) are judged in quantization steps, the others by allclose.
    """
    tol = quant_tolerances or QuantTolerances()
    quantization = quantization or {}
    report = ParityReport(rtol=rtol, atol=atol, inputs_source=inputs_source)
    pairs = _align(reference, candidate)
    for rname, cname in pairs:
        q = quantization.get(rname) or quantization.get(cname)
        report.outputs.append(compare_output(rname, reference[rname], candidate[cname], rtol, atol, q, tol))
    if any(o.judged_by == "quantized" for o in report.outputs):
        report.quant_max_steps, report.quant_mean_steps = tol.max_steps, tol.mean_steps
        report.min_cosine, report.min_topk_agreement = tol.min_cosine, tol.min_topk_agreement
    if samples is None:
        first = next(iter(reference.values()), None)
        samples = int(np.asarray(first).shape[0]) if first is not None and np.asarray(first).ndim else 1
    report.samples = samples
    report.passed = bool(report.outputs) and all(o.passed for o in report.outputs)
    return report


def summarize(report: ParityReport) -> str:
    """One line naming each output's differences and the tolerances that judged it."""
    parts = []
    for o in report.outputs:
        if o.judged_by == "quantized":
            s = (f"{o.name}: quantized (scale {o.quant_scale:.4g}, zero point {o.quant_zero_point}), max diff "
                 f"{o.max_diff_steps:.3g} steps (max abs {o.max_abs_diff:.3g}), mean {o.mean_diff_steps:.3g} steps, "
                 f"cosine {o.cosine:.4f}")
        else:
            s = f"{o.name}: max abs diff {o.max_abs_diff:.3g}, max rel diff {o.max_rel_diff:.3g}"
        if o.judged_by == JUDGED_BY_SOURCE_NOISE:
            s += ", within the source's own float32 noise (passed against the source run in float64)"
        if o.nan_or_inf:
            s += ", NaN/Inf introduced"
        if o.top1_agreement >= 0:
            s += f", top-1 agreement {o.top1_agreement:.1%}"
        if o.judged_by == "quantized" and o.topk_agreement >= 0:
            s += f", top-{o.top_k} agreement {o.topk_agreement:.1%}"
        parts.append(s)
    tols = f"rtol={report.rtol:g}, atol={report.atol:g}"
    if any(o.judged_by == "quantized" for o in report.outputs):
        tols += (f"; quantized: <= {report.quant_max_steps:g} steps max, <= {report.quant_mean_steps:g} mean, cosine >= "
                 f"{report.min_cosine:g}, top-k agreement >= {report.min_topk_agreement:g}")
    return "; ".join(parts) + f" ({tols}, {report.samples} samples)"


def enforce(report: ParityReport, allow_mismatch: bool, note: str = "") -> None:
    """Raise FailedPrecondition carrying the report (its ``payload``) when parity failed and mismatch is not
    allowed; the job event stream sends it as ``JobError.parity``. ``note`` (the source's own numeric noise,
    ``conversion.source_noise``) is added to the message."""
    if report.passed or allow_mismatch:
        return
    bad = [o.name for o in report.outputs if not o.passed]
    quantized = any(o.judged_by == "quantized" for o in report.outputs if not o.passed)
    loosen = "ParityOptions.quant_max_steps/quant_mean_steps/min_cosine/min_topk_agreement" if quantized else \
        "ParityOptions.rtol/atol"
    raise FailedPrecondition(
        f"parity check failed for output(s) {', '.join(bad)}: {summarize(report)}. The converted model "
        f"does not reproduce the source within tolerance; loosen {loosen} or set "
        "allow_mismatch to keep the result anyway" + (f". Note: {note}" if note else ""),
        details={"outputs": ",".join(bad)},
        payload=report,
    )
