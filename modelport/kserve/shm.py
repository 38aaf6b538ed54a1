"""Client side of Triton's system shared memory extension for modelport's own clients (SDK, benchmarks).

``Segment.create(key, byte_size)`` makes a POSIX shared memory segment (the file ``/dev/shm/<key>``,
what ``shm_open`` and tritonclient create) and maps it; ``write`` / ``read`` move numpy arrays in
and out; ``register_request`` / ``unregister_request`` build the KServe messages to send with
``GRPCInferenceService.SystemSharedMemoryRegister`` / ``Unregister``; ``make_shm_infer_request``
builds an inference request whose tensors point into registered regions. The server side reads the
same parameters with ``shm_ref`` and decodes with ``decode_inputs_shm``. The server must run on the
same host. protobuf + numpy only: no grpc.

Example (``stub`` is a ``GRPCInferenceServiceStub``)::

    seg = Segment.create("/mp_in", 4096)
    stub.SystemSharedMemoryRegister(seg.register_request("in"))
    ref = seg.write(x)                         # ShmRef(region="in", byte_size=x.nbytes, offset=0)
    req = make_shm_infer_request("mlp", {"x": ("FP32", x.shape, ref)},
                                       {"y": ShmRef("out", 4096)})
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelport.errors import InvalidArgument
from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2 as pb

SHM_DIR = Path("/dev/shm")

__all__ = ["Segment", "ShmRef", "decode_inputs_shm", "make_shm_infer_request", "register_request", "set_shm",
           "shm_ref", "unregister_request", "uses_shm"]


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
    dt = codec.numpy_dtype(datatype)
    if dt.kind == "O":
        raise ValueError("BYTES tensors have no fixed byte size; serialize them (codec.serialize_bytes_tensor) and "
                         "use len() of the result")
    return codec.element_count(shape) * dt.itemsize


def tensor_from_shm(name: str, datatype: str, shape, buf, ref: ShmRef) -> np.ndarray:
    """One input tensor read from a shared-memory view of exactly ``ref.byte_size`` bytes.

    Numeric tensors are views of ``buf`` (the server passes its own copy of the region's bytes); the
    byte size must equal shape x element size. BYTES use the raw length-prefixed form.
    """
    return codec._tensor_from_buffer(name, datatype, shape, buf, ref.byte_size,
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
            out[t.name] = codec.tensor_from_contents(t.name, t.datatype, t.shape, t.contents)
        elif index < len(raws):
            out[t.name] = codec.tensor_from_raw(t.name, t.datatype, t.shape, raws[index])
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
        datatype, shape, data = codec.to_raw(arr)
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        req.raw_input_contents.append(data)
    for name, ref in (outputs or {}).items():
        o = req.outputs.add(name=name)
        if ref is not None:
            set_shm(o, ref)
    return req


def register_request(name: str, key: str, byte_size: int, offset: int = 0) -> pb.SystemSharedMemoryRegisterRequest:
    """SystemSharedMemoryRegisterRequest for ``byte_size`` bytes at ``offset`` of segment ``key``."""
    return pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset, byte_size=byte_size)


def unregister_request(name: str = "") -> pb.SystemSharedMemoryUnregisterRequest:
    """SystemSharedMemoryUnregisterRequest for one region (every region when empty)."""
    return pb.SystemSharedMemoryUnregisterRequest(name=name)


class Segment:
    """A POSIX shared memory segment this process created (or opened) and mapped read-write."""

    def __init__(self, key: str, fd: int, byte_size: int, owner: bool):
        self.key = key if key.startswith("/") else "/" + key
        self.path = SHM_DIR / self.key[1:]
        self.byte_size = byte_size
        self.region: str | None = None
        self._region_offset = 0
        self._owner = owner
        self._fd = fd
        self.mm = mmap.mmap(fd, byte_size)

    @classmethod
    def create(cls, key: str, byte_size: int) -> Segment:
        """Create a new segment of ``byte_size`` bytes (FileExistsError when the key is taken)."""
        name = key.lstrip("/")
        if not name or "/" in name:
            raise ValueError(f"shared memory key {key!r} must be a plain name such as '/my_input'")
        fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, byte_size)
            return cls(key, fd, byte_size, owner=True)
        except BaseException:
            os.close(fd)
            os.unlink(SHM_DIR / name)
            raise

    def register_request(self, name: str, offset: int = 0, byte_size: int | None = None
                         ) -> pb.SystemSharedMemoryRegisterRequest:
        """The register message for this segment (the whole segment by default) under region ``name``.

        ``write`` then returns references into that region (offsets relative to ``offset``).
        """
        self.region = name
        self._region_offset = offset
        size = self.byte_size - offset if byte_size is None else byte_size
        return register_request(name, self.key, size, offset)

    def write(self, arr, offset: int = 0) -> ShmRef:
        """Copy a numpy array (numeric, or str/bytes as BYTES) to ``offset`` of the registered region.

        Returns the ShmRef to put in a request (region name, byte size, offset).
        """
        if self.region is None:
            raise RuntimeError("call register_request(name) first: a ShmRef names a registered region")
        a = np.asarray(arr)
        start = self._region_offset + offset
        if a.dtype.kind in "OSU":
            data = codec.serialize_bytes_tensor(a)
            self.mm[start:start + len(data)] = data
            return ShmRef(self.region, len(data), offset)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        np.frombuffer(self.mm, dtype=np.uint8, count=a.nbytes, offset=start)[:] = a.reshape(-1).view(np.uint8)
        return ShmRef(self.region, a.nbytes, offset)

    def read(self, datatype: str, shape, offset: int = 0, copy: bool = True) -> np.ndarray:
        """An array of a KServe datatype and shape at ``offset`` of the registered region (BYTES parsed)."""
        start = self._region_offset + offset
        dt = codec.numpy_dtype(datatype)
        n = codec.element_count(shape)
        if dt.kind == "O":
            out = np.empty(n, dtype=object)
            for i in range(n):
                (length,) = struct.unpack_from("<I", self.mm, start)
                out[i] = bytes(self.mm[start + 4:start + 4 + length])
                start += 4 + length
            return out.reshape(tuple(shape))
        arr = np.frombuffer(self.mm, dtype=dt, count=n, offset=start).reshape(tuple(shape))
        return arr.copy() if copy else arr

    def close(self, unlink: bool | None = None) -> None:
        """Unmap and close; unlink the /dev/shm file when this process created it (or ``unlink=True``)."""
        try:
            self.mm.close()
        except BufferError:  # arrays from read(copy=False) still alive: unmapped with the last of them
            pass
        os.close(self._fd)
        if unlink if unlink is not None else self._owner:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
