"""The converter's sniff, run in a sniffer subprocess (``modelport.runtime.sniffing``), never in the service.

Before a job is queued the source's format is told from its content (``formats.detect_format``: a
zip's central directory, an ONNX protobuf parse, a TFLite flatbuffer walk, tar headers) and an
archive (SavedModel, ONNX with external data) is unpacked with its caps. These read untrusted
uploaded bytes, so they run here, under a memory bound proportional to the file; the messages
are the ones ``detect_format`` and the archive checks give.
"""

from __future__ import annotations

from modelport import formats
from modelport.runtime.sniffing import bounded_read
from modelport.store import ArtifactStore


def sniff(progress, store_root: str, digest: str) -> str:
    """The source format of a stored artifact (and its archive unpacked once in the store)."""
    from modelport.conversion.convert import source_path

    store = ArtifactStore(store_root)
    path = store.path(digest)
    with bounded_read(path):
        fmt = formats.detect_format(path)
        if formats.is_archive(path):  # SavedModel, ONNX with external data: traversal/size checks, once
            source_path(store, digest, fmt)
    return fmt
