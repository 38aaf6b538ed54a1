"""A caller's ONNX model read once in a sniffer process before onnxruntime loads it in the service.

Models a caller placed (``Artifacts.Upload`` or a pull, then ``LoadModel``) are parsed first in a
sniffer subprocess (``modelport.runtime.sniffing``) under its memory bound: a protobuf built to
make a parser allocate without end (a few bytes per empty node, ~100 bytes of memory each in
onnxruntime) is INVALID_ARGUMENT there, and never reaches onnxruntime in the serving process.
Anything else -- a valid model, or a file that is not ONNX at all -- goes on to onnxruntime, whose
messages stay what they are. The operator's repository models are not checked this way.
This module never imports grpc.
"""

from __future__ import annotations

from modelport.runtime.sniffing import bounded_read


def check_onnx(progress, path: str) -> None:
    """Parse the ONNX graph at ``path`` (not its external data) under the sniffer's memory bound."""
    import onnx

    with bounded_read(path):
        try:
            onnx.load_model(path, load_external_data=False)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - not ONNX, or malformed: onnxruntime reports it as before
            if "alloc failed" in str(e).lower():  # upb's arena reached the bound
                raise MemoryError(str(e)) from None
