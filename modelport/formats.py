"""Model format detection from content (magic bytes and structure), never from file names.

Knows the five formats modelport converts from — Keras 3 ``.keras`` zip, HDF5, SavedModel tar
archive, TFLite flatbuffer, ONNX protobuf — and which targets each converts to. Imports no
TensorFlow (``onnx`` only, for the protobuf parse). Services call it in a sniffer subprocess
(``modelport.runtime.sniffing``), never in their own process: uploaded bytes are untrusted.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from modelport.errors import InvalidArgument

KERAS = "keras"
H5 = "h5"
SAVEDMODEL = "savedmodel"
TFLITE = "tflite"
ONNX = "onnx"
# A target only: a torch.export program (.pt2) made from the ONNX form through onnx2torch.
PYTORCH = "pytorch"
# A target only: a keras_hub causal LM as a KV-cache step for token generation (model.onnx + generation.json).
GENERATION = "generation"

SOURCE_FORMATS = (KERAS, H5, SAVEDMODEL, TFLITE, ONNX)

# Source format -> supported target formats (ONNX -> SavedModel/TFLite, any -> PyTorch: see converter README).
TARGETS: dict[str, tuple[str, ...]] = {
    KERAS: (ONNX, TFLITE, SAVEDMODEL, PYTORCH, GENERATION),
    H5: (ONNX, TFLITE, SAVEDMODEL, PYTORCH),
    SAVEDMODEL: (ONNX, TFLITE, PYTORCH),
    TFLITE: (ONNX, PYTORCH),
    ONNX: (ONNX, SAVEDMODEL, TFLITE, PYTORCH),
}

TARGET_FORMATS = (ONNX, TFLITE, SAVEDMODEL, PYTORCH, GENERATION)

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _head(path: Path, n: int = 2048) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _describe(head: bytes) -> str:
    shown = head[:16]
    text = shown.hex(" ")
    return f"first bytes {text!r} ({shown!r})" if shown else "an empty file"


def _is_hdf5(path: Path, head: bytes) -> bool:
    if head.startswith(_HDF5_MAGIC):
        return True
    # The superblock may sit after a user block at 512, 1024, 2048, ... bytes.
    size = path.stat().st_size
    with open(path, "rb") as f:
        off = 512
        while off + 8 <= min(size, 1 << 20):
            f.seek(off)
            if f.read(8) == _HDF5_MAGIC:
                return True
            off *= 2
    return False


MAX_SNIFF_MEMBERS = 10_000


def _tar_names(path: Path) -> list[str] | None:
    """Member names, read header by header: at most MAX_SNIFF_MEMBERS (a header bomb is not listed whole)."""
    names: list[str] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            while (m := tar.next()) is not None:
                names.append(m.name)
                if len(names) >= MAX_SNIFF_MEMBERS:
                    raise InvalidArgument(f"the tar archive has more than {MAX_SNIFF_MEMBERS} entries; a model "
                                          "archive holds far fewer")
                tar.members = []  # names only: keep no TarInfo objects
    except (tarfile.TarError, OSError, EOFError):
        return None
    return names


def _is_onnx(path: Path) -> bool:
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any other parse failure means "not ONNX"
        if "alloc failed" in str(e).lower():  # upb's arena hit the sniffer's memory bound (runtime.sniffing)
            raise MemoryError(str(e)) from None
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0 and len(model.graph.output) > 0


def detect_format(path: str | os.PathLike) -> str:
    """The model format of a file: keras, h5, savedmodel, tflite or onnx (a file, or a tar archive of
    ``model.onnx`` and its external data).

    Raises InvalidArgument naming what was found (first bytes, or the archive's shape).
    """
    path = Path(path)
    head = _head(path)
    if not head:
        raise InvalidArgument("the model artifact is empty (0 bytes); upload the model file itself")
    if head[:4] in _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise InvalidArgument(f"the model looks like a zip archive but cannot be read ({e}); "
                                  "it may be truncated or corrupted — re-export it") from None
        if "config.json" in names:
            return KERAS
        if any(n.endswith("/archive_format") for n in names):
            raise InvalidArgument("the model is a PyTorch program (torch.export .pt2); modelport converts to "
                                  "PyTorch but not from it: convert the model it was made from")
        raise InvalidArgument(
            f"the model is a zip archive without config.json (found {names[:5]}); a Keras 3 .keras file "
            "holds config.json, metadata.json and model.weights.h5 — save it with model.save('m.keras')"
        )
    if _is_hdf5(path, head):
        return H5
    if len(head) >= 8 and head[4:8] == b"TFL3":
        check_tflite_structure(path)
        return TFLITE
    if len(head) > 262 and head[257:262] == b"ustar":
        names = _tar_names(path)
        if names is None:
            raise InvalidArgument("the model is a tar archive that cannot be read; it may be truncated")
        if any(PurePosixPath(n).name == "saved_model.pb" for n in names):
            return SAVEDMODEL
        if any(n.endswith(".onnx") for n in names):
            return ONNX  # an ONNX model with its external data (media.ONNX_FOLDER)
        raise InvalidArgument(
            f"the model is a tar archive without saved_model.pb or a .onnx file (found {names[:5]}); a "
            "SavedModel artifact is the SavedModel folder packed as tar (saved_model.pb and variables/ at its "
            "root), an ONNX folder artifact holds model.onnx and its external data file(s)"
        )
    if _is_onnx(path):
        return ONNX
    raise InvalidArgument(
        f"unrecognized model content: {_describe(head)}; expected a Keras 3 .keras zip, an HDF5 .h5 file, "
        "a SavedModel tar archive, a TFLite flatbuffer (TFL3) or an ONNX ModelProto"
    )


class _FlatBuffer:
    """Bounds-checked reads of a flatbuffer (enough to reject corrupt TFLite files before TF sees them)."""

    def __init__(self, data: bytes):
        self.data = data

    def _u(self, off: int, n: int) -> int:
        if off < 0 or off + n > len(self.data):
            raise ValueError(f"offset {off} is outside the file ({len(self.data)} bytes)")
        return int.from_bytes(self.data[off:off + n], "little", signed=False)

    def table(self, off: int) -> tuple[int, int, int]:
        """(table offset, vtable offset, vtable size) after checking the vtable lies in the file."""
        soff = self._u(off, 4)
        soff = soff - (1 << 32) if soff >= 1 << 31 else soff
        vt = off - soff
        vt_size = self._u(vt, 2)
        tbl_size = self._u(vt + 2, 2)
        if vt_size < 4 or vt_size % 2 or vt + vt_size > len(self.data) or off + tbl_size > len(self.data):
            raise ValueError(f"table at {off} has an invalid vtable")
        return off, vt, vt_size

    def field(self, table: tuple[int, int, int], index: int) -> int | None:
        """Absolute position of field ``index`` of a table, or None when absent."""
        off, vt, vt_size = table
        slot = 4 + 2 * index
        if slot + 2 > vt_size:
            return None
        rel = self._u(vt + slot, 2)
        return off + rel if rel else None

    def vector(self, pos: int | None, elem_size: int) -> tuple[int, int]:
        """(start, length) of the vector referenced at ``pos`` (an offset field)."""
        if pos is None:
            return 0, 0
        start = pos + self._u(pos, 4)
        n = self._u(start, 4)
        if start + 4 + n * elem_size > len(self.data):
            raise ValueError(f"vector at {start} of {n} elements runs past the end of the file")
        return start + 4, n


def check_tflite_structure(path: Path) -> None:
    """Walk the TFLite Model table (subgraphs, operator codes, buffers) with bounds checks.

    The TFLite interpreter trusts its input and can crash on a corrupted or truncated file;
    this rejects such files with INVALID_ARGUMENT first.
    """
    data = Path(path).read_bytes()
    fb = _FlatBuffer(data)
    try:
        model = fb.table(fb._u(0, 4))
        # Model: 0 version, 1 operator_codes, 2 subgraphs, 3 description, 4 buffers.
        for field_index in (1, 2, 4):
            start, n = fb.vector(fb.field(model, field_index), 4)
            for i in range(n):
                elem = start + 4 * i
                tbl = fb.table(elem + fb._u(elem, 4))
                if field_index == 4:  # Buffer: 0 data (ubyte vector), 1 offset, 2 size (large models)
                    fb.vector(fb.field(tbl, 0), 1)
                if field_index == 2:  # SubGraph: 0 tensors, 1 inputs, 2 outputs, 3 operators
                    for sub in (0, 3):
                        s0, m = fb.vector(fb.field(tbl, sub), 4)
                        for j in range(m):
                            e = s0 + 4 * j
                            fb.table(e + fb._u(e, 4))
                    fb.vector(fb.field(tbl, 1), 4)
                    fb.vector(fb.field(tbl, 2), 4)
        _, subgraphs = fb.vector(fb.field(model, 2), 4)
        if subgraphs == 0:
            raise ValueError("the model has no subgraph")
    except ValueError as e:
        raise InvalidArgument(
            f"the TFLite model could not be read: its flatbuffer is corrupted or truncated ({e}); "
            "re-export or re-upload the .tflite file"
        ) from None


def check_target(source_format: str, target_format: str) -> str:
    """Normalize and check a target format for a source format; InvalidArgument lists the options."""
    target = (target_format or "").strip().lower()
    if target not in TARGET_FORMATS:
        raise InvalidArgument(
            f"unknown target format {target_format!r}: choose one of {', '.join(TARGET_FORMATS)}"
        )
    allowed = TARGETS[source_format]
    if target not in allowed:
        raise InvalidArgument(
            f"converting {source_format} to {target} is not supported; supported targets for "
            f"{source_format}: {', '.join(allowed)}"
        )
    return target


def is_archive(path: str | os.PathLike) -> bool:
    """Whether a model artifact is a folder packed as tar (SavedModel, ONNX with external data)."""
    from modelport.archive import is_tar

    return is_tar(path)


def savedmodel_root(folder: str | os.PathLike) -> Path:
    """The folder holding saved_model.pb inside an unpacked SavedModel archive."""
    folder = Path(folder)
    if (folder / "saved_model.pb").is_file():
        return folder
    hits = sorted(p.parent for p in folder.rglob("saved_model.pb"))
    if not hits:
        raise InvalidArgument("the archive holds no saved_model.pb; pack the SavedModel folder itself")
    return min(hits, key=lambda p: len(p.parts))
