"""The optimizer's sniff, run in a sniffer subprocess (``modelport.runtime.sniffing``), never in the service.

Before a job is queued the model's format is told from its content: an archive (ONNX with external
data, a generation folder) is unpacked with its caps, then ``worker.sniff_format`` parses an ONNX
file or reads a Keras file's header. These read untrusted uploaded bytes, so they run here, under a
memory bound proportional to the file; the messages are the ones the worker gives for the same model.
"""

from __future__ import annotations

from modelport.runtime.sniffing import bounded_read
from modelport.store import ArtifactStore


def sniff(progress, store_root: str, digest: str) -> str:
    """onnx | keras | generation for a stored model (an archive is unpacked once in the store)."""
    from optimizer_svc.worker import _model_path, sniff_format

    store = ArtifactStore(store_root)
    path = store.path(digest)
    with bounded_read(path):
        return sniff_format(_model_path(store, digest))
