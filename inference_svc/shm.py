"""System shared memory regions of the inference service (Triton's ``system_shared_memory`` extension).

A client on the same host creates a POSIX shared memory segment (``shm_open(key)``, i.e. the file
``/dev/shm/<key>``), registers a window of it (offset, byte size) under a region name, then points
request inputs and requested outputs at the region through tensor parameters, so the tensors never
travel through gRPC.

The client owns the segment and may shrink it at any time; a mapping read or written past the file's
end raises SIGBUS and would kill the server. So the server never maps it: ``SharedMemoryRegistry``
keeps one descriptor per region (``os.open``, never ``multiprocessing.shared_memory``, whose resource
tracker may unlink the client's segment), reads a request's inputs with ``pread`` into the request's
own buffer when the request is decoded (one copy, done before it queues, so nothing the client does
later can touch it) and writes outputs with ``pwrite`` after checking the segment still holds the
region: a shrunk segment fails that request with FAILED_PRECONDITION, never the server.

Regions belong to the callers holding the service's token: registration needs it (an interceptor
rule) and so does every inference request that names a region, so a caller without the token can
neither read another client's tensors through a model nor write into its segment. Keys are restricted
to plain names in /dev/shm (no further '/', no '..', no symlinks, regular files only). A
``RequestLease`` resolves and bounds-checks every reference before inference and holds its regions
until the response is built, so an unregister during a request takes effect (close) once it is done.

Domain code: raises ``modelport.errors`` only, never imports grpc. All methods run on the server's
event loop thread.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelport.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from modelport.kserve import codec
from modelport.kserve import shm as kshm
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.trust import require_token_holder

log = logging.getLogger("modelport.inference.shm")

SHM_DIR = Path("/dev/shm")

DISABLED = ("system shared memory is disabled: the server was started with --no-shared-memory; send tensors in "
            "the request (raw_input_contents) or restart the server without --no-shared-memory")


def segment_path(key: str) -> Path:
    """The /dev/shm file of a POSIX shm key ('/name' or 'name'); InvalidArgument for anything else."""
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or name in (".", "..") or ".." in name or "\x00" in name:
        raise InvalidArgument(
            f"shared memory key {key!r} is not allowed: use a plain POSIX shm name such as '/my_input' (one "
            "leading '/' at most, no other '/', no '..'); it names the file /dev/shm/<name>",
            {"key": key},
        )
    return SHM_DIR / name


MAX_REGION_NAME = 256


@dataclass(eq=False)
class Region:
    """One registered window of a segment, held open by its descriptor."""

    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    users: int = 0
    retired: bool = False
    closed: bool = field(default=False)

    def check_segment(self) -> None:
        """FailedPrecondition when the segment shrank below the region since registration (reading it
        would fault)."""
        size = os.fstat(self.fd).st_size
        if size < self.offset + self.byte_size:
            raise FailedPrecondition(
                f"shared memory region '{self.name}': segment '{self.key}' shrank to {size} bytes, below the "
                f"registered offset {self.offset} + byte_size {self.byte_size}; unregister and register it again",
                {"region": self.name},
            )

    def _shrunk(self, size: int) -> FailedPrecondition:
        return FailedPrecondition(
            f"shared memory region '{self.name}': segment '{self.key}' shrank to {size} bytes, below the "
            f"registered offset {self.offset} + byte_size {self.byte_size}, while the request used it; the request "
            "failed (the server is unaffected). Keep the segment's size while requests use it",
            {"region": self.name})

    def read(self, offset: int, size: int) -> memoryview:
        """A private copy of ``size`` bytes at ``offset`` inside the region (bounds checked by the caller);
        FailedPrecondition when the segment no longer holds them."""
        buf = bytearray(size)
        view = memoryview(buf)
        done = 0
        while done < size:
            n = os.preadv(self.fd, [view[done:]], self.offset + offset + done)
            if n <= 0:
                raise self._shrunk(os.fstat(self.fd).st_size)
            done += n
        return view

    def write(self, offset: int, data) -> None:
        """Write bytes at ``offset`` inside the region, after checking the segment still holds the region."""
        size = os.fstat(self.fd).st_size
        if size < self.offset + self.byte_size:
            raise self._shrunk(size)
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], self.offset + offset + done)

    def close(self) -> None:
        """Close the descriptor."""
        if self.closed:
            return
        self.closed = True
        os.close(self.fd)


def _open_segment(name: str, key: str, offset: int, byte_size: int) -> Region:
    path = segment_path(key)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidArgument(
            f"Unable to open shared memory region: '{key}' ({path} does not exist); create the segment first "
            "(shm_open, or tritonclient.utils.shared_memory.create_shared_memory_region) on this host and "
            f"register region '{name}' with the same key",
            {"region": name, "key": key},
        ) from None
    except OSError as exc:
        raise InvalidArgument(
            f"Unable to open shared memory region: '{key}' ({path}: {exc.strerror}); the segment must be a "
            "regular file in /dev/shm, readable and writable by the server's user",
            {"region": name, "key": key},
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"Unable to open shared memory region: '{key}' ({path} is not a regular file)",
                                  {"region": name, "key": key})
        if offset + byte_size > st.st_size:
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': offset {offset} + byte_size {byte_size} = "
                f"{offset + byte_size} exceeds segment '{key}' of {st.st_size} bytes; register a window inside "
                "the segment or create a larger one",
                {"region": name, "key": key},
            )
    except BaseException:
        os.close(fd)
        raise
    return Region(name, key, offset, byte_size, fd)


class SharedMemoryRegistry:
    """Registered system shared memory regions by name."""

    def __init__(self, enabled: bool = True, max_regions: int = 256):
        self.enabled = enabled
        self.max_regions = max_regions
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> Region:
        """Map ``byte_size`` bytes at ``offset`` of segment ``key`` as region ``name``."""
        if not self.enabled:
            raise FailedPrecondition(DISABLED)
        if not name:
            raise InvalidArgument("shared memory region name is empty; give the region a name to refer to it "
                                  "from requests")
        if len(name) > MAX_REGION_NAME or "\x00" in name:
            raise InvalidArgument(f"shared memory region name {name[:64]!r}... is not allowed: use at most "
                                  f"{MAX_REGION_NAME} characters, no NUL", {"region": name[:64]})
        if byte_size <= 0:
            raise InvalidArgument(f"failed to register shared memory region '{name}': byte_size is 0; give the "
                                  "size in bytes of the window to register", {"region": name})
        segment_path(key)
        if name in self._regions:
            raise AlreadyExists(f"shared memory region '{name}' already in manager; unregister it first or use "
                                "another name", {"region": name})
        if len(self._regions) >= self.max_regions:
            # Each region holds a file descriptor and a mapping: the bound keeps clients from exhausting them.
            raise ResourceExhausted(
                f"failed to register shared memory region '{name}': {len(self._regions)} regions are registered, "
                f"the limit (--max-shm-regions) is {self.max_regions}; unregister regions no longer used "
                "(SystemSharedMemoryUnregister) or raise the limit", {"region": name})
        region = _open_segment(name, key, int(offset), int(byte_size))
        self._regions[name] = region
        log.info("registered shared memory region %s: key %s, offset %d, %d bytes", name, key, offset, byte_size)
        return region

    def unregister(self, name: str = "") -> list[str]:
        """Unregister one region (all with an empty name; an unknown name is a no-op, as in Triton).

        A region in use by a request stays mapped until that request is done.
        """
        names = list(self._regions) if not name else ([name] if name in self._regions else [])
        for n in names:
            region = self._regions.pop(n)
            region.retired = True
            if region.users == 0:
                region.close()
            else:
                log.info("shared memory region %s unregistered; unmapped after %d in-flight request(s)", n,
                         region.users)
        return names

    def status(self, name: str = "") -> list[Region]:
        """Registered regions (all, or the named one: NotFound when unknown, as in Triton)."""
        if not name:
            return [self._regions[n] for n in sorted(self._regions)]
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{name}'; registered regions: "
                           f"{', '.join(sorted(self._regions)) or 'none'}", {"region": name})
        return [region]

    def get(self, name: str, tensor: str, kind: str) -> Region:
        """A registered region for a request tensor; NotFound (Triton's code) naming the tensor when unknown."""
        region = self._regions.get(name)
        if region is None:
            if not self.enabled:
                raise FailedPrecondition(DISABLED, {"tensor": tensor})
            raise NotFound(
                f"{kind} '{tensor}': shared memory region '{name}' is not registered (registered: "
                f"{', '.join(sorted(self._regions)) or 'none'}); register it first with "
                "SystemSharedMemoryRegister (tritonclient: register_system_shared_memory)",
                {"tensor": tensor, "region": name},
            )
        return region

    def lease(self, request: pb.ModelInferRequest) -> RequestLease:
        """Resolve and hold the regions one inference request uses (use it as a context manager)."""
        return RequestLease(self, request)

    def _release(self, region: Region) -> None:
        region.users -= 1
        if region.users == 0 and region.retired:
            region.close()

    def close(self) -> None:
        """Unregister and unmap everything (service shutdown)."""
        self.unregister("")

    # --- protobuf mapping -----------------------------------------------------------------------

    def status_response(self, name: str = "") -> pb.SystemSharedMemoryStatusResponse:
        """SystemSharedMemoryStatusResponse: regions keyed by name."""
        resp = pb.SystemSharedMemoryStatusResponse()
        for r in self.status(name):
            resp.regions[r.name].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(
                name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size))
        return resp


def _bounds(region: Region, ref: kshm.ShmRef, tensor: str, kind: str) -> None:
    end = ref.offset + ref.byte_size
    if end > region.byte_size:
        raise InvalidArgument(
            f"{kind} '{tensor}': shared_memory_offset {ref.offset} + shared_memory_byte_size {ref.byte_size} = "
            f"{end} exceeds shared memory region '{region.name}' ({region.byte_size} bytes); lower them or "
            "register a larger region",
            {"tensor": tensor, "region": region.name},
        )


class RequestLease:
    """The shared memory one inference request reads and writes, held until its response is built."""

    def __init__(self, registry: SharedMemoryRegistry, request: pb.ModelInferRequest):
        self.request = request
        self._registry = registry
        self._held: list[Region] = []
        self.inputs: dict[str, tuple[Region, kshm.ShmRef]] = {}
        self.outputs: dict[str, tuple[Region, kshm.ShmRef]] = {}
        if not kshm.uses_shm(request):  # most requests: nothing to resolve
            return
        if any(kshm.shm_ref(t, "input") for t in request.inputs) or \
                any(kshm.shm_ref(o, "output") for o in request.outputs):
            require_token_holder("shared memory")  # regions belong to the token holders who registered them
        try:
            for kind, tensors, into in (("input", request.inputs, self.inputs),
                                        ("output", request.outputs, self.outputs)):
                for t in tensors:
                    ref = kshm.shm_ref(t, kind)
                    if ref is None:
                        continue
                    region = registry.get(ref.region, t.name, kind)
                    _bounds(region, ref, t.name, kind)
                    if region not in self._held:
                        region.check_segment()
                        region.users += 1
                        self._held.append(region)
                    into[t.name] = (region, ref)
        except BaseException:
            self.release()
            raise

    def __enter__(self) -> RequestLease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Let go of the regions (unmapping the ones unregistered meanwhile)."""
        held, self._held = self._held, []
        for region in held:
            self._registry._release(region)

    def decode_inputs(self) -> dict[str, np.ndarray]:
        """All inputs: from shared memory where the request says so, else from the message."""
        if not self.inputs:
            return codec.decode_inputs(self.request)

        def view(ref: kshm.ShmRef, tensor: str) -> memoryview:
            region, _ = self.inputs[tensor]
            return region.read(ref.offset, ref.byte_size)  # a private copy: the client may shrink the segment

        return kshm.decode_inputs_shm(self.request, view)

    def write_outputs(self, outputs: dict[str, np.ndarray]) -> set[str]:
        """Write the outputs requested in shared memory into their regions; returns their names.

        InvalidArgument naming the output, its byte size and the space given when one does not fit.
        """
        written = set()
        for name, (region, ref) in self.outputs.items():
            if name not in outputs:
                continue
            arr = np.asarray(outputs[name])
            data = None
            if arr.dtype.kind in "OSU":
                data = codec.serialize_bytes_tensor(arr)
                size = len(data)
            else:
                size = arr.nbytes
            if size > ref.byte_size:
                raise InvalidArgument(
                    f"output '{name}' is {size} bytes ({arr.dtype} {list(arr.shape)}) but its shared memory "
                    f"window in region '{region.name}' (offset {ref.offset}, region {region.byte_size} bytes) is "
                    f"{ref.byte_size} bytes; give it shared_memory_byte_size >= {size} (register a larger region "
                    "if needed)",
                    {"tensor": name, "region": region.name, "needed_bytes": str(size)},
                )
            if data is not None:
                region.write(ref.offset, data)
            elif size:
                src = np.ascontiguousarray(arr)
                if src.dtype.byteorder == ">":
                    src = src.astype(src.dtype.newbyteorder("<"))
                region.write(ref.offset, src.reshape(-1).view(np.uint8))
            written.add(name)
        return written

    def response(self, model_name: str, model_version: str, outputs: dict[str, np.ndarray],
                 request_id: str = "") -> pb.ModelInferResponse:
        """Write the shared-memory outputs and build the response (Triton's layout: empty raw entries)."""
        written = self.write_outputs(outputs) if self.outputs else ()
        return codec.make_infer_response(model_name, model_version, outputs, request_id, in_shm=written)
