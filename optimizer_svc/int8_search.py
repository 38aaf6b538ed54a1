"""The int8-static recipe search: which static INT8 recipe pays on the CPU that runs the job.

No recipe is right everywhere: on x86 with VNNI, uint8 activations with int8 weights (U8S8) are
onnxruntime's fast path and int8 activations (S8S8) can run no faster than FP32; without VNNI,
U8S8 risks int16 saturation unless weights are 7-bit (``reduce_range``); ARM prefers S8S8. So the
recipes are built and measured here, in the order of that prior (``recipe_order``), until a time
budget is spent. Every recipe is timed and scored by the caller's ``evaluate`` (the job's own
measurement: latency paired with the baseline, quality against labels or the baseline), so the
search ranks recipes exactly as the candidate table ranks techniques. A recipe over the accuracy
budget that is faster than every recipe within it gets accuracy fixes, one at a time: its output
tail (softmax, reshapes) and then its classifier layer left in float, then percentile and entropy
calibration. Once a recipe is within budget, each later one is first timed over a few runs and
not measured further when clearly slower than it. The winner is the fastest recipe within the
budget (the most accurate when none is).
This module never imports grpc.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from modelport import cpuinfo
from optimizer_svc import onnx_techniques as OT
from optimizer_svc.onnx_techniques import Recipe

log = logging.getLogger("modelport.optimizer.int8")

AUTO = "auto"


@dataclass(frozen=True)
class Pins:
    """Recipe dimensions fixed by request options (``auto`` leaves a dimension to the search)."""

    types: str = AUTO  # u8s8 | s8s8
    per_channel: str = AUTO  # true | false
    fmt: str = AUTO  # qdq | qoperator
    method: str = AUTO  # minmax | entropy | percentile

    def allows(self, r: Recipe) -> bool:
        return ((self.types == AUTO or self.types == r.activations + r.weights)
                and (self.per_channel == AUTO or (self.per_channel == "true") == r.per_channel)
                and (self.fmt == AUTO or self.fmt == r.fmt)
                and (self.method == AUTO or self.method == r.method))


def recipe_order(flags: list[str], pins: Pins = Pins()) -> list[Recipe]:
    """Structural recipes (types, granularity, format, reduce_range) in the order of their prior on this CPU.

    x86 with VNNI/AMX: U8S8 per-channel QDQ first, reduce_range never needed. x86 without: the
    same with reduce_range first, the full-range variant later (its accuracy is measured, not
    assumed). Elsewhere (ARM): S8S8 first. A pinned calibration method replaces minmax.
    """
    u8 = dict(activations="u8", weights="s8")
    s8 = dict(activations="s8", weights="s8")
    if cpuinfo.is_x86(flags) and cpuinfo.has_int8_dot(flags):
        order = [Recipe(**u8), Recipe(**u8, fmt="qoperator"), Recipe(**s8), Recipe(**u8, per_channel=False)]
    elif cpuinfo.is_x86(flags):
        order = [Recipe(**u8, reduce_range=True), Recipe(**u8, fmt="qoperator", reduce_range=True), Recipe(**s8),
                 Recipe(**u8, per_channel=False, reduce_range=True), Recipe(**u8)]
    else:
        order = [Recipe(**s8), Recipe(**u8), Recipe(**s8, per_channel=False)]
    if pins.method != AUTO:
        order = [replace(r, method=pins.method) for r in order]
    # Pinned dimensions outside the prior list (e.g. per-tensor S8S8) still get one recipe.
    kept = [r for r in order if pins.allows(r)]
    if not kept:
        base = order[0]
        kept = [replace(base, activations=pins.types[:2] if pins.types != AUTO else base.activations,
                        weights=pins.types[2:] if pins.types != AUTO else base.weights,
                        per_channel=base.per_channel if pins.per_channel == AUTO else pins.per_channel == "true",
                        fmt=base.fmt if pins.fmt == AUTO else pins.fmt)]
    return kept


@dataclass
class Trial:
    """One recipe built and measured."""

    recipe: Recipe
    path: Path | None = None
    ratio: float = math.nan  # latency vs the baseline, timed interleaved with it
    quality: float = math.nan
    drop: float = math.nan
    within: bool = False
    cosine: float = math.nan
    seconds: float = 0.0
    error: str = ""
    screened: str = ""  # why a quick probe ended its measurement (it could not beat the best recipe)
    facts: dict[str, str] = field(default_factory=dict)
    fix_step: int = -1  # index into FIXES of the fix that made it; -1 for a structural recipe

    def summary(self) -> str:
        if self.error:
            return f"{self.recipe.key}: failed ({self.error[:80]})"
        if self.screened:
            return f"{self.recipe.key}: {self.screened}"
        verdict = "" if self.within else ", over the accuracy budget"
        return f"{self.recipe.key}: {self.ratio:.3f}x, quality drop {self.drop:.4f}, cosine {self.cosine:.4f}{verdict}"


@dataclass
class Evaluation:
    """What the caller's ``evaluate`` returns for one quantized model."""

    ratio: float
    quality: float
    cosine: float = math.nan


@dataclass
class SearchResult:
    best: Trial
    trials: list[Trial]
    untried: list[Recipe]
    flags: list[str]
    seconds: float
    budget_s: float

    def details(self) -> dict[str, str]:
        """The report's facts: the chosen recipe, the CPU flags, every recipe tried and its figures."""
        d = dict(self.best.facts)
        d.update(self.best.recipe.details())
        measured = [t for t in self.trials if not t.error and not t.screened]
        d["cpu_flags"] = cpuinfo.format_flags(self.flags)
        d["recipe_search"] = (f"{len(self.trials)} recipe(s) tried in {self.seconds:.0f} s "
                              f"(budget {self.budget_s:.0f} s); {len(self.untried)} left untried")
        d["recipe_choice"] = ("fastest within the accuracy budget" if self.best.within
                              else "no recipe met the accuracy budget: the most accurate" if measured
                              else "every recipe failed")
        d["recipes_tried"] = "; ".join(t.summary() for t in self.trials)
        if self.untried:
            d["recipes_untried"] = ", ".join(r.key for r in self.untried)
        d["recipe_latency_ratio"] = f"{self.best.ratio:.4f}"
        return d


# A recipe whose quick probe is this many times slower than the best recipe within budget is not measured.
SCREEN_MARGIN = 1.25

# Accuracy fixes, applied one at a time to a fast recipe that is over budget.
FIXES = ("float-tail", "float-head", "percentile", "entropy")


def _fixed(r: Recipe, step: str, tail: list[tuple[str, str]], head: list[tuple[str, str]],
           pins: Pins) -> Recipe | None:
    """``r`` with one accuracy fix, or None when the fix does not apply (nothing to leave in float, pinned)."""
    if step in ("float-tail", "float-head"):
        nodes = tail if step == "float-tail" else tail + head
        names = tuple(dict.fromkeys([*r.float_nodes, *(n for n, _ in nodes)]))
        if not nodes or names == r.float_nodes:
            return None
        ops = tuple(dict.fromkeys([*r.float_ops, *(op for _, op in nodes)]))
        return replace(r, float_nodes=names, float_ops=ops)
    if pins.method != AUTO or r.method == step:
        return None
    return replace(r, method=step)


def search(src: Path, work: Path, calib: dict[str, np.ndarray], samples: int,
           evaluate: Callable[[Path], Evaluation], base_quality: float, allowed_drop: float, budget_s: float,
           flags: list[str] | None = None, pins: Pins = Pins(),
           note: Callable[[str], None] = lambda msg: None,
           probe: Callable[[Path], float] | None = None) -> SearchResult:
    """Build and measure recipes (see the module docstring); the first one is always measured.

    ``evaluate(path)`` times the model against the baseline and scores it; a recipe is within
    budget when ``base_quality - quality <= allowed_drop``. ``probe(path)``, when given, is a cheap
    latency ratio (a few runs): once some recipe is within budget, a recipe whose probe is
    SCREEN_MARGIN times slower than the best one is not measured further (it could not win).
    Returns every trial and the winner, whose file stays in ``work`` (the others are deleted).
    """
    t0 = time.monotonic()
    flags = cpuinfo.relevant_flags() if flags is None else list(flags)
    work.mkdir(parents=True, exist_ok=True)
    pre = OT.preprocess(src, work / "pre.onnx")
    tail, head = OT.output_tail(pre)
    queue: list[tuple[Recipe, Trial | None, int]] = [(r, None, -1) for r in recipe_order(flags, pins)]
    trials: list[Trial] = []
    seen: set[str] = set()

    def best_within_ratio() -> float:
        return min((t.ratio for t in trials if t.within), default=math.inf)

    def enqueue_fix(base: Trial, after: int) -> None:
        for i in range(after + 1, len(FIXES)):
            r = _fixed(base.recipe, FIXES[i], tail, head, pins)
            if r is not None and r.key not in seen:
                queue.insert(0, (r, base, i))
                return

    while queue:
        spent = time.monotonic() - t0
        done = [t.seconds for t in trials]
        if trials and spent + (sum(done) / len(done)) > budget_s:
            break
        recipe, parent, step = queue.pop(0)
        if recipe.key in seen:
            continue
        seen.add(recipe.key)
        note(f"recipe {len(trials) + 1}: {recipe.key}")
        screen = None
        if probe is not None and best_within_ratio() < math.inf:
            limit = SCREEN_MARGIN * best_within_ratio()

            def screen(path: Path, limit=limit) -> str:
                r = probe(path)
                return f"screened out: a quick probe ran {r:.2f}x the baseline, >= {limit:.2f}" if r >= limit else ""
        out = work / f"trial-{len(trials)}" / "model.onnx"  # a folder each: external data lands as model.onnx.data
        out.parent.mkdir(parents=True, exist_ok=True)
        trial = _try(recipe, pre, out, calib, samples, evaluate, base_quality, allowed_drop,
                     work / f"calib-{recipe.method}.json", screen)
        trial.fix_step = step
        trials.append(trial)
        log.info("int8-static %s", trial.summary())
        if trial.error:
            if parent is not None:
                enqueue_fix(parent, step)
            continue
        if trial.screened:
            continue
        if trial.within:
            continue
        # Over budget: worth fixing only while it is faster than every recipe within budget. (Not gated on
        # the FP32 baseline: a slower INT8 is never chosen under auto, but an explicit request gets the
        # best recipe within budget.)
        if parent is None:
            if trial.ratio < best_within_ratio():
                enqueue_fix(trial, -1)
        else:
            base = trial if trial.quality > parent.quality else parent
            if min(base.ratio, trial.ratio) < best_within_ratio():
                enqueue_fix(base, step)
    untried = list({r.key: r for r, _, _ in queue if r.key not in seen}.values())
    best = _winner(trials)
    for t in trials:
        if t is not best and t.path is not None:
            shutil.rmtree(t.path.parent, ignore_errors=True)  # the trial's folder: model + external data
    return SearchResult(best, trials, untried, flags, time.monotonic() - t0, budget_s)


def _try(recipe: Recipe, pre: Path, out: Path, calib: dict[str, np.ndarray], samples: int,
         evaluate: Callable[[Path], Evaluation], base_quality: float, allowed_drop: float, cache: Path,
         screen: Callable[[Path], str] | None = None) -> Trial:
    t0 = time.monotonic()
    trial = Trial(recipe)
    try:
        trial.facts = OT.int8_static(pre, out, calib, recipe, samples, pre=pre, calib_cache=cache)
        trial.path = out
        trial.screened = screen(out) if screen is not None else ""
        if trial.screened:
            shutil.rmtree(out.parent, ignore_errors=True)
            trial.path = None
            trial.seconds = time.monotonic() - t0
            return trial
        ev = evaluate(out)
        trial.ratio, trial.quality, trial.cosine = ev.ratio, ev.quality, ev.cosine
        trial.drop = base_quality - ev.quality
        trial.within = bool(not math.isnan(trial.drop) and trial.drop <= allowed_drop + 1e-12)
    except Exception as e:  # noqa: BLE001 - one recipe failing must not end the search
        log.warning("int8-static recipe %s failed: %s", recipe.key, e)
        trial.error = f"{type(e).__name__}: {e}"
        shutil.rmtree(out.parent, ignore_errors=True)
        trial.path = None
    trial.seconds = time.monotonic() - t0
    return trial


def _winner(trials: list[Trial]) -> Trial:
    """Fastest within budget; else the most accurate (then fastest); else the first (every one failed)."""
    ok = [t for t in trials if not t.error and not t.screened]
    within = [t for t in ok if t.within]
    if within:
        return min(within, key=lambda t: t.ratio)
    if ok:
        return min(ok, key=lambda t: (-_finite(t.quality), _finite(t.ratio, math.inf)))
    return trials[0]


def _finite(x: float, default: float = -math.inf) -> float:
    return default if math.isnan(x) else x
