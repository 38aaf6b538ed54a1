"""Worker-side job functions of the converter (run in ``WorkerPool`` subprocesses with TensorFlow).

The worker edge: each takes plain values (store root, the serialized request) and returns serialized
protobuf bytes, so nothing but bytes crosses the process boundary and the job cache keeps the wire
form. The conversion code below it sees only records (``modelport.runtime.job_codec`` translates).
"""

from __future__ import annotations

from modelport.conversion.convert import convert_model, inspect_model
from modelport.runtime import job_codec
from modelport.store import ArtifactStore
from modelport.v1 import converter_pb2


def convert(progress, store_root: str, request: bytes, max_artifact_bytes: int = 0, onnx2tf_python: str = "",
            onnx2torch_python: str = "") -> bytes:
    """Run one ConvertRequest; returns ConvertResult bytes."""
    store = ArtifactStore(store_root, max_artifact_bytes)
    job = job_codec.convert_job(converter_pb2.ConvertRequest.FromString(request))
    return job_codec.convert_result_bytes(convert_model(store, job, progress, onnx2tf_python, onnx2torch_python))


def inspect(progress, store_root: str, digest: str, trust_remote_code: bool = False) -> bytes:
    """Inspect one stored model; returns ModelInfo bytes."""
    store = ArtifactStore(store_root)
    return job_codec.model_info_bytes(inspect_model(store, digest, trust_remote_code, progress))
