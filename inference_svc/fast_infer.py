"""ModelInfer without protobuf objects on the hot path: requests recognised by their bytes, responses written as bytes.

A client sends the same model the same request again and again, except for its tensor bytes: with protobuf's
field order (``raw_input_contents``, field 7, is the last field of ``ModelInferRequest``), the serialized request
is a *header* (model name, version, input names, datatypes, shapes, requested outputs) followed by one
``raw_input_contents`` field per input, whose lengths follow from the shapes. ``RequestMemo`` remembers the header
of a request that was parsed and accepted the ordinary way, together with what the checks concluded (the model
version, the inputs' dtypes and shapes, the requested outputs, the batch element count); a later request whose
bytes are that header followed by fields of exactly the same tags and lengths is the same request with other
tensor values: its inputs are zero-copy views into the received bytes, and nothing is parsed or checked again.
Every other request (other fields, shared memory, BYTES tensors, typed contents, a request id, an unknown field
order) takes the ordinary path. Field accesses on a parsed ``upb`` message cost 0.3-1.4 us each (and iterating a
repeated field raises and formats an IndexError at its end); a small model's request made ~40 of them.

``encode_response`` writes a ``ModelInferResponse`` with its outputs in ``raw_output_contents`` as the bytes
``SerializeToString`` would produce (tested byte for byte), the output metadata cached per (names, dtypes,
shapes), the tensor bytes joined in once.

``add_inference_servicer`` registers the KServe servicer with ``ModelInfer`` taking the request bytes
(``request_deserializer=None``) and answering either bytes or a message. Never imports onnxruntime.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
import numpy as np

from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc

SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = "ModelInfer"
RAW_INPUT_TAG = b"\x3a"  # field 7 (raw_input_contents), wire type 2
MAX_ENTRIES = 64
"""Request headers remembered per servicer; one more clears them (a client changing shapes all the time)."""


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


@dataclass(frozen=True)
class Remembered:
    """A request header and what the ordinary path concluded about it."""

    header: bytes
    marks: tuple[tuple[int, bytes], ...]
    """(position, bytes) the rest of the message must carry: each raw field's tag and length."""
    inputs: tuple[tuple[str, np.dtype, int, int, tuple[int, ...]], ...]
    """(name, dtype, element count, offset of its bytes, shape) per input."""
    model_name: str
    model_version: str
    mv: weakref.ref
    """The model version the request reached (weakly: an unloaded version is not kept alive by this memo)."""
    requested: list[str]
    elements: int


class RequestMemo:
    """Accepted request headers, by message length."""

    def __init__(self):
        self._by_size: dict[int, list[Remembered]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def match(self, data: bytes) -> Remembered | None:
        """The remembered request ``data`` repeats with other tensor bytes, or None."""
        for r in self._by_size.get(len(data), ()):
            if data.startswith(r.header) and all(data.startswith(m, pos) for pos, m in r.marks):
                return r
        return None

    def forget(self, r: Remembered) -> None:
        """Drop an entry (its model version is no longer the one the request reaches)."""
        entries = self._by_size.get(len(r.header) + sum(len(m) for _, m in r.marks)
                                    + sum(n * dt.itemsize for _, dt, n, _, _ in r.inputs), [])
        if r in entries:
            entries.remove(r)
            self._count -= 1

    def learn(self, data: bytes, request: pb.ModelInferRequest, inputs: Mapping[str, np.ndarray], mv,
              requested: list[str], elements: int) -> None:
        """Remember ``request`` (parsed from ``data``, accepted, its numeric ``inputs`` decoded from raw contents)
        when its raw contents are the message's last fields; anything else is not remembered."""
        raws = request.raw_input_contents
        tensors = request.inputs
        if request.id or not raws or len(raws) != len(tensors):
            return
        tail = []
        for raw in raws:
            tail.append(RAW_INPUT_TAG + varint(len(raw)))
            tail.append(raw)
        tail_bytes = b"".join(tail)
        if len(tail_bytes) >= len(data) or not data.endswith(tail_bytes):
            return
        header = data[:len(data) - len(tail_bytes)]
        pos = len(header)
        marks, specs = [], []
        for t, raw in zip(tensors, raws, strict=True):
            arr = inputs.get(t.name)
            if arr is None or arr.dtype.kind in "OSU" or arr.nbytes != len(raw):
                return
            mark = RAW_INPUT_TAG + varint(len(raw))
            marks.append((pos, mark))
            pos += len(mark)
            specs.append((t.name, arr.dtype, arr.size, pos, arr.shape))
            pos += len(raw)
        if self._count >= MAX_ENTRIES:
            self._by_size.clear()
            self._count = 0
        self._by_size.setdefault(len(data), []).append(Remembered(
            header, tuple(marks), tuple(specs), request.model_name, request.model_version, weakref.ref(mv), list(requested),
            elements))
        self._count += 1


def views(data: bytes, r: Remembered) -> dict[str, np.ndarray]:
    """The inputs of a request ``r`` matched: zero-copy views into ``data``.

    A view may not be aligned to its element size (where the tensor starts in the message depends on the header's
    length); onnxruntime reads such arrays correctly (tested: same outputs as from an aligned copy), so no copy is
    made (a 224x224x3 FP32 image is 602 KB)."""
    return {name: np.frombuffer(data, dtype=dt, count=n, offset=offset).reshape(shape)
            for name, dt, n, offset, shape in r.inputs}


class ResponseEncoder:
    """``ModelInferResponse`` bytes for numeric outputs; the output metadata cached per names, dtypes, shapes."""

    def __init__(self):
        self._heads: dict[tuple[str, str], bytes] = {}
        self._metas: dict[tuple, bytes] = {}

    def encode(self, model_name: str, model_version: str, outputs: Mapping[str, np.ndarray],
               request_id: str = "") -> bytes | None:
        """The serialized response, or None when an output is not a native numeric array (use the codec)."""
        key = []
        arrays = []
        for name, a in outputs.items():
            if type(a) is not np.ndarray or a.dtype not in codec._NATIVE_DATATYPES:
                return None
            key.append((name, a.dtype, a.shape))
            arrays.append(a if a.flags.c_contiguous else np.ascontiguousarray(a))
        key = tuple(key)
        meta = self._metas.get(key)
        if meta is None:
            if len(self._metas) >= MAX_ENTRIES:
                self._metas.clear()
            meta = self._metas[key] = b"".join(_output_meta(name, dt, shape) for name, dt, shape in key)
        head = self._heads.get((model_name, model_version))
        if head is None:
            if len(self._heads) >= MAX_ENTRIES:
                self._heads.clear()
            head = self._heads[(model_name, model_version)] = (
                (_field(b"\x0a", model_name.encode()) if model_name else b"")
                + (_field(b"\x12", model_version.encode()) if model_version else b""))
        parts = [head]
        if request_id:
            parts.append(_field(b"\x1a", request_id.encode()))
        parts.append(meta)
        for a in arrays:
            parts.append(b"\x32" + varint(a.nbytes))
            parts.append(memoryview(a).cast("B") if a.ndim and a.size else a.tobytes())
        return b"".join(parts)


def _output_meta(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """One ``outputs`` entry (field 5): name, datatype, packed shape."""
    body = _field(b"\x0a", name.encode()) if name else b""
    body += _field(b"\x12", codec._NATIVE_DATATYPES[dtype].encode())
    if shape:
        body += _field(b"\x1a", b"".join(varint(d) for d in shape))
    return _field(b"\x2a", body)


def serialize_response(response) -> bytes:
    """ModelInfer's response serializer: bytes written by ``ResponseEncoder`` go out as they are."""
    return response if type(response) is bytes else response.SerializeToString()


def raw_model_infer(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """ModelInfer's handler taking the request bytes and answering bytes or a message."""
    return grpc.unary_unary_rpc_method_handler(handler.unary_unary, request_deserializer=None,
                                               response_serializer=serialize_response)


class _RawModelInferGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler):
        self._inner = inner

    def service(self, handler_call_details):
        handler = self._inner.service(handler_call_details)
        if handler is not None and handler_call_details.method == f"/{SERVICE}/{MODEL_INFER}":
            return raw_model_infer(handler)
        return handler


class RawModelInfer:
    """Passes a generated registration on to ``server`` with ModelInfer's handler replaced (request bytes in,
    bytes or a message out), in the generic handler and among the registered methods alike. Which methods become
    grpc.aio registered methods is the runtime's choice (``Service.hot_methods``: ModelInfer alone here)."""

    def __init__(self, server):
        self._server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_RawModelInferGeneric(h) for h in handlers))

    def add_registered_method_handlers(self, service_name: str, handlers: dict) -> None:
        if service_name == SERVICE and MODEL_INFER in handlers:
            handlers = {**handlers, MODEL_INFER: raw_model_infer(handlers[MODEL_INFER])}
        self._server.add_registered_method_handlers(service_name, handlers)

    def __getattr__(self, name):
        return getattr(self._server, name)


def add_inference_servicer(servicer, server) -> None:
    """``add_GRPCInferenceServiceServicer_to_server`` with ModelInfer on request bytes (see the module doc)."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, RawModelInfer(server))
