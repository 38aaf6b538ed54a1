"""numpy <-> KServe v2 (Open Inference Protocol) tensors, written once for server and clients.

Decodes request inputs given as ``raw_input_contents`` (little-endian bytes; BYTES as 4-byte
little-endian length + bytes per element, as Triton does) or typed ``contents``; encodes outputs
always as ``raw_output_contents`` (tritonclient reads numeric outputs only from there). FP16 has
no typed field and travels raw only; BOOL is one byte per element. protobuf + numpy only:
no grpc, so the CLI and SDK use it too. Bad tensors raise ``modelport.errors.InvalidArgument``
naming the tensor and what was expected.

Triton's system shared memory extension: ``shm_ref`` / ``set_shm`` read and write the tensor
parameters that point into a registered region, ``decode_inputs_shm`` / ``make_shm_infer_request`` and
``make_infer_response(in_shm=...)`` build and parse such requests (the server maps the regions).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from modelport.dtypes import KSERVE_TO_NUMPY, to_kserve
from modelport.errors import InvalidArgument
from modelport.kserve.v2 import grpc_service_pb2 as pb

# Typed-contents field per datatype (FP16 / BF16 have none: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def numpy_dtype(datatype: str, tensor: str = "") -> np.dtype:
    """numpy dtype (little-endian) of a KServe datatype; InvalidArgument when unknown."""
    try:
        dt = KSERVE_TO_NUMPY[datatype.upper()]
    except KeyError:
        raise InvalidArgument(
            f"input '{tensor}': unknown datatype {datatype!r}; use one of {', '.join(KSERVE_TO_NUMPY)}",
            {"tensor": tensor, "datatype": datatype},
        ) from None
    return dt if dt.kind == "O" else dt.newbyteorder("<")


def element_count(shape: Iterable[int]) -> int:
    """Number of elements of a shape."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _check_shape(name: str, shape) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidArgument(
            f"input '{name}': shape {list(dims)} has a negative dimension; send the concrete shape of the data",
            {"tensor": name},
        )
    return dims


# --- BYTES ------------------------------------------------------------------------------------

def serialize_bytes_tensor(values) -> bytes:
    """Triton's raw BYTES form: for each element (row-major) a uint32 LE length then the bytes."""
    arr = np.asarray(values, dtype=object).reshape(-1)
    parts: list[bytes] = []
    for v in arr:
        if isinstance(v, str):
            b = v.encode("utf-8")
        elif isinstance(v, (bytes, bytearray, memoryview)):
            b = bytes(v)
        else:
            b = str(v).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes_tensor(raw: bytes, count: int | None = None, name: str = "") -> np.ndarray:
    """Parse Triton's raw BYTES form into a 1-D object array of bytes.

    With ``count`` the element count must match exactly (InvalidArgument otherwise).
    """
    out: list[bytes] = []
    mv = memoryview(raw)
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 4 > end:
            raise InvalidArgument(
                f"input '{name}': BYTES raw content is truncated at byte {pos} (a 4-byte length prefix "
                "is expected before each element)",
                {"tensor": name},
            )
        (length,) = struct.unpack_from("<I", mv, pos)
        pos += 4
        if pos + length > end:
            raise InvalidArgument(
                f"input '{name}': BYTES element {len(out)} declares {length} bytes but only {end - pos} remain",
                {"tensor": name},
            )
        out.append(bytes(mv[pos:pos + length]))
        pos += length
    if count is not None and len(out) != count:
        raise InvalidArgument(
            f"input '{name}': BYTES raw content holds {len(out)} elements but its shape needs {count}",
            {"tensor": name},
        )
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    return arr


# --- decoding ---------------------------------------------------------------------------------

def _tensor_from_buffer(name: str, datatype: str, shape, buf, size: int, what: str, fix: str = "") -> np.ndarray:
    """A tensor over ``buf`` (``size`` bytes), checked against shape x dtype; ``what``/``fix`` word the error.

    Numeric tensors are zero-copy views (copied only when ``buf`` breaks element alignment); BYTES use
    the length-prefixed form.
    """
    dims = _check_shape(name, shape)
    dt = numpy_dtype(datatype, name)
    n = element_count(dims)
    if dt.kind == "O":
        return deserialize_bytes_tensor(buf, n, name).reshape(dims)
    expected = n * dt.itemsize
    if size != expected:
        raise InvalidArgument(
            f"input '{name}': {what} but shape {list(dims)} of {datatype.upper()} needs {expected} bytes "
            f"({n} elements x {dt.itemsize})" + (f"; {fix.format(expected=expected)}" if fix else ""),
            {"tensor": name, "expected_bytes": str(expected), "got_bytes": str(size)},
        )
    arr = np.frombuffer(buf, dtype=dt, count=n).reshape(dims)
    return arr if arr.flags.aligned else arr.copy()


def tensor_from_raw(name: str, datatype: str, shape, raw: bytes) -> np.ndarray:
    """One input tensor from its raw bytes, validating the byte length against shape x dtype."""
    return _tensor_from_buffer(name, datatype, shape, raw, len(raw), f"raw content has {len(raw)} bytes")


def tensor_from_contents(name: str, datatype: str, shape, contents: pb.InferTensorContents) -> np.ndarray:
    """One input tensor from typed contents (e.g. ``fp32_contents``)."""
    dims = _check_shape(name, shape)
    dtype_name = datatype.upper()
    dt = numpy_dtype(dtype_name, name)
    field = CONTENTS_FIELD.get(dtype_name)
    if field is None:
        raise InvalidArgument(
            f"input '{name}': {dtype_name} has no typed contents field; send it in raw_input_contents",
            {"tensor": name},
        )
    values = getattr(contents, field)
    n = element_count(dims)
    if len(values) != n:
        raise InvalidArgument(
            f"input '{name}': {field} has {len(values)} elements but shape {list(dims)} needs {n}",
            {"tensor": name},
        )
    if dt.kind == "O":
        arr = np.empty(n, dtype=object)
        arr[:] = list(values)
        return arr.reshape(dims)
    return np.asarray(values, dtype=dt).reshape(dims)


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """All inputs of a ModelInferRequest as numpy arrays (raw or typed, never mixed)."""
    raws = request.raw_input_contents
    if raws and len(raws) != len(request.inputs):
        raise InvalidArgument(
            f"request has {len(request.inputs)} inputs but {len(raws)} raw_input_contents; send one raw "
            "buffer per input, in input order",
        )
    out: dict[str, np.ndarray] = {}
    for i, t in enumerate(request.inputs):
        if t.name in out:
            raise InvalidArgument(f"input '{t.name}' appears twice in the request", {"tensor": t.name})
        if raws:
            if t.HasField("contents") and t.contents.ByteSize():
                raise InvalidArgument(
                    f"input '{t.name}': both typed contents and raw_input_contents given; use one form",
                    {"tensor": t.name},
                )
            out[t.name] = tensor_from_raw(t.name, t.datatype, t.shape, raws[i])
        else:
            out[t.name] = tensor_from_contents(t.name, t.datatype, t.shape, t.contents)
    return out


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """All outputs of a ModelInferResponse (raw_output_contents or typed contents)."""
    out: dict[str, np.ndarray] = {}
    raws = response.raw_output_contents
    for i, t in enumerate(response.outputs):
        if raws:
            out[t.name] = tensor_from_raw(t.name, t.datatype, t.shape, raws[i])
        else:
            out[t.name] = tensor_from_contents(t.name, t.datatype, t.shape, t.contents)
    return out


# --- encoding ---------------------------------------------------------------------------------

def to_raw(arr: np.ndarray) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw little-endian bytes) of a numpy array; str/bytes arrays are BYTES."""
    a = np.asarray(arr)
    datatype = to_kserve(a.dtype)
    if datatype == "BYTES":
        return datatype, list(a.shape), serialize_bytes_tensor(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return datatype, list(a.shape), np.ascontiguousarray(a).tobytes()


def make_infer_request(model_name: str, inputs: Mapping[str, np.ndarray], outputs: Iterable[str] | None = None,
                       model_version: str = "", request_id: str = "", raw: bool = True) -> pb.ModelInferRequest:
    """A ModelInferRequest for named numpy inputs (raw by default, typed with ``raw=False``)."""
    req = pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=request_id)
    for name, arr in inputs.items():
        datatype, shape, data = to_raw(arr)
        t = req.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            req.raw_input_contents.append(data)
        else:
            field = CONTENTS_FIELD.get(datatype)
            if field is None:
                raise ValueError(f"{datatype} has no typed contents; send input '{name}' raw")
            flat = np.asarray(arr).reshape(-1)
            if datatype == "BYTES":
                vals = [v.encode() if isinstance(v, str) else bytes(v) for v in flat]
            else:
                vals = flat.tolist()
            getattr(t.contents, field).extend(vals)
    for name in outputs or ():
        req.outputs.add(name=name)
    return req


def make_infer_response(model_name: str, model_version: str, outputs: Mapping[str, np.ndarray],
                        request_id: str = "", in_shm: Iterable[str] = ()) -> pb.ModelInferResponse:
    """A ModelInferResponse carrying every output in raw_output_contents.

    Outputs named in ``in_shm`` were written to shared memory: as Triton does, they still get an
    ``outputs`` entry (name, datatype, shape) and an empty ``raw_output_contents`` entry, so the two
    lists stay aligned.
    """
    in_shm = frozenset(in_shm)
    resp = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for name, arr in outputs.items():
        if name in in_shm:
            a = np.asarray(arr)
            datatype, shape, data = to_kserve(a.dtype), list(a.shape), b""
        else:
            datatype, shape, data = to_raw(arr)
        resp.outputs.add(name=name, datatype=datatype, shape=shape)
        resp.raw_output_contents.append(data)
    return resp


# --- system shared memory (Triton's extension) -------------------------------------------------
# A tensor whose ``parameters`` carry ``shared_memory_region`` (string), ``shared_memory_byte_size``
# (int64) and optionally ``shared_memory_offset`` (int64) lives in a registered region instead of the
# message, exactly as tritonclient's ``InferInput.set_shared_memory`` / ``InferRequestedOutput.
# set_shared_memory`` set them. ``raw_input_contents`` then holds only the other inputs, in order.

SHM_REGION = "shared_memory_region"
SHM_BYTE_SIZE = "shared_memory_byte_size"
SHM_OFFSET = "shared_memory_offset"


@dataclass(frozen=True)
class ShmRef:
    """Where a tensor lives in shared memory: region name, byte size and offset inside the region."""

    region: str
    byte_size: int
    offset: int = 0


def _int_param(tensor, key: str, kind: str) -> int:
    p = tensor.parameters[key]
    which = p.WhichOneof("parameter_choice")
    if which not in ("int64_param", "uint64_param"):
        raise InvalidArgument(
            f"{kind} '{tensor.name}': parameter '{key}' must be an int64_param, got {which or 'no value'}; set it "
            "as tritonclient's set_shared_memory(region_name, byte_size, offset) does",
            {"tensor": tensor.name, "parameter": key},
        )
    value = getattr(p, which)
    if value < 0:
        raise InvalidArgument(f"{kind} '{tensor.name}': parameter '{key}' is {value}; it must be >= 0",
                              {"tensor": tensor.name, "parameter": key})
    return int(value)


def shm_ref(tensor, kind: str = "input") -> ShmRef | None:
    """The shared-memory reference of a request input or requested output (None when it has none).

    InvalidArgument when the parameters are incomplete or of the wrong type.
    """
    params = tensor.parameters
    if not params:
        return None
    if SHM_REGION not in params:
        stray = [k for k in (SHM_BYTE_SIZE, SHM_OFFSET) if k in params]
        if stray:
            raise InvalidArgument(
                f"{kind} '{tensor.name}': {', '.join(stray)} given without '{SHM_REGION}'; name the registered "
                "region too, or drop the shared memory parameters",
                {"tensor": tensor.name},
            )
        return None
    region = params[SHM_REGION]
    if region.WhichOneof("parameter_choice") != "string_param" or not region.string_param:
        raise InvalidArgument(
            f"{kind} '{tensor.name}': parameter '{SHM_REGION}' must be a non-empty string_param naming a "
            "registered region", {"tensor": tensor.name, "parameter": SHM_REGION})
    if SHM_BYTE_SIZE not in params:
        raise InvalidArgument(
            f"{kind} '{tensor.name}': '{SHM_REGION}' given without '{SHM_BYTE_SIZE}'; send the tensor's byte "
            "size in the region", {"tensor": tensor.name, "parameter": SHM_BYTE_SIZE})
    offset = _int_param(tensor, SHM_OFFSET, kind) if SHM_OFFSET in params else 0
    return ShmRef(region.string_param, _int_param(tensor, SHM_BYTE_SIZE, kind), offset)


def set_shm(tensor, ref: ShmRef) -> None:
    """Point a request input or requested output at shared memory (the parameters tritonclient sets)."""
    tensor.parameters[SHM_REGION].string_param = ref.region
    tensor.parameters[SHM_BYTE_SIZE].int64_param = int(ref.byte_size)
    if ref.offset:
        tensor.parameters[SHM_OFFSET].int64_param = int(ref.offset)


def uses_shm(request: pb.ModelInferRequest) -> bool:
    """Whether any input or requested output of a request carries parameters (shared memory candidates)."""
    return any(t.parameters for t in request.inputs) or any(o.parameters for o in request.outputs)


def byte_size(datatype: str, shape: Iterable[int]) -> int:
    """Bytes of a numeric tensor (shape x element size); ValueError for BYTES (size depends on the data)."""
    dt = numpy_dtype(datatype)
    if dt.kind == "O":
        raise ValueError("BYTES tensors have no fixed byte size; serialize them (serialize_bytes_tensor) and "
                         "use len() of the result")
    return element_count(shape) * dt.itemsize


def tensor_from_shm(name: str, datatype: str, shape, buf, ref: ShmRef) -> np.ndarray:
    """One input tensor read from a shared-memory view of exactly ``ref.byte_size`` bytes.

    Numeric tensors are zero-copy views (copied only when the offset breaks element alignment); the
    byte size must equal shape x element size. BYTES use the raw length-prefixed form.
    """
    return _tensor_from_buffer(name, datatype, shape, buf, ref.byte_size,
                               f"shared_memory_byte_size is {ref.byte_size}",
                               "set shared_memory_byte_size to {expected}")


def decode_inputs_shm(request: pb.ModelInferRequest, view) -> dict[str, np.ndarray]:
    """All inputs of a request some of whose inputs live in shared memory.

    ``view(ref, tensor_name)`` returns the region bytes a ShmRef names (a memoryview of exactly
    ``ref.byte_size`` bytes). As in Triton, ``raw_input_contents`` holds the non-shared-memory inputs
    only, in input order.
    """
    raws = request.raw_input_contents
    out: dict[str, np.ndarray] = {}
    index = 0
    for t in request.inputs:
        if t.name in out:
            raise InvalidArgument(f"input '{t.name}' appears twice in the request", {"tensor": t.name})
        ref = shm_ref(t, "input")
        has_contents = t.HasField("contents") and t.contents.ByteSize() > 0
        if ref is not None:
            if has_contents:
                raise InvalidArgument(
                    f"input '{t.name}': both shared memory parameters and typed contents given; use one",
                    {"tensor": t.name})
            out[t.name] = tensor_from_shm(t.name, t.datatype, t.shape, view(ref, t.name), ref)
        elif has_contents:
            if raws:
                raise InvalidArgument(
                    f"input '{t.name}': typed contents given while the request uses raw_input_contents; use "
                    "one form for the inputs not in shared memory", {"tensor": t.name})
            out[t.name] = tensor_from_contents(t.name, t.datatype, t.shape, t.contents)
        elif index < len(raws):
            out[t.name] = tensor_from_raw(t.name, t.datatype, t.shape, raws[index])
            index += 1
        else:
            raise InvalidArgument(
                f"input '{t.name}': no data (not in shared memory, no raw_input_contents entry left, no "
                "contents); send one raw buffer per input that is not in shared memory, in input order",
                {"tensor": t.name})
    if index != len(raws):
        raise InvalidArgument(
            f"request has {len(raws)} raw_input_contents but only {index} inputs outside shared memory; send "
            "one raw buffer per input that is not in shared memory, in input order")
    return out


def make_shm_infer_request(model_name: str, inputs: Mapping[str, tuple[str, Iterable[int], ShmRef]],
                           outputs: Mapping[str, ShmRef | None] | None = None, model_version: str = "",
                           request_id: str = "", raw_inputs: Mapping[str, np.ndarray] | None = None,
                           ) -> pb.ModelInferRequest:
    """A ModelInferRequest whose inputs (and outputs) live in registered shared-memory regions.

    ``inputs``: name -> (datatype, shape, ShmRef). ``outputs``: name -> ShmRef (written to the
    region) or None (returned in the message). ``raw_inputs``: further inputs sent in the message.
    Build it once and reuse it while shapes stay the same: only the region contents change.
    """
    req = pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=request_id)
    for name, (datatype, shape, ref) in inputs.items():
        set_shm(req.inputs.add(name=name, datatype=datatype, shape=[int(d) for d in shape]), ref)
    for name, arr in (raw_inputs or {}).items():
        datatype, shape, data = to_raw(arr)
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        req.raw_input_contents.append(data)
    for name, ref in (outputs or {}).items():
        o = req.outputs.add(name=name)
        if ref is not None:
            set_shm(o, ref)
    return req
