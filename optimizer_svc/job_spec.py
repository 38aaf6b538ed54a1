"""From an OptimizeRequest to a worker job: fast validation, the cache key, the worker pool.

Runs in the service process (no TensorFlow): technique names, options, output format and the
model's format are checked before a worker is started, so a bad request fails at once with
INVALID_ARGUMENT. This module never imports grpc.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from typing import Any

from modelport.errors import InvalidArgument
from modelport.jobs import JobCache, job_key
from modelport.v1 import artifacts_pb2, jobs_pb2, optimizer_pb2
from modelport.workers import WorkerPool
from optimizer_svc.jobs import GOALS, sniff_format
from optimizer_svc.techniques import parse_options, plan

JOB_VERSION = "optimizer-2"
_VERSIONED = ("onnxruntime", "onnx", "tensorflow", "tf-keras", "tensorflow-model-optimization", "tf2onnx")


def _versions() -> dict[str, str]:
    out = {"job": JOB_VERSION}
    for name in _VERSIONED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


@dataclass
class JobSpec:
    key: str
    kwargs: dict[str, Any]
    finish: Any


class OptimizeJobs:
    """The optimizer's worker pool and result cache, and the request -> job translation."""

    def __init__(self, service):
        s = service.settings
        self.service = service
        self.cache = JobCache(s.store)
        # TFMOT needs tf-keras, a process-wide choice: every optimizer worker runs with it.
        self.pool = WorkerPool(size=s.max_concurrent_jobs, max_jobs_per_worker=s.max_jobs_per_worker,
                               env={"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
                               preload=("numpy", "onnx", "onnxruntime"), name="optimizer-worker")
        self.versions = _versions()

    @staticmethod
    def refs(req: optimizer_pb2.OptimizeRequest) -> list[artifacts_pb2.ArtifactRef]:
        """Every artifact the request names (the model is required)."""
        if not req.model.digest:
            raise InvalidArgument("OptimizeRequest.model is required: upload the ONNX or Keras model and pass its ref")
        return [r for r in (req.model, req.calibration_data, req.train_data, req.eval_data, req.student) if r.digest]

    def prepare(self, req: optimizer_pb2.OptimizeRequest) -> JobSpec:
        """Validate what can be validated without TensorFlow and build the job's key and kwargs."""
        store = self.service.store
        options = parse_options(dict(req.options))
        if (req.output_format or "onnx").lower() not in ("onnx", "tflite"):
            raise InvalidArgument(f"output_format {req.output_format!r} is not supported; use onnx or tflite")
        if req.budget.max_drop < 0:
            raise InvalidArgument(f"budget.max_drop must be >= 0, got {req.budget.max_drop:g}")
        if req.threads < 0:
            raise InvalidArgument(f"threads must be >= 0 (0 = onnxruntime default), got {req.threads}")
        try:
            from modelport.providers import normalize

            normalize(req.execution_provider)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        fmt = sniff_format(store.path(req.model.digest), parse=False)
        plan(list(req.techniques), fmt, has_train=bool(req.train_data.digest),
             has_inputs=any(r.digest for r in (req.calibration_data, req.train_data, req.eval_data)),
             has_student=bool(req.student.digest))
        digests = [r.digest for r in (req.model, req.calibration_data, req.train_data, req.eval_data, req.student)]
        norm = {"techniques": [t.strip().lower() for t in req.techniques], "goal": GOALS.get(req.goal, "latency"),
                "budget": [req.budget.max_drop, req.budget.relative], "ep": req.execution_provider or "cpu",
                "threads": req.threads, "options": options, "output_format": (req.output_format or "onnx").lower(),
                "int8_search_s": self.service.settings.int8_search_s}
        key = job_key("optimize", digests, norm, self.versions)
        clean = optimizer_pb2.OptimizeRequest()
        clean.CopyFrom(req)
        origin = self.service.address

        def finish(result: jobs_pb2.OptimizeResult) -> None:
            # Cached results were stored by some earlier run: refs always name this service.
            for ref in [result.artifact, result.baseline.artifact, *[c.artifact for c in result.candidates]]:
                if ref.digest:
                    ref.origin = origin

        kwargs = {"store_root": str(store.root), "request": clean.SerializeToString(), "origin": origin,
                  "int8_search_s": float(self.service.settings.int8_search_s)}
        return JobSpec(key, kwargs, finish)
