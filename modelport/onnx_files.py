"""ONNX models on disk: the model file and the external data files its tensors reference.

A model whose weights live in external data is several files: ``model.onnx`` (the graph) and the
data file(s) named by each tensor's ``location``, relative to the model's folder. Here they are
found (from the graph alone: ``onnx.load_model(load_external_data=False)``, never the weights),
checked (a location must stay inside the folder and exist), listed as one folder artifact's
members (``model.onnx`` at the root, data files at their locations), copied next to a new model
file, and saved. Weights never pass through this process's memory. Imports ``onnx``
lazily, never onnxruntime or grpc.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from modelport.errors import InvalidArgument

MODEL_FILE = "model.onnx"
DATA_SUFFIX = ".data"
PROTOBUF_LIMIT = 2**31 - 1
"""A ModelProto at or above this size cannot be serialized in one piece: its weights must be external."""
EXTERNAL_THRESHOLD = 1024
"""Tensors of at least this many bytes go to the data file when a model is saved with external data."""
_SCAN_ABOVE = 64 << 20
"""Model files larger than this are scanned for an external-data marker before they are parsed."""
_MARKER = b"\x08location"  # StringStringEntryProto key "location": every external reference holds it


def _tensors(model) -> Iterator:
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(model)


def _check_location(location: str, model_path: Path) -> str:
    p = PurePosixPath(location.replace("\\", "/"))
    if not location or p.is_absolute() or ".." in p.parts or (len(location) > 1 and location[1] == ":"):
        raise InvalidArgument(
            f"{model_path.name} references external data at {location!r}, outside the model's folder; "
            "save the model with its data file beside it (onnx.save_model(..., save_as_external_data=True, "
            "location='model.onnx.data'))")
    return p.as_posix()


def data_locations(model) -> list[str]:
    """Relative locations of the external data of a loaded ModelProto (sorted, unique, unchecked)."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    return sorted({ExternalDataInfo(t).location for t in _tensors(model) if uses_external_data(t)})


def _might_reference_data(path: Path) -> bool:
    """False only when the file cannot reference external data (scanned in chunks, never loaded whole)."""
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            if _MARKER in tail + block:
                return True
            tail = block[-len(_MARKER):]
    return False


def external_data_files(model_path: str | os.PathLike, unreadable_ok: bool = False) -> list[str]:
    """The data files ``model_path`` references, relative to its folder; [] for a self-contained model.

    Raises InvalidArgument when a location leaves the folder or a file is missing, and when the file is
    not ONNX at all unless ``unreadable_ok`` (then [] : whoever loads it reports what it is).
    """
    import onnx

    path = Path(model_path)
    if path.stat().st_size > _SCAN_ABOVE and not _might_reference_data(path):
        return []  # a big self-contained model: not parsed just to learn it has no data files
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure means "not ONNX"
        if unreadable_ok:
            return []
        raise InvalidArgument(f"{path.name} is not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None
    return check_data_files(model, path)


def check_data_files(model, model_path: str | os.PathLike) -> list[str]:
    """The data-file locations of ``model`` (loaded from ``model_path`` without its data), each checked
    to stay inside the model's folder and to exist there."""
    path = Path(model_path)
    locations = [_check_location(loc, path) for loc in data_locations(model)]
    missing = [loc for loc in locations if not (path.parent / loc).is_file()]
    if missing:
        raise InvalidArgument(
            f"{path.name} keeps its weights in external data, but {', '.join(missing)} is not beside it in "
            f"{path.parent}; put the data file(s) next to the model file (or pass their folder)",
            {"missing": ",".join(missing)})
    return locations


def has_external_data(model_path: str | os.PathLike) -> bool:
    return bool(external_data_files(model_path))


def find_model_file(folder: str | os.PathLike) -> Path:
    """The ONNX file of a model folder: ``model.onnx`` at its root, else its only ``.onnx`` file."""
    folder = Path(folder)
    if (folder / MODEL_FILE).is_file():
        return folder / MODEL_FILE
    files = sorted(p for p in folder.rglob("*.onnx") if p.is_file())
    if len(files) == 1:
        return files[0]
    if not files:
        raise InvalidArgument(f"{folder} holds no .onnx file; an ONNX model folder holds model.onnx and its "
                              "external data file(s)")
    shown = ", ".join(str(p.relative_to(folder)) for p in files[:5])
    raise InvalidArgument(f"{folder} holds {len(files)} .onnx files ({shown}); keep one model per folder, "
                          f"named {MODEL_FILE}")


def model_files(model_path: str | os.PathLike, unreadable_ok: bool = False) -> list[tuple[str, Path]]:
    """(archive name, file) of a model and its data: the model as ``model.onnx``, data at its locations."""
    path = Path(model_path)
    files = [(MODEL_FILE, path)]
    files += [(loc, path.parent / loc) for loc in external_data_files(path, unreadable_ok)]
    return files


def model_bytes(model_path: str | os.PathLike) -> int:
    """Bytes of the model file plus its external data files."""
    return sum(p.stat().st_size for _, p in model_files(model_path))


def copy_model(model_path: str | os.PathLike, folder: str | os.PathLike, name: str = MODEL_FILE) -> Path:
    """Copy a model and its data files into ``folder``: the model as ``name``, data files at their
    locations (so the graph needs no rewrite). Returns the new model file.

    Copies, not hard links: onnx refuses to read external data through a file with several links
    (its guard against hardlink attacks), and a copy can never alter the source.
    """
    folder = Path(folder)
    files = model_files(model_path)
    for arcname, src in [*files[1:], (name, files[0][1])]:
        (folder / arcname).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / arcname)
    return folder / name


def copy_data_beside(source_model: str | os.PathLike, new_model: str | os.PathLike) -> list[str]:
    """Copy the data files ``source_model`` references beside ``new_model`` (a rewritten graph that still
    points at them); returns their locations."""
    locations = external_data_files(source_model)
    src, dst = Path(source_model).parent, Path(new_model).parent
    for loc in locations:
        if not (dst / loc).exists():
            (dst / loc).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / loc, dst / loc)
    return locations


def save(model, path: str | os.PathLike, external: bool | None = None) -> Path:
    """Save a ModelProto; with external data (one ``<name>.data`` beside it) when ``external`` or, when
    ``external`` is None, when the model would pass protobuf's 2 GiB limit. Returns ``path``."""
    import onnx

    path = Path(path)
    if external is None:
        external = bool(data_locations(model)) or model.ByteSize() >= PROTOBUF_LIMIT
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        data = path.with_name(path.name + DATA_SUFFIX)
        data.unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=EXTERNAL_THRESHOLD)
    else:
        onnx.save_model(model, str(path))
    return path
