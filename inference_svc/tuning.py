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

from inference_svc.sessions import (
    LoadOptions,
    TensorSpec,
    build_session,
    release_arena,
    tensor_specs,
    warmup_inputs,
)

# A run at least this long on every core is compute-bound: one intra-op thread would make it slower.
NARROW_TRY_MAX_S = 2e-3
# One thread is kept when it is at most this much slower than all cores (it leaves a core to gRPC).
NARROW_SLACK = 1.15
# Dynamic batching is switched on when a batch of PROBE_BATCH costs at most this share per item.
BATCH_PAYS_RATIO = 0.6
PROBE_BATCH = 8
# An inline run that takes this many times the inline budget moves the model to the executor for good (its
# run time depends on the data more than the zero-input measurement showed).
INLINE_DEMOTE_FACTOR = 20
# A second (one-thread) session for concurrent runs is built only for models up to this size (it holds its own
# copy of the weights) and kept when cores one-thread runs side by side beat one run on every core by 5%.
CONCURRENT_MAX_BYTES = 512 * 2**20
CONCURRENT_GAIN = 0.95
# A model that batching helps runs inline only when its run is at most this share of the inline budget.
INLINE_BATCH_SHARE = 10
# A warm-up run longer than this makes the load-time measurements one round each (interleaved_medians_s).
SLOW_RUN_S = 0.5
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
    concurrent_session: object | None = None
    """A one-thread session for concurrent runs of a compute-bound model that batching does not help: a lone
    request runs on ``session`` with every core; while others wait, ``instances`` one-thread runs go side by
    side (no thread hand-offs inside a run, every core busy)."""
    instances: int = 0
    """Concurrent executions chosen (0 = as configured)."""
    timings_us: dict[str, float] = field(default_factory=dict)
    """What was measured (median microseconds): ``wide``, ``narrow``, ``batch1``, ``batch<N>``."""

    def describe(self) -> str:
        """One line for the load log."""
        t = ", ".join(f"{k} {v:.0f}us" for k, v in self.timings_us.items())
        concurrent = (f", {self.instances} concurrent one-thread runs while requests wait"
                      if self.concurrent_session is not None else
                      f", {self.instances} concurrent runs" if self.instances > 1 else "")
        return (f"intra-op threads {self.intra_op_threads or 'all cores'}, "
                f"{'inline on the event loop' if self.inline else 'executor thread'}, "
                f"auto batching {'on' if self.auto_batching else 'off'}{concurrent}"
                + (f" (measured: {t})" if t else ""))


def median_run_s(session, feeds: dict, budget_s: float = 0.25, max_runs: int = 200) -> float:
    """Median seconds of ``session.run`` on ``feeds`` (after two warm-up runs), within ``budget_s``."""
    return interleaved_medians_s([(session, feeds)], budget_s, max_runs)[0]


def interleaved_medians_s(runs: list[tuple[object, dict]], budget_s: float = 0.3, max_rounds: int = 200) -> list[float]:
    """Median seconds of each ``(session, feeds)``, timed in alternation (A B A B ...) so that load from other
    processes, which drifts, weighs on all of them alike; at least 5 rounds, then until ``budget_s``.

    A run that takes longer than SLOW_RUN_S (a multi-GB model, a batch probe of a large one) gets one warm-up
    and one timed round: at that scale the choices differ by far more than the noise of one run, and five
    rounds of a 14 s batch probe made a 1.3 GB transformer's load take minutes."""
    slow = False
    for session, feeds in runs:
        t0 = time.perf_counter()
        session.run(None, feeds)
        slow = slow or time.perf_counter() - t0 > SLOW_RUN_S
    if not slow:
        for session, feeds in runs:
            session.run(None, feeds)
    min_rounds = 1 if slow else 5
    times: list[list[float]] = [[] for _ in runs]
    end = time.perf_counter() + budget_s
    while len(times[0]) < max_rounds and (len(times[0]) < min_rounds or time.perf_counter() < end):
        for i, (session, feeds) in enumerate(runs):
            t0 = time.perf_counter()
            session.run(None, feeds)
            times[i].append(time.perf_counter() - t0)
    return [sorted(t)[len(t) // 2] for t in times]


# --- the rules (pure: timings in, decision out) -------------------------------------------------------

def one_thread_is_enough(all_cores_s: float, one_thread_s: float) -> bool:
    """One intra-op thread runs at most NARROW_SLACK slower than every core (a short model, or busy cores)."""
    return one_thread_s <= all_cores_s * NARROW_SLACK


def batching_pays(single_s: float, batch_s: float, batch: int = PROBE_BATCH) -> bool:
    """A batch of ``batch`` costs at most BATCH_PAYS_RATIO of a single run per item."""
    return batch_s / batch <= single_s * BATCH_PAYS_RATIO


def concurrent_runs_pay(all_cores_s: float, one_thread_s: float, n_cores: int) -> bool:
    """``n_cores`` one-thread runs side by side finish more requests per second than one run on every core."""
    return one_thread_s <= all_cores_s * n_cores * CONCURRENT_GAIN


def runs_inline(longest_s: float, inline_max_us: int) -> bool:
    """The longest run is short enough to run on the event loop."""
    return longest_s * 1e6 <= inline_max_us


def inline_or_batch(run_s: float, batching_pays_: bool, inline_max_us: int) -> tuple[bool, bool]:
    """(inline, automatic batching) for a model whose batch-1 run takes ``run_s``.

    Inline runs never merge (the loop finishes each request before it reads the next), so the two exclude
    each other. Where batching pays and the run is more than a tenth of the inline budget, merging at
    concurrency saves more than the executor hop costs: batch on the executor. Otherwise a short run goes
    inline, and a long one to the executor, batching where that pays.
    """
    if batching_pays_ and run_s * 1e6 > inline_max_us / INLINE_BATCH_SHARE:
        return False, True
    if runs_inline(run_s, inline_max_us):
        return True, False
    return False, batching_pays_


def batchable(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> bool:
    """Every input and output has a dynamic first dimension."""
    return all(t.shape and t.shape[0] == -1 for t in inputs + outputs)


def splits_by_row(session, batch_feeds: dict) -> bool:
    """Every output of a batched run has the batch's first dimension (so merged requests can be split back)."""
    n = next(iter(batch_feeds.values())).shape[0]
    return all(getattr(o, "ndim", 0) > 0 and o.shape[0] == n for o in session.run(None, batch_feeds))


def model_bytes(path: Path) -> int:
    """The model file plus the external data files named after it beside it (what a second session holds
    again)."""
    return sum(p.stat().st_size for p in path.parent.glob(f"{path.stem}*") if p.is_file())


def cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plan_execution(path: Path, opts: LoadOptions, available: list[str] | None, *, tune: bool,
                   may_auto_batch: bool, inline_max_us: int, may_add_instances: bool = False) -> ExecutionPlan:
    """Build the session for ``opts`` and, with ``tune``, measure the choices ``opts`` leaves open.

    ``may_auto_batch``: neither the load request nor config.pbtxt said anything about batching.
    ``may_add_instances``: nor about instances (concurrent executions).
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
        auto_threads = opts.intra_op_threads == 0 and cores() > 1
        plan.timings_us["all_cores" if auto_threads else "batch1"] = one * 1e6
        short = one < NARROW_TRY_MAX_S
        narrow = t_narrow = None
        if auto_threads and (short or (may_add_instances and model_bytes(path) <= CONCURRENT_MAX_BYTES)):
            narrow, narrow_warnings = build_session(path, LoadOptions(**{**opts.__dict__, "intra_op_threads": 1}),
                                                    available)
            one, t_narrow = interleaved_medians_s([(session, feeds), (narrow, feeds)])
            plan.timings_us.update(all_cores=one * 1e6, one_thread=t_narrow * 1e6)
            # Only a short model's lone request goes to one thread (hand-offs cost more than the cores give). A
            # compute-bound one keeps every core for a lone request, whatever the load-time timing said: a busy
            # machine at load (other servers starting) makes all cores look no faster, and one thread then
            # doubled MobileNetV2's latency at concurrency 1 once the machine was quiet. Waiting requests still
            # get one-thread runs side by side (the concurrent session below).
            if short and one_thread_is_enough(one, t_narrow):
                plan.session, plan.warnings, plan.intra_op_threads = narrow, narrow_warnings, 1
        main_one = t_narrow if plan.intra_op_threads == 1 and narrow is plan.session else one
        pays = False
        if may_auto_batch and batchable(inputs, outputs):
            # Per-item cost of a batch on one thread: what the model's arithmetic gains from batching,
            # without the thread hand-offs that load from other processes distorts.
            probe = narrow if narrow is not None else plan.session
            batch_feeds = warmup_inputs(inputs, PROBE_BATCH)
            if splits_by_row(probe, batch_feeds):
                single, many = interleaved_medians_s([(probe, feeds), (probe, batch_feeds)])
                plan.timings_us[f"batch{PROBE_BATCH}_per_item"] = many / PROBE_BATCH * 1e6
                pays = batching_pays(single, many)
        plan.inline, plan.auto_batching = inline_or_batch(main_one, pays, inline_max_us)
        if (narrow is not None and narrow is not plan.session and may_add_instances and not plan.auto_batching
                and not plan.inline and concurrent_runs_pay(one, t_narrow, cores())):
            plan.concurrent_session, plan.instances = narrow, cores()
        for kept in {id(s): s for s in (plan.session, plan.concurrent_session) if s is not None}.values():
            release_arena(kept, feeds)  # the batch probe's activations are not kept resident
    except Exception as exc:  # noqa: BLE001 - a model may need real-looking data; serve it untuned
        plan.warnings.append(f"could not time the model on zero inputs ({exc}); serving it with the configured "
                             "threads, on the executor, without automatic batching")
        plan.session, plan.intra_op_threads = session, opts.intra_op_threads
        plan.inline = plan.auto_batching = False
        plan.concurrent_session, plan.instances = None, 0
    return plan
