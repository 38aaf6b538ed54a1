"""Client side of Triton's system shared memory extension for modelport's own clients (SDK, benchmarks).

``Segment.create(key, byte_size)`` makes a POSIX shared memory segment (the file ``/dev/shm/<key>``,
what ``shm_open`` and tritonclient create) and maps it; ``write`` / ``read`` move numpy arrays in
and out; ``register_request`` / ``unregister_request`` build the KServe messages to send with
``GRPCInferenceService.SystemSharedMemoryRegister`` / ``Unregister``; ``codec.make_shm_infer_request``
builds an inference request whose tensors point into registered regions. The server must run on
the same host. protobuf + numpy only: no grpc.

Example (``stub`` is a ``GRPCInferenceServiceStub``)::

    seg = Segment.create("/mp_in", 4096)
    stub.SystemSharedMemoryRegister(seg.register_request("in"))
    ref = seg.write(x)                         # ShmRef(region="in", byte_size=x.nbytes, offset=0)
    req = codec.make_shm_infer_request("mlp", {"x": ("FP32", x.shape, ref)},
                                       {"y": ShmRef("out", 4096)})
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np

from modelport.kserve import codec
from modelport.kserve.codec import ShmRef
from modelport.kserve.v2 import grpc_service_pb2 as pb

SHM_DIR = Path("/dev/shm")

__all__ = ["Segment", "ShmRef", "register_request", "unregister_request"]


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
