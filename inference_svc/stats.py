"""Per model-version inference statistics, accumulated as Triton reports them.

Each request counts once (success or fail, with its total duration) and its queue and compute
durations; each model execution counts once per batch (``execution_count``) and in the
``batch_stats`` of its batch size. ``inference_count`` counts batch elements, so with dynamic
batching ``execution_count < inference_count``. Updated only from the event loop thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    """A cumulative (count, nanoseconds) pair, Triton's StatisticDuration."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        """Add one (or ``count``) occurrence(s) lasting ``ns`` in total."""
        self.count += count
        self.ns += int(ns)


@dataclass
class BatchStats:
    """Per-batch-size compute durations."""
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class VersionStats:
    """Everything ModelStatistics reports for one model version."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int,
                         requests: list[tuple[int, int]]) -> None:
        """One model execution of ``batch_size`` elements serving ``requests`` = [(elements, queue_ns)]."""
        self.execution_count += 1
        b = self.batches.get(batch_size)
        if b is None:  # not setdefault: that would build a BatchStats on every execution
            b = self.batches[batch_size] = BatchStats()
        b.compute_input.add(input_ns)
        b.compute_infer.add(infer_ns)
        b.compute_output.add(output_ns)
        for elements, queue_ns in requests:
            self.inference_count += elements
            self.queue.add(queue_ns)
            # Triton attributes the batch's compute time to every request in it.
            self.compute_input.add(input_ns)
            self.compute_infer.add(infer_ns)
            self.compute_output.add(output_ns)
        self.last_inference_ms = int(time.time() * 1000)

    def record_single(self, elements: int, infer_ns: int, queue_ns: int) -> None:
        """``record_execution(elements, 0, infer_ns, 0, [(elements, queue_ns)])`` (one request run alone, inline),
        without its per-call objects: what an MLP request pays on every call."""
        self.execution_count += 1
        b = self.batches.get(elements)
        if b is None:
            b = self.batches[elements] = BatchStats()
        b.compute_input.count += 1
        b.compute_infer.count += 1
        b.compute_infer.ns += infer_ns
        b.compute_output.count += 1
        self.inference_count += elements
        self.queue.count += 1
        self.queue.ns += queue_ns
        self.compute_input.count += 1
        self.compute_infer.count += 1
        self.compute_infer.ns += infer_ns
        self.compute_output.count += 1
        self.last_inference_ms = int(time.time() * 1000)

    def record_request(self, ok: bool, total_ns: int) -> None:
        """The end of one request (success or failure) with its total duration."""
        (self.success if ok else self.fail).add(total_ns)
