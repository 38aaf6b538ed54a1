"""Request checks and job keys for the converter, done before a job is queued (no TensorFlow).

Everything that can be decided without loading a model happens here: the source is present, its
format is detected from content and an archive (SavedModel, ONNX with external data) unpacks safely
-- both in a sniffer subprocess (``converter_svc.sniff``), since they parse uploaded bytes -- the
target is supported, options are in range. The job key covers input digests, normalized options
and tool versions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from modelport import formats
from modelport.conversion import onnx2tf_bridge, onnx2torch_bridge
from modelport.conversion.convert import DEFAULT_SAMPLES, check_opset
from modelport.errors import InvalidArgument
from modelport.parity import DEFAULT_ATOL, DEFAULT_RTOL, QuantTolerances
from modelport.runtime.job_cache import Job, job_key
from modelport.store import ArtifactStore
from modelport.trust import remote_code_allowed
from modelport.v1 import converter_pb2


@dataclass(frozen=True)
class ConvertPlan:
    """A checked request: detected source format, normalized target/options and the job to run."""

    source_format: str
    target: str
    options: dict
    job: Job


async def plan_convert(service, request: converter_pb2.ConvertRequest) -> ConvertPlan:
    """Validate a ConvertRequest whose artifacts are local and build its job; raises the error the client must see."""
    store: ArtifactStore = service.store
    onnx2tf_python = service.settings.onnx2tf_python
    # The one rule (modelport.trust): the request's flag counts only on a server that allows remote code.
    trusted = remote_code_allowed(request.trust_remote_code, service.settings.allow_remote_code, service.name)
    fmt = await service.sniff(request.source.digest)  # in a sniffer process; archives unpacked there
    target = formats.check_target(fmt, request.target_format)
    versions = dict(service.versions)
    onnx2torch_python = service.settings.onnx2torch_python
    if target == formats.PYTORCH:
        python = onnx2torch_bridge.onnx2torch_python(onnx2torch_python)
        if python is None:
            raise onnx2torch_bridge.unimplemented()
        versions.update(onnx2torch_bridge.tool_versions(python))
    elif fmt == formats.ONNX and target != formats.ONNX:
        python = onnx2tf_bridge.onnx2tf_python(onnx2tf_python)
        if python is None:
            raise onnx2tf_bridge.unimplemented(target)
        versions["onnx2tf"] = onnx2tf_bridge.onnx2tf_version(python)
    opset = check_opset(request.opset)
    if request.fixed_batch_size < 0:
        raise InvalidArgument(
            f"fixed_batch_size must be >= 0 (0 keeps the batch dynamic), got {request.fixed_batch_size}")
    p = request.parity
    if p.rtol < 0 or p.atol < 0 or p.num_samples < 0:
        raise InvalidArgument("parity rtol, atol and num_samples must be >= 0")
    options = {
        "target": target,
        "opset": opset if target == formats.ONNX or target == formats.PYTORCH and fmt != formats.ONNX else 0,
        "fixed_batch_size": int(request.fixed_batch_size),
        "trust_remote_code": trusted,
        "rtol": p.rtol or DEFAULT_RTOL,
        "atol": p.atol or DEFAULT_ATOL,
        "num_samples": 0 if p.samples.digest else (p.num_samples or DEFAULT_SAMPLES),
        "seed": 0 if p.samples.digest else int(p.seed),
        "allow_mismatch": bool(p.allow_mismatch),
        **dataclasses.asdict(QuantTolerances.from_options(p)),
    }
    digests = [request.source.digest] + ([p.samples.digest] if p.samples.digest else [])
    kwargs = {"store_root": str(store.root), "request": request.SerializeToString(),
              "max_artifact_bytes": service.settings.max_artifact_bytes, "onnx2tf_python": onnx2tf_python,
              "onnx2torch_python": onnx2torch_python}
    job = Job(job_key("convert", digests, options, versions), service.convert_job, kwargs)
    return ConvertPlan(fmt, target, options, job)
