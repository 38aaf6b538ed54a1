"""From an OptimizeRequest to a worker job: fast validation, the job key and the worker call.

Runs in the service process (no TensorFlow): technique names, options, output format and the
model's format are checked before a worker is started, so a bad request fails at once with
INVALID_ARGUMENT. The model's format is read in a sniffer subprocess (``optimizer_svc.sniff``):
the service process never parses uploaded bytes. This module never imports grpc.
"""

from __future__ import annotations

from modelport.errors import InvalidArgument
from modelport.memory import available_bytes
from modelport.runtime.job_cache import Job, job_key
from modelport.trust import remote_code_allowed
from modelport.v1 import artifacts_pb2, optimizer_pb2
from optimizer_svc.admission import check_request
from optimizer_svc.technique_options import parse_options, plan
from optimizer_svc.worker import GOALS


def request_refs(req: optimizer_pb2.OptimizeRequest) -> list[artifacts_pb2.ArtifactRef]:
    """Every artifact the request names (the model is required)."""
    if not req.model.digest:
        raise InvalidArgument("OptimizeRequest.model is required: upload the ONNX or Keras model and pass its ref")
    return [r for r in (req.model, req.calibration_data, req.train_data, req.eval_data, req.student) if r.digest]


async def plan_optimize(service, req: optimizer_pb2.OptimizeRequest) -> Job:
    """Validate what can be validated without TensorFlow and build the job (key, worker call)."""
    store = service.store
    trusted = remote_code_allowed(req.trust_remote_code, service.settings.allow_remote_code, service.name)
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
    fmt = await service.sniff(req.model.digest)  # in a sniffer process; an archive is unpacked there
    the_plan = plan(list(req.techniques), fmt, has_train=bool(req.train_data.digest),
                    has_inputs=any(r.digest for r in (req.calibration_data, req.train_data, req.eval_data)),
                    has_student=bool(req.student.digest))
    # Refused before a worker starts when the model or a named technique cannot fit in the memory left (from
    # the stored file's size only: nothing is parsed in the service process).
    check_request(the_plan.run, fmt, store.path(req.model.digest), the_plan.auto,
                  available_bytes(service.settings.memory_limit_bytes or None))
    digests = [r.digest for r in (req.model, req.calibration_data, req.train_data, req.eval_data, req.student)]
    norm = {"techniques": [t.strip().lower() for t in req.techniques], "goal": GOALS.get(req.goal, "latency"),
            "budget": [req.budget.max_drop, req.budget.relative], "ep": req.execution_provider or "cpu",
            "threads": req.threads, "options": options, "output_format": (req.output_format or "onnx").lower(),
            "trust_remote_code": trusted, "int8_search_s": service.settings.int8_search_s}
    key = job_key("optimize", digests, norm, service.versions)
    kwargs = {"store_root": str(store.root), "request": req.SerializeToString(), "origin": service.address,
              "int8_search_s": float(service.settings.int8_search_s)}
    return Job(key, "optimizer_svc.worker:optimize_job", kwargs)
