"""How a model version is executed, chosen by measuring it at load (the ``auto`` defaults).

A server shares its cores with gRPC (and, on small machines, with its clients), so the best onnxruntime
setup depends on the model: a short model runs fastest on one intra-op thread (no hand-offs between
threads) and straight on the event loop (the executor hop costs more than the run); a long model wants
every core for one request; dynamic batching pays only when a batch costs less per item than single runs
(an MLP re-reading its weights: yes; MobileNetV2 on a CPU whose caches its activations outgrow: no).
``plan_execution`` builds the session, times it on zero inputs and returns an ``ExecutionPlan``; every
choice the user made explicitly (intra-op threads, batching settings, config.pbtxt) is kept as given.
Never imports grpc.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from inference_svc.sessions import LoadOptions, TensorSpec, build_session, tensor_specs, warmup_inputs

# A run at least this long on every core is compute-bound: one intra-op thread would make it slower.
NARROW_TRY_MAX_S = 2e-3
# One thread is kept when it is at most this much slower than all cores (it leaves a core to gRPC).
NARROW_SLACK = 1.15
# Dynamic batching is switched on when a batch of PROBE_BATCH costs at most this share per item.
BATCH_PAYS_RATIO = 0.75
PROBE_BATCH = 8
# An inline run that takes this many times the inline budget moves the model to the executor for good (its
# run time depends on the data more than the zero-input measurement showed).
INLINE_DEMOTE_FACTOR = 20
# Largest merged batch of an automatically batched model (requests larger than this still run, alone).
AUTO_MAX_BATCH = 32


@dataclass
class ExecutionPlan:
    """The session to serve with and how to run it."""

    session: object
    warnings: list[str]
    intra_op_threads: int
    """Threads the session was built with (0 = onnxruntime's default, one per core)."""
    inline: bool = False
    """Run on the event loop instead of the executor (the run is shorter than the hop)."""
    auto_batching: bool = False
    """Dynamic batching switched on because a batch measured cheaper per item."""
    timings_us: dict[str, float] = field(default_factory=dict)
    """What was measured (median microseconds): ``wide``, ``narrow``, ``batch1``, ``batch<N>``."""

    def describe(self) -> str:
        """One line for the load log."""
        t = ", ".join(f"{k} {v:.0f}us" for k, v in self.timings_us.items())
        return (f"intra-op threads {self.intra_op_threads or 'all cores'}, "
                f"{'inline on the event loop' if self.inline else 'executor thread'}, "
                f"auto batching {'on' if self.auto_batching else 'off'}" + (f" (measured: {t})" if t else ""))


def median_run_s(session, feeds: dict, budget_s: float = 0.25, max_runs: int = 200) -> float:
    """Median seconds of ``session.run`` on ``feeds`` (after two warm-up runs), within ``budget_s``."""
    for _ in range(2):
        session.run(None, feeds)
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < max_runs and (len(times) < 5 or time.perf_counter() < end):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def batchable(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> bool:
    """Every input and output has a dynamic first dimension."""
    return all(t.shape and t.shape[0] == -1 for t in inputs + outputs)


def cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plan_execution(path: Path, opts: LoadOptions, available: list[str] | None, *, tune: bool,
                   may_auto_batch: bool, inline_max_us: int) -> ExecutionPlan:
    """Build the session for ``opts`` and, with ``tune``, measure the choices ``opts`` leaves open.

    ``may_auto_batch``: neither the load request nor config.pbtxt said anything about batching.
    Zero-filled inputs are used; a model that cannot run on them is served as configured, untuned.
    """
    session, warnings = build_session(path, opts, available)
    plan = ExecutionPlan(session, warnings, opts.intra_op_threads)
    if not tune or session.get_providers()[0] != "CPUExecutionProvider":
        return plan
    inputs, outputs = tensor_specs(session.get_inputs()), tensor_specs(session.get_outputs())
    feeds = warmup_inputs(inputs, 1)
    try:
        one = median_run_s(session, feeds)
        plan.timings_us["batch1" if opts.intra_op_threads else "wide"] = one * 1e6
        if opts.intra_op_threads == 0 and cores() > 1 and one < NARROW_TRY_MAX_S:
            narrow_opts = LoadOptions(**{**opts.__dict__, "intra_op_threads": 1})
            narrow, narrow_warnings = build_session(path, narrow_opts, available)
            t_narrow = median_run_s(narrow, feeds)
            plan.timings_us["narrow"] = t_narrow * 1e6
            if t_narrow <= one * NARROW_SLACK:
                plan.session, plan.warnings, plan.intra_op_threads = narrow, narrow_warnings, 1
                one = t_narrow
        longest = one
        if may_auto_batch and batchable(inputs, outputs):
            many = median_run_s(plan.session, warmup_inputs(inputs, PROBE_BATCH))
            plan.timings_us[f"batch{PROBE_BATCH}"] = many * 1e6
            plan.auto_batching = many / PROBE_BATCH <= one * BATCH_PAYS_RATIO
            if plan.auto_batching:
                longest = many * AUTO_MAX_BATCH / PROBE_BATCH
        plan.inline = longest * 1e6 <= inline_max_us
    except Exception as exc:  # noqa: BLE001 - a model may need real-looking data; serve it untuned
        plan.warnings.append(f"could not time the model on zero inputs ({exc}); serving it with the configured "
                             "threads, on the executor, without automatic batching")
        plan.inline = plan.auto_batching = False
    return plan
