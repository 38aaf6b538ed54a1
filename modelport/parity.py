"""Output parity between a converted model and its source (numpy only; builds ``ParityReport``).

Every conversion result carries one: per output the max absolute and relative difference,
whether ``np.allclose`` holds at the requested tolerances, whether the candidate introduced
NaN/Inf, and top-1 agreement for classifier-like outputs (2-D, last dim > 1).
"""

from __future__ import annotations

import numpy as np

from modelport.errors import FailedPrecondition, InvalidArgument
from modelport.v1 import jobs_pb2

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4


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


# Outputs larger than this many elements are compared in slices along the first axis: the comparison
# holds several float64 temporaries of the output's size (a language model's logits for 8 samples of 128
# tokens are 33M elements: 2 GB of temporaries at once otherwise).
CHUNK_ELEMENTS = 1 << 21


def compare_output(name: str, ref: np.ndarray, cand: np.ndarray, rtol: float, atol: float) -> jobs_pb2.OutputParity:
    """Parity of one output (``cand`` is reshaped to ``ref``'s shape when only the shape differs)."""
    ref = np.asarray(ref)
    cand = np.asarray(cand)
    if ref.ndim >= 2 and ref.shape == cand.shape and ref.size > CHUNK_ELEMENTS and ref.dtype.kind in "fiub" \
            and cand.dtype.kind in "fiub":
        return _compare_in_slices(name, ref, cand, rtol, atol)
    return _compare_whole(name, ref, cand, rtol, atol)


def _compare_in_slices(name: str, ref: np.ndarray, cand: np.ndarray, rtol: float, atol: float) -> jobs_pb2.OutputParity:
    """``_compare_whole`` over slices of rows, merged: the same figures with bounded temporaries."""
    rows = max(1, CHUNK_ELEMENTS // max(1, ref[0].size))
    parts = [_compare_whole(name, ref[i:i + rows], cand[i:i + rows], rtol, atol)
             for i in range(0, ref.shape[0], rows)]
    out = jobs_pb2.OutputParity(name=name, top1_agreement=-1.0)
    out.max_abs_diff = max(p.max_abs_diff for p in parts)
    out.max_rel_diff = max(p.max_rel_diff for p in parts)
    out.nan_or_inf = any(p.nan_or_inf for p in parts)
    out.allclose = all(p.allclose for p in parts)
    if ref.ndim == 2 and ref.shape[-1] > 1:  # top-1 over rows: weight each slice by its row count
        sizes = [min(rows, ref.shape[0] - i) for i in range(0, ref.shape[0], rows)]
        out.top1_agreement = float(sum(p.top1_agreement * n for p, n in zip(parts, sizes, strict=True)) / sum(sizes))
    return out


def _compare_whole(name: str, ref: np.ndarray, cand: np.ndarray, rtol: float, atol: float) -> jobs_pb2.OutputParity:
    out = jobs_pb2.OutputParity(name=name, top1_agreement=-1.0)
    if ref.dtype.kind in "OSU" or cand.dtype.kind in "OSU":
        same = ref.shape == cand.shape and bool(np.all(ref == cand))
        out.allclose = same
        out.max_abs_diff = 0.0 if same else float("inf")
        out.max_rel_diff = out.max_abs_diff
        return out
    if ref.shape != cand.shape:
        if ref.size != cand.size:
            out.allclose = False
            out.max_abs_diff = out.max_rel_diff = float("inf")
            return out
        cand = cand.reshape(ref.shape)
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
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
    if r.ndim == 2 and r.shape[-1] > 1 and r.shape[0] > 0:
        out.top1_agreement = float(np.mean(np.argmax(r, axis=-1) == np.argmax(c, axis=-1)))
    return out


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, *,
                    inputs_source: str = "", samples: int | None = None) -> jobs_pb2.ParityReport:
    """Compare the candidate's outputs to the reference's; ``passed`` when every output is allclose.

    Outputs pair by name, or by position when the names differ but the counts match.
    """
    report = jobs_pb2.ParityReport(rtol=rtol, atol=atol, inputs_source=inputs_source)
    pairs = _align(reference, candidate)
    for rname, cname in pairs:
        report.outputs.append(compare_output(rname, reference[rname], candidate[cname], rtol, atol))
    if samples is None:
        first = next(iter(reference.values()), None)
        samples = int(np.asarray(first).shape[0]) if first is not None and np.asarray(first).ndim else 1
    report.samples = samples
    report.passed = bool(report.outputs) and all(o.allclose for o in report.outputs)
    return report


def summarize(report: jobs_pb2.ParityReport) -> str:
    """One line naming each output's max abs diff and the tolerances."""
    parts = []
    for o in report.outputs:
        s = f"{o.name}: max abs diff {o.max_abs_diff:.3g}, max rel diff {o.max_rel_diff:.3g}"
        if o.nan_or_inf:
            s += ", NaN/Inf introduced"
        if o.top1_agreement >= 0:
            s += f", top-1 agreement {o.top1_agreement:.1%}"
        parts.append(s)
    return "; ".join(parts) + f" (rtol={report.rtol:g}, atol={report.atol:g}, {report.samples} samples)"


def enforce(report: jobs_pb2.ParityReport, allow_mismatch: bool) -> None:
    """Raise FailedPrecondition carrying the report when parity failed and mismatch is not allowed."""
    if report.passed or allow_mismatch:
        return
    bad = [o.name for o in report.outputs if not o.allclose]
    raise FailedPrecondition(
        f"parity check failed for output(s) {', '.join(bad)}: {summarize(report)}. The converted model "
        "does not reproduce the source within tolerance; loosen ParityOptions.rtol/atol or set "
        "allow_mismatch to keep the result anyway",
        details={"outputs": ",".join(bad)},
        payload=report.SerializeToString(),
    )
