"""Rank measured candidates and choose one: the accuracy budget filters, the goal ranks.

Quality is accuracy on the labeled evaluation set when there is one, else top-1 agreement with
the baseline (the baseline's agreement is 1). The goal metric is latency p50 (latency goal) or
the gzip-compressed size (size goal: what ships; pruned and clustered models only shrink
compressed). Under ``auto`` a candidate must beat the baseline by ``min_gain`` to be chosen, so
the answer is never slower (or larger) than the baseline; when nothing wins the baseline is
returned with the reason. Ranking marks the ``CandidateReport`` records in place. This module never
imports grpc or protobuf.
"""

from __future__ import annotations

import math

from modelport.job_records import CandidateReport, OptimizeResult

DEFAULT_MAX_DROP = 0.01


def quality(c: CandidateReport) -> float:
    """Accuracy when measured, else agreement with the baseline."""
    return c.accuracy if not math.isnan(c.accuracy) else c.agreement


def goal_metric(c: CandidateReport, goal: str) -> float:
    return float(c.gzip_size_bytes if goal == "size" else c.latency_p50_ms)


def goal_ratio(c: CandidateReport, baseline: CandidateReport, goal: str) -> float:
    """Candidate / baseline on the goal metric; for latency the ratio timed interleaved with the
    baseline (``latency_ratio_paired``) when measured, which drift on a busy machine cannot bias."""
    if goal != "size" and "latency_ratio_paired" in c.details:
        return float(c.details["latency_ratio_paired"])
    base = goal_metric(baseline, goal)
    return goal_metric(c, goal) / base if base else math.nan


def consistently_faster(c: CandidateReport) -> bool:
    """True unless interleaved timing shows the candidate lost at least one round to the baseline.

    A sub-millisecond model's p50 can differ by 10 % from noise alone; requiring every paired
    round to agree keeps ``auto`` from "choosing" a model whose compute is identical to the
    baseline's (e.g. a pruned but dense model)."""
    won, _, total = c.details.get("latency_rounds_faster", "").partition("/")
    return not total or won == total


def allowed_drop(baseline: CandidateReport, max_drop: float, relative: bool) -> float:
    """Absolute quality drop the budget allows (0 in the request means the default 0.01)."""
    drop = max_drop if max_drop > 0 else DEFAULT_MAX_DROP
    return drop * quality(baseline) if relative else drop


def _failed(c: CandidateReport) -> bool:
    """Not fully measured: failed, skipped, or stopped after a quick probe showed it slower."""
    return c.details.get("status") in ("failed", "skipped", "stopped")


def rank(baseline: CandidateReport, candidates: list[CandidateReport], *, goal: str,
         max_drop: float, relative: bool, auto: bool, min_gain: float,
         output_format: str = "") -> tuple[list[CandidateReport], CandidateReport, str]:
    """Mark ``within_budget``/``chosen`` and notes; returns (ranked candidates, chosen, reason).

    The chosen report is ``baseline`` when no candidate qualifies.
    """
    unit = "gzip size" if goal == "size" else "latency p50"
    allowed = allowed_drop(baseline, max_drop, relative)
    base_q = quality(baseline)
    measured = [c for c in candidates if not _failed(c)]
    for c in measured:
        drop = base_q - quality(c)
        c.within_budget = bool(not math.isnan(drop) and drop <= allowed + 1e-12)
        c.details["quality_drop"] = f"{drop:.4f}"
        c.details[f"{goal}_ratio"] = f"{goal_ratio(c, baseline, goal):.3f}"
        if not c.within_budget:
            c.note = _join(c.note, f"over budget: quality drop {drop:.4f} > allowed {allowed:.4f}")
    baseline.within_budget = True

    def key(c):
        r = goal_ratio(c, baseline, goal)
        return math.inf if math.isnan(r) else r

    in_budget = sorted([c for c in measured if c.within_budget], key=key)
    over = sorted([c for c in measured if not c.within_budget], key=key)
    failed = [c for c in candidates if _failed(c)]
    ranked = in_budget + over + failed

    threshold = (1.0 - min_gain) if auto else math.inf
    eligible = [c for c in in_budget if not (auto and output_format and c.format != output_format)]
    eligible_ids = {id(c) for c in eligible}
    for c in in_budget:
        if id(c) not in eligible_ids:
            c.note = _join(c.note, f"not eligible under auto: {c.format} output but output_format is {output_format}")
    winners = [c for c in eligible if key(c) < 1.0 and key(c) <= threshold]
    if auto and goal != "size":
        for c in [c for c in winners if not consistently_faster(c)]:
            winners.remove(c)
            c.note = _join(c.note, f"latency gain not consistent: faster in only "
                                   f"{c.details['latency_rounds_faster']} interleaved rounds")
    if not auto and not winners:
        winners = in_budget or over  # explicit techniques: return what was asked for, best first
    if winners:
        best = winners[0]
        best.chosen = True
        reason = f"{best.technique}: {unit} {key(best):.3f}x the baseline's, quality drop {base_q - quality(best):.4f}"
        if not best.within_budget:
            reason += f" (over the accuracy budget of {allowed:.4f}: no requested technique met it)"
        elif key(best) >= 1.0:
            reason += " (not better than the baseline on this machine; returned because it was requested)"
        best.note = _join(best.note, "chosen")
        for c in in_budget:
            if c is not best and not c.note:
                c.note = f"{unit} {key(c):.3f}x the baseline's"
        return ranked, best, reason
    baseline.chosen = True
    if not measured:
        reason = "no candidate could be built; returning the baseline"
    elif not in_budget:
        reason = f"every candidate exceeded the accuracy budget (allowed drop {allowed:.4f}); returning the baseline"
    else:
        best = in_budget[0]
        reason = (f"no candidate within budget beat the baseline's {unit} by {min_gain:.0%} or more (best: "
                  f"{best.technique} at {key(best):.3f}x); returning the baseline")
    for c in in_budget:
        c.note = _join(c.note, f"not faster/smaller enough: {unit} {key(c):.3f}x the baseline's")
    return ranked, baseline, reason


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a and b else (a or b)


def result(baseline: CandidateReport, ranked: list[CandidateReport], chosen: CandidateReport,
           reason: str) -> OptimizeResult:
    """The OptimizeResult of a ranking: baseline, ranked candidates, the chosen one's artifact and the reason."""
    return OptimizeResult(artifact=chosen.artifact, chosen_technique=chosen.technique, baseline=baseline,
                          candidates=list(ranked), reason=reason)
