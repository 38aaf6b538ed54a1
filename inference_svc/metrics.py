"""Prometheus metrics of the inference service (served on the runtime's metrics port).

Counters and histograms are ``modelport.fast_metrics`` ones: they are updated on every request, and
``prometheus_client``'s own cost several microseconds per update (same names, labels and output)."""

from __future__ import annotations

from prometheus_client import Gauge

from modelport.fast_metrics import FastCounter, FastHistogram

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                    5, 10, 30)

REQUESTS = FastCounter(
    "modelport_inference_requests_total",
    "Inference requests by model, version and status (OK or the gRPC status name).",
    ["model", "version", "status"],
)
QUEUE_SECONDS = FastHistogram(
    "modelport_inference_queue_seconds",
    "Time a request waited in the model's scheduling queue.",
    ["model", "version"],
    _LATENCY_BUCKETS,
)
COMPUTE_SECONDS = FastHistogram(
    "modelport_inference_compute_seconds",
    "Duration of one model execution (session.run of a whole batch).",
    ["model", "version"],
    _LATENCY_BUCKETS,
)
REQUEST_SECONDS = FastHistogram(
    "modelport_inference_request_seconds",
    "Total time of a request inside the service (queue + compute + split).",
    ["model", "version"],
    _LATENCY_BUCKETS,
)
IDLE_SPIN_SECONDS = FastCounter(
    "modelport_inference_idle_spin_seconds_total",
    "Wall time the event loop spent polling between requests instead of sleeping (--idle-spin-us): a core kept "
    "busy meanwhile.",
    [],
)
BATCH_SIZE = FastHistogram(
    "modelport_inference_batch_size",
    "Elements per model execution (after dynamic batching).",
    ["model", "version"],
    (1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PENDING = Gauge(
    "modelport_inference_pending_requests",
    "Requests accepted and waiting to start (what max_queue_size bounds); Triton's "
    "nv_inference_pending_request_count. A queue-depth signal for autoscaling.",
    ["model", "version"],
)

# Which VersionMetrics feeds each (model, version) gauge: a reloaded version replaces the old one's.
_PENDING_OWNER: dict[tuple[str, str], object] = {}


class VersionMetrics:
    """The labelled children of one model version, looked up once (labels() costs a lock + dict)."""

    def __init__(self, model: str, version: str):
        self.model, self.version = model, version
        self._ok = REQUESTS.labels(model, version, "OK")
        self._request = REQUEST_SECONDS.labels(model, version)
        self._queue = QUEUE_SECONDS.labels(model, version)
        self._compute = COMPUTE_SECONDS.labels(model, version)
        self._batch = BATCH_SIZE.labels(model, version)

    def watch_pending(self, count) -> None:
        """Report ``count()`` (read at scrape time) as this version's pending-request gauge."""
        PENDING.labels(self.model, self.version).set_function(count)
        _PENDING_OWNER[(self.model, self.version)] = self

    def close(self) -> None:
        """Drop this version's pending-request gauge (the version is unloaded), unless a reload of the
        same version has taken it over meanwhile."""
        if _PENDING_OWNER.get((self.model, self.version)) is self:
            del _PENDING_OWNER[(self.model, self.version)]
            PENDING.remove(self.model, self.version)

    def request(self, status: str, seconds: float) -> None:
        """Count one finished request and its total time."""
        (self._ok if status == "OK" else REQUESTS.labels(self.model, self.version, status)).inc()
        self._request.observe(seconds)

    def execution(self, batch_size: int, compute_s: float, queue_s: list[float]) -> None:
        """One model execution: batch size, compute time and each request's queue time."""
        self._batch.observe(batch_size)
        self._compute.observe(compute_s)
        for s in queue_s:
            self._queue.observe(s)

    def single(self, batch_size: int, compute_s: float, queue_s: float) -> None:
        """``execution`` of one request run alone."""
        self.execution(batch_size, compute_s, (queue_s,))


def observe_request(model: str, version: str, status: str, seconds: float) -> None:
    """Count one finished request and its total time."""
    REQUESTS.labels(model, version, status).inc()
    REQUEST_SECONDS.labels(model, version).observe(seconds)


def observe_execution(model: str, version: str, batch_size: int, compute_s: float, queue_s: list[float]) -> None:
    """Record one model execution: its batch size, compute time and each request's queue time."""
    BATCH_SIZE.labels(model, version).observe(batch_size)
    COMPUTE_SECONDS.labels(model, version).observe(compute_s)
    q = QUEUE_SECONDS.labels(model, version)
    for s in queue_s:
        q.observe(s)
