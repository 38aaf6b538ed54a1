"""numpy <-> KServe v2 (Open Inference Protocol) tensors, written once for server and clients.

Decodes request inputs given as ``raw_input_contents`` (little-endian bytes; BYTES as 4-byte
little-endian length + bytes per element, as Triton does) or typed ``contents``; encodes outputs
always as ``raw_output_contents`` (tritonclient reads numeric outputs only from there). FP16 has
no typed field and travels raw only; BOOL is one byte per element. protobuf + numpy only:
no grpc, so the CLI and SDK use it too. Bad tensors raise ``modelport.errors.InvalidArgument``
naming the tensor and what was expected.

Tensors that live in Triton's system shared memory are handled in ``modelport.kserve.shm``;
``make_infer_response(in_shm=...)`` leaves their raw entries empty, as Triton does.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Iterable, Mapping

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
    dt = _WIRE_DTYPES.get(datatype)  # the common case, spelled as the protocol does: no upper(), no new dtype
    if dt is not None:
        return dt
    try:
        dt = KSERVE_TO_NUMPY[datatype.upper()]
    except KeyError:
        raise InvalidArgument(
            f"input '{tensor}': unknown datatype {datatype!r}; use one of {', '.join(KSERVE_TO_NUMPY)}",
            {"tensor": tensor, "datatype": datatype},
        ) from None
    return dt if dt.kind == "O" else dt.newbyteorder("<")


_WIRE_DTYPES: dict[str, np.dtype] = {name: (dt if dt.kind == "O" else dt.newbyteorder("<"))
                                     for name, dt in KSERVE_TO_NUMPY.items()}


# Numeric dtypes in native byte order -> datatype, on little-endian hosts (the wire order): the encoder's fast path.
_NATIVE_DATATYPES: dict[np.dtype, str] = {dt: name for name, dt in KSERVE_TO_NUMPY.items()
                                          if dt.kind not in "OSU" and dt.isnative and sys.byteorder == "little"}


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


def utf8_strings(name: str, values: np.ndarray) -> np.ndarray:
    """A BYTES tensor as the ``str`` object array onnxruntime takes for ``tensor(string)``, byte-exact.

    onnxruntime holds strings as UTF-8 text, and its Python binding turns a ``bytes`` element into the
    text of its repr (``"b'\\xff'"``), so each element is decoded here as strict UTF-8: valid text reaches
    the model unchanged (and comes back as the same bytes, encoded once on the way out), anything else is
    InvalidArgument naming the tensor, the element (flat and per-dimension index) and the offending byte,
    never a silent replacement.
    """
    arr = np.asarray(values, dtype=object)
    flat = arr.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for i, v in enumerate(flat):
        if isinstance(v, str):
            out[i] = v
            continue
        raw = bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else str(v).encode("utf-8")
        try:
            out[i] = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            where = list(np.unravel_index(i, arr.shape)) if arr.ndim > 1 else [i]
            raise InvalidArgument(
                f"input '{name}': BYTES element {i} (index {[int(d) for d in where]}) is not valid UTF-8 "
                f"(byte 0x{raw[e.start]:02x} at offset {e.start} of {len(raw)}: {e.reason}); this model takes "
                "text (ONNX tensor(string)), which is UTF-8 only: send UTF-8 encoded strings, or encode binary "
                "data as text first (e.g. base64)",
                {"tensor": name, "element": str(i)},
            ) from None
    return out.reshape(arr.shape)


# --- decoding ---------------------------------------------------------------------------------

def _tensor_from_buffer(name: str, datatype: str, shape, buf, size: int, what: str, fix: str = "") -> np.ndarray:
    """A tensor over ``buf`` (``size`` bytes), checked against shape x dtype; ``what``/``fix`` word the error.

    Numeric tensors are zero-copy views (copied only when ``buf`` breaks element alignment); BYTES use
    the length-prefixed form.
    """
    dt = _WIRE_DTYPES.get(datatype)
    if dt is not None and dt.kind != "O":  # the common case first: a numeric tensor whose bytes fit its shape
        dims = tuple(map(int, shape))
        n = math.prod(dims)
        if n * dt.itemsize == size and (not dims or min(dims) >= 0):
            try:
                arr = np.frombuffer(buf, dtype=dt, count=n).reshape(dims)
            except ValueError:
                pass  # an unusable shape: the checks below word the error
            else:
                return arr if arr.flags.aligned else arr.copy()
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
    try:
        arr = np.frombuffer(buf, dtype=dt, count=n).reshape(dims)
    except ValueError as exc:  # e.g. (0, 2**62): no data, but more elements than an array may index
        raise InvalidArgument(f"input '{name}': shape {list(dims)[:16]} is not a usable shape ({exc})",
                              {"tensor": name}) from None
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
    try:
        if dt.kind == "O":
            arr = np.empty(n, dtype=object)
            arr[:] = list(values)
            return arr.reshape(dims)
        return np.asarray(values, dtype=dt).reshape(dims)
    except (OverflowError, ValueError) as exc:  # 300 in int_contents of an INT8 tensor, an unusable shape
        raise InvalidArgument(
            f"input '{name}': {field} do not fit {dtype_name} shape {list(dims)[:16]} ({str(exc)[:120]}); send values "
            f"in the range of {dtype_name}", {"tensor": name}) from None


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
    a = arr if type(arr) is np.ndarray else np.asarray(arr)
    datatype = _NATIVE_DATATYPES.get(a.dtype)
    if datatype is not None:  # a native little-endian numeric array, as onnxruntime returns them
        return datatype, list(a.shape), a.tobytes()  # tobytes: C order, one copy, whatever the strides
    datatype = to_kserve(a.dtype)
    if datatype == "BYTES":
        return datatype, list(a.shape), serialize_bytes_tensor(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return datatype, list(a.shape), a.tobytes()


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
    in_shm = frozenset(in_shm) if in_shm else ()
    resp = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    add, raws = resp.outputs.add, resp.raw_output_contents
    for name, arr in outputs.items():
        if name in in_shm:
            a = np.asarray(arr)
            datatype, shape, data = to_kserve(a.dtype), list(a.shape), b""
        else:
            datatype, shape, data = to_raw(arr)
        add(name=name, datatype=datatype, shape=shape)
        raws.append(data)
    return resp
