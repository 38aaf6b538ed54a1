"""Memory admission: how much a job will need (from its model's weight bytes) against what this
machine or container can give, decided before the job starts.

``weight_bytes(path, fmt)`` reads the weight size from the model file's own metadata (HDF5 datasets,
SavedModel variable shards, ONNX initializers and external data) without TensorFlow.
``available_bytes()`` is the cgroup limit minus what the cgroup already uses (cgroup v2
``memory.max``, v1 ``memory.limit_in_bytes``), or MemAvailable when there is no limit, whichever is
smaller. ``admit(...)`` raises ``ResourceExhausted`` naming both figures and what to try.

The job services' setting ``memory_limit_bytes`` (environment ``MODELPORT_MEMORY_LIMIT_BYTES``, which the
services also pass to their workers) caps what one job may use: an operator's budget on a shared machine,
and what tests use. No grpc, no TensorFlow.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from modelport.errors import ResourceExhausted

LIMIT_ENV = "MODELPORT_MEMORY_LIMIT_BYTES"
GB = 1e9
_NO_LIMIT = 1 << 60  # cgroup v1 reports "no limit" as a number near 2**63


def fmt_bytes(n: float) -> str:
    """Bytes in decimal GB with two decimals (``1.33 GB``), or MB below 1 GB (``12.5 MB``)."""
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / 1e6:.1f} MB"


# ---- what the machine can give ------------------------------------------------------------------

def release_freed_memory() -> None:
    """Collect unreachable objects (sessions, models), then give the OS back the heap pages glibc keeps after
    they are freed.

    onnxruntime and protobuf allocate on several threads, so freed memory lands in glibc's per-thread arenas,
    which keep it: a service that had served and unloaded the 0.73 GB transformer LM kept 0.69 GB resident in
    64 MB thread-arena heaps (``/proc/PID/smaps``). Used by the inference service after each load and unload and by
    the converter after it frees a source model. A no-op where there is no glibc.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _meminfo() -> dict[str, int]:
    out = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
    return out


def _own_cgroup_dirs() -> tuple[str | None, str | None]:
    """(cgroup v2 folder, cgroup v1 memory folder) of this process, where mounted and readable."""
    v2 = v1 = None
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        rel = rel.lstrip("/")
        if hier == "0" and controllers == "":
            for cand in (os.path.join("/sys/fs/cgroup", rel), "/sys/fs/cgroup"):
                if os.path.isfile(os.path.join(cand, "memory.max")):
                    v2 = cand
                    break
        elif "memory" in controllers.split(","):
            # Inside a container the own cgroup is usually mounted at the root of the hierarchy.
            for cand in (os.path.join("/sys/fs/cgroup/memory", rel), "/sys/fs/cgroup/memory"):
                if os.path.isfile(os.path.join(cand, "memory.limit_in_bytes")):
                    v1 = cand
                    break
    return v2, v1


def _stat_value(text: str | None, key: str) -> int:
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        if k == key and v.strip().isdigit():
            return int(v)
    return 0


@dataclass(frozen=True)
class MemoryBudget:
    """What a job may use: ``available`` bytes, and where that figure comes from."""

    available: int
    source: str
    limit: int = 0  # the cgroup/configured limit, 0 when none


def cgroup_limit() -> tuple[int, int, str]:
    """(limit, usage not counting reclaimable page cache, description) of this process's memory
    cgroup; (0, 0, "") when there is no limit."""
    v2, v1 = _own_cgroup_dirs()
    if v2:
        raw = _read(os.path.join(v2, "memory.max"))
        if raw and raw != "max" and raw.isdigit():
            usage = int(_read(os.path.join(v2, "memory.current")) or 0)
            inactive = _stat_value(_read(os.path.join(v2, "memory.stat")), "inactive_file")
            return int(raw), max(0, usage - inactive), "cgroup v2 memory.max"
    if v1:
        raw = _read(os.path.join(v1, "memory.limit_in_bytes"))
        if raw and raw.isdigit() and int(raw) < _NO_LIMIT:
            usage = int(_read(os.path.join(v1, "memory.usage_in_bytes")) or 0)
            inactive = _stat_value(_read(os.path.join(v1, "memory.stat")), "total_inactive_file")
            return int(raw), max(0, usage - inactive), "cgroup v1 memory.limit_in_bytes"
    return 0, 0, ""


def available_bytes(limit: int | None = None) -> MemoryBudget:
    """Memory a new job can still take: cgroup headroom, MemAvailable, and the configured per-job cap
    (``limit``; when None, ``MODELPORT_MEMORY_LIMIT_BYTES``), whichever is smallest."""
    candidates: list[tuple[int, str, int]] = []
    info = _meminfo()
    if "MemAvailable" in info:
        candidates.append((info["MemAvailable"], "MemAvailable", 0))
    group, usage, what = cgroup_limit()
    if group:
        candidates.append((max(0, group - usage), f"{what} {fmt_bytes(group)} minus {fmt_bytes(usage)} in use", group))
    configured = os.environ.get(LIMIT_ENV, "").strip() if limit is None else str(limit)
    if configured:
        try:
            cap = int(float(configured))
        except ValueError:
            cap = 0
        if cap > 0:
            candidates.append((cap, f"{LIMIT_ENV}={cap}", cap))
    if not candidates:
        return MemoryBudget(available=0, source="unknown")
    available, source, lim = min(candidates, key=lambda c: c[0])
    return MemoryBudget(available=available, source=source, limit=lim)


# ---- what a job needs --------------------------------------------------------------------------

def _h5_weight_bytes(fileobj_or_path) -> int:
    """Bytes of the model's datasets in an HDF5 weights file (optimizer state excluded)."""
    import h5py

    total = 0
    with h5py.File(fileobj_or_path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f  # legacy .h5: weights under model_weights

        def visit(name, obj):
            nonlocal total
            if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer"):
                total += int(obj.size) * obj.dtype.itemsize

        root.visititems(visit)
    return total


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes of an open file from ``start``."""

    def __init__(self, f, start: int, size: int):
        super().__init__()
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        if not n:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buffer)[:n])
        self._pos += got
        return got


def _member_data_offset(f, info: zipfile.ZipInfo) -> int:
    """Where a stored zip member's bytes start: after its local header (whose extra field may differ
    from the central directory's)."""
    f.seek(info.header_offset)
    header = f.read(30)
    if header[:4] != b"PK\x03\x04":
        raise ValueError("bad zip local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _onnx_weight_bytes(path: Path) -> int:
    import onnx

    model_path = path
    if path.is_dir():
        hits = sorted(path.rglob("*.onnx"))
        if not hits:
            return 0
        model_path = hits[0]
    proto = onnx.load_model(str(model_path), load_external_data=False)
    total = 0
    for t in proto.graph.initializer:
        n = 1
        for d in t.dims:
            n *= int(d)
        total += n * max(1, onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)
    return total


def weight_bytes(path: str | os.PathLike, fmt: str) -> int:
    """Weight bytes of a model file of a detected format (0 when it cannot be told cheaply).

    Keras ``.keras``/``.h5``: the HDF5 weight datasets; SavedModel (archive or folder): its variable
    data shards; ONNX: initializers (inline and external); TFLite: the file size.
    """
    path = Path(path)
    try:
        if fmt == "keras":
            with zipfile.ZipFile(path) as z:
                info = next((i for i in z.infolist() if i.filename == "model.weights.h5"), None)
                if info is None:
                    return sum(i.file_size for i in z.infolist() if i.filename.startswith("model.weights"))
            if info.compress_type != zipfile.ZIP_STORED:
                return info.file_size  # the weights file's size: close, optimizer state included
            # Keras stores the weights file uncompressed: read its HDF5 metadata in place (zipfile's own
            # reader re-reads the member from its start on every backward seek: 25 s for a 1.3 GB model).
            with open(path, "rb") as raw:
                return _h5_weight_bytes(_Window(raw, _member_data_offset(raw, info), info.file_size))
        if fmt == "h5":
            return _h5_weight_bytes(str(path))
        if fmt == "savedmodel":
            if path.is_dir():
                return sum(p.stat().st_size for p in path.rglob("variables.data-*"))
            with tarfile.open(path, "r:*") as tar:
                return sum(m.size for m in tar.getmembers() if Path(m.name).name.startswith("variables.data-"))
        if fmt == "onnx":
            return _onnx_weight_bytes(path)
        return path.stat().st_size
    except (OSError, zipfile.BadZipFile, tarfile.TarError, KeyError, ValueError):
        return 0


@dataclass(frozen=True)
class Estimate:
    """Memory a job needs: ``factor`` x the weight bytes on top of what the process already holds."""

    what: str
    weight_bytes: int
    factor: float
    overhead: int = 0

    @property
    def needed(self) -> int:
        return int(self.weight_bytes * self.factor) + self.overhead


def admit(estimate: Estimate, advice: str, budget: MemoryBudget | None = None) -> MemoryBudget:
    """Raise ResourceExhausted when ``estimate`` does not fit in what is available; else the budget.

    ``advice`` says what to try instead (another technique, a bigger machine, a limit to raise).
    A budget of unknown size admits everything.
    """
    budget = budget or available_bytes()
    if budget.source == "unknown" or estimate.needed <= budget.available:
        return budget
    raise ResourceExhausted(
        f"{estimate.what} needs about {fmt_bytes(estimate.needed)} of memory ({fmt_bytes(estimate.weight_bytes)} of "
        f"weights x {estimate.factor:g}), but only {fmt_bytes(budget.available)} is available ({budget.source}); "
        f"{advice}",
        details={"needed_bytes": str(estimate.needed), "available_bytes": str(budget.available),
                 "weight_bytes": str(estimate.weight_bytes), "available_source": budget.source},
    )
