"""Worker-side job functions of the converter (run in ``WorkerPool`` subprocesses with TensorFlow).

Each takes plain values (store root, serialized request bytes) and returns serialized protobuf
bytes, so nothing but bytes crosses the process boundary.
"""

from __future__ import annotations

from modelport.conversion.convert import convert_model, inspect_model
from modelport.store import ArtifactStore
from modelport.v1 import converter_pb2


def convert(progress, store_root: str, request: bytes, max_artifact_bytes: int = 0, onnx2tf_python: str = "",
            onnx2torch_python: str = "") -> bytes:
    """Run one ConvertRequest; returns ConvertResult bytes."""
    store = ArtifactStore(store_root, max_artifact_bytes)
    req = converter_pb2.ConvertRequest.FromString(request)
    return convert_model(store, req, progress, onnx2tf_python, onnx2torch_python).SerializeToString()


def inspect(progress, store_root: str, digest: str, trust_remote_code: bool = False) -> bytes:
    """Inspect one stored model; returns ModelInfo bytes."""
    store = ArtifactStore(store_root)
    return inspect_model(store, digest, trust_remote_code, progress).SerializeToString()
