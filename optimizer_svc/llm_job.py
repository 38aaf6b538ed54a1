"""The optimize job for a generation model: weight-only candidates, measured as generation, ranked.

The input artifact is a generation folder packed as tar (``model.onnx`` step + ``generation.json``).
The baseline and each candidate (``int8-weight-only``, ``int4-weight-only``) decode the same
held-out prompts greedily; a report's ``latency_p50_ms`` is the time per generated token at one
sequence, ``agreement`` the teacher-forced top-1 agreement with the baseline's greedy tokens, and
``details`` carry tokens/s, time to first token, session memory, the free-running greedy prefix and
the perplexity of the baseline's continuations. ``selection.rank`` then applies the quality budget
and the goal as for every other model. Never imports grpc or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

from modelport import media
from modelport.errors import FailedPrecondition, InvalidArgument, ModelportError
from modelport.generation_model import CONFIG_FILE, GenerationConfig
from modelport.job_records import ArtifactRef, CandidateReport, OptimizeJob, OptimizeResult
from modelport.store import ArtifactStore
from optimizer_svc import selection
from optimizer_svc.llm_techniques import (
    BITS,
    GenerationMeasurement,
    generation_root,
    measure,
    prompts_for,
    weight_only,
)
from optimizer_svc.technique_options import plan

log = logging.getLogger("modelport.optimizer.llm")

def _report(technique: str, m: GenerationMeasurement, details: dict[str, str]) -> CandidateReport:
    return CandidateReport(technique=technique, format="generation", size_bytes=m.size_bytes,
                           gzip_size_bytes=m.size_bytes, latency_p50_ms=m.ms_per_token,
                           latency_p90_ms=m.ms_per_token, accuracy=math.nan, agreement=m.agreement,
                           max_abs_diff=math.nan, details={**m.details(), **details})


def _failed(technique: str, note: str) -> CandidateReport:
    return CandidateReport(technique=technique, format="generation", accuracy=math.nan, agreement=math.nan,
                           max_abs_diff=math.nan, note=note, details={"status": "failed"})


def _ref(store: ArtifactStore, folder: Path, origin: str) -> ArtifactRef:
    art = store.put_dir(folder, media.GENERATION)
    return ArtifactRef(digest=art.digest, size=art.size, media_type=art.media_type, origin=origin)


def optimize_generation(progress, store: ArtifactStore, job: OptimizeJob, opts: dict, origin: str,
                        work: Path) -> OptimizeResult:
    t_start = time.monotonic()
    if (job.output_format or "onnx").lower() != "onnx":
        raise InvalidArgument("a generation model is optimized to ONNX only; leave output_format empty or onnx")
    the_plan = plan(list(job.techniques), "generation", has_train=False, has_inputs=False)
    goal = job.goal
    source = generation_root(Path(store.unpacked(job.model.digest)))
    config = GenerationConfig.load(source / CONFIG_FILE)
    tokens = int(opts["generate.tokens"])
    prompts = prompts_for(config, count=int(opts["generate.prompts"]))
    if len(prompts[0]) + tokens > config.context_limit:
        raise InvalidArgument(f"generate.tokens={tokens} plus the 8-token prompts exceed the model's max_context "
                              f"{config.context_limit}")
    threads = max(0, int(job.threads))

    progress("measuring", 0.05, f"measuring the baseline: {len(prompts)} prompts x {tokens} greedy tokens")
    base = measure(source, prompts, tokens, threads=threads, repeats=2)
    base_own = measure(source, prompts, tokens, reference=base.sequences, threads=threads)  # its own perplexity
    base.perplexity = base_own.perplexity
    baseline = _report("baseline", base, {"input_format": "generation", "architecture": config.architecture,
                                          "threads": str(threads or "default")})
    baseline.artifact = job.model if job.model.origin else dataclasses.replace(job.model, origin=origin)

    candidates: list[CandidateReport] = []
    built: dict[str, Path] = {}
    for i, tech in enumerate(the_plan.run):
        frac = 0.1 + 0.8 * i / max(1, len(the_plan.run))
        progress(f"optimizing:{tech}", frac, f"building the {tech} candidate ({i + 1}/{len(the_plan.run)})")
        t0 = time.monotonic()
        out = work / tech
        try:
            block = int(opts[f"{tech}.block_size"])
            symmetric = bool(opts.get(f"{tech}.symmetric", True))
            details = weight_only(source, out, BITS[tech], block, symmetric, int(opts[f"{tech}.accuracy_level"]))
            progress("measuring", frac + 0.4 / max(1, len(the_plan.run)), f"measuring {tech}")
            m = measure(out, prompts, tokens, reference=base.sequences, threads=threads, repeats=2)
            details["build_seconds"] = f"{time.monotonic() - t0:.1f}"
            details["tokens_per_s_ratio"] = f"{m.tokens_per_s / base.tokens_per_s:.3f}" if base.tokens_per_s else "nan"
            details["size_ratio"] = f"{m.size_bytes / base.size_bytes:.3f}"
            candidates.append(_report(tech, m, details))
            built[tech] = out
        except ModelportError as e:
            candidates.append(_failed(tech, f"failed: {e.message}"))
        except Exception as e:  # noqa: BLE001 - one technique's failure must not sink the job
            log.exception("technique %s failed", tech)
            candidates.append(_failed(tech, f"failed: {type(e).__name__}: {str(e)[:300]}"))
    if not the_plan.auto and not built:
        raise FailedPrecondition("every requested technique failed: " +
                                 "; ".join(f"{c.technique}: {c.note}" for c in candidates if c.note))
    ranked, chosen, reason = selection.rank(
        baseline, candidates, goal=goal, max_drop=job.budget.max_drop, relative=job.budget.relative,
        auto=the_plan.auto, min_gain=float(opts["auto.min_gain"]) if the_plan.auto else 0.0)
    progress("storing", 0.95, "storing the candidates")
    for c in ranked:
        if c.technique in built:
            c.artifact = _ref(store, built[c.technique], origin)
    return selection.result(baseline, ranked, chosen, reason + f" ({time.monotonic() - t_start:.0f}s)")
