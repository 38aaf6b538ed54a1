"""What in a model file would run the model's own code, found by reading the file, never by loading it.

The converter and the optimizer load user models with different libraries (Keras 3, tf-keras through
TFMOT, TensorFlow's SavedModel loader), and not all of them refuse code: tf-keras loads a legacy HDF5
file's ``Lambda`` layer (marshalled Python bytecode) and runs it even with ``safe_mode=True``, and a
SavedModel's graph may read or write files when it runs. So both services ask ``check_model_code``
before any loader sees the file: it lists the code-carrying parts and refuses them unless the job may
run remote code (``modelport.trust.remote_code_allowed``: server setting and request flag).

- Keras (``.keras`` zip ``config.json``, HDF5 ``model_config``): ``Lambda`` layers, serialized Python
  lambdas (``__lambda__``), and tf-keras ``TFOpLambda`` layers calling TensorFlow functions that touch
  files, Python or the process (``tf.io.*``, ``tf.py_function``, ``tf.raw_ops.*``, ...).
- SavedModel (``saved_model.pb``): ops reachable from its signatures and its init op that read or
  write files, call Python or print to a file (``ReadFile``, ``WriteFile``, ``PyFunc``, ``Save`` ...).

``h5py`` and TensorFlow's protobuf modules are imported lazily (workers have them). Never imports grpc.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from modelport.errors import FailedPrecondition

# ---- Keras -----------------------------------------------------------------------------------------

_RISKY_TF_NAMESPACES = ("io", "compat", "raw_ops", "summary", "debugging", "data", "saved_model", "distribute",
                        "experimental", "config", "lookup", "gfile", "sysconfig", "autograph", "train")
_RISKY_TF_FUNCTIONS = {"py_function", "numpy_function", "py_func", "print", "load_op_library", "load_library",
                       "read_file", "write_file"}


def _keras_config(path: Path) -> Any | None:
    """The model config of a .keras zip or an HDF5 file (None when neither holds one)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("config.json"))
        except (KeyError, zipfile.BadZipFile, ValueError, OSError):
            return None
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
        except OSError:
            return None
        if raw is None:
            return None
        try:
            return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except ValueError:
            return None
    return None


def _risky_tf_function(name: str) -> bool:
    parts = [p for p in str(name).replace("tf.", "", 1).split(".") if p]
    return bool(parts) and (parts[0] in _RISKY_TF_NAMESPACES or parts[-1] in _RISKY_TF_FUNCTIONS)


def _walk_keras(obj: Any, found: list[str], depth: int = 0) -> None:
    if depth > 200 or len(found) >= 20:
        return
    if isinstance(obj, dict):
        cls = obj.get("class_name")
        cfg = obj.get("config") if isinstance(obj.get("config"), dict) else {}
        name = cfg.get("name") or obj.get("name") or "?"
        if cls == "Lambda":
            found.append(f"Lambda layer '{name}'")
        elif cls == "__lambda__" or obj.get("function_type") == "lambda":
            found.append("a serialized Python lambda")
        elif cls in ("TFOpLambda", "SlicingOpLambda") and _risky_tf_function(cfg.get("function", "")):
            found.append(f"{cls} layer '{name}' calling tf.{cfg.get('function')}")
        for v in obj.values():
            _walk_keras(v, found, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _walk_keras(v, found, depth + 1)


def keras_code(path: str | os.PathLike) -> list[str]:
    """The parts of a Keras file that would run code when loaded or run (empty when none)."""
    found: list[str] = []
    _walk_keras(_keras_config(Path(path)), found)
    return found


# ---- SavedModel --------------------------------------------------------------------------------------

# Ops that reach outside the tensor computation: the file system, Python, the process or the network.
RISKY_TF_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst", "Save", "SaveV2", "SaveSlices", "Restore",
    "RestoreV2", "RestoreSlice", "MergeV2Checkpoints", "PyFunc", "PyFuncStateless", "EagerPyFunc", "PrintV2",
    "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount", "DebugNumericSummary",
    "DebugNumericSummaryV2", "WriteSummary", "CreateSummaryFileWriter", "CreateSummaryDbWriter",
    "WriteScalarSummary", "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
    "WriteRawProtoSummary", "ImportEvent", "FlushSummaryWriter", "TFRecordDataset", "TFRecordDatasetV2",
    "TextLineDataset", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2", "MatchingFilesDataset",
    "SqlDataset", "ExperimentalSqlDataset", "LMDBDataset", "ExperimentalLMDBDataset", "CSVDataset", "CSVDatasetV2",
    "ExperimentalCSVDataset", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "SaveDataset", "SaveDatasetV2",
    "LoadDataset", "SnapshotDataset", "SnapshotDatasetV2", "CacheDatasetV2", "DataServiceDataset",
    "DataServiceDatasetV2", "DataServiceDatasetV3", "DataServiceDatasetV4", "WholeFileReader",
    "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2", "TFRecordReader", "TFRecordReaderV2",
    "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "IdentityReader", "IdentityReaderV2", "LMDBReader",
    "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "GenerateVocabRemapping",
    "LoadAndRemapMatrix", "DecodeProtoV2",
})


def _function_attrs(node) -> list[str]:
    names = []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        names.extend(f.name for f in value.list.func)
    return names


def savedmodel_code(root: str | os.PathLike) -> list[str]:
    """Ops of a SavedModel folder, reachable from its signatures or init op, that leave the tensor
    computation (files, Python, printing to a file). Reads saved_model.pb only."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString((Path(root) / "saved_model.pb").read_bytes())
    found: set[str] = set()
    for mg in sm.meta_graphs:
        library = {f.signature.name: f for f in mg.graph_def.library.function}
        nodes = {n.name: n for n in mg.graph_def.node}
        pending_nodes = []
        for sig in mg.signature_def.values():
            pending_nodes.extend(t.name.split(":")[0] for t in list(sig.outputs.values()) + list(sig.inputs.values()))
        if mg.collection_def.get("saved_model_main_op") is not None:
            pending_nodes.extend(mg.collection_def["saved_model_main_op"].node_list.value)
        seen_nodes: set[str] = set()
        pending_funcs: list[str] = []
        while pending_nodes:
            name = pending_nodes.pop().lstrip("^")
            if name in seen_nodes or name not in nodes:
                continue
            seen_nodes.add(name)
            node = nodes[name]
            if node.op in RISKY_TF_OPS:
                found.add(node.op)
            pending_funcs.extend(_function_attrs(node))
            if node.op in library:
                pending_funcs.append(node.op)
            pending_nodes.extend(i.split(":")[0] for i in node.input)
        seen_funcs: set[str] = set()
        while pending_funcs:
            fname = pending_funcs.pop()
            if fname in seen_funcs or fname not in library:
                continue
            seen_funcs.add(fname)
            for node in library[fname].node_def:
                if node.op in RISKY_TF_OPS:
                    found.add(node.op)
                pending_funcs.extend(_function_attrs(node))
                if node.op in library:
                    pending_funcs.append(node.op)
    return sorted(found)


# ---- the one check -------------------------------------------------------------------------------------


def check_model_code(path: str | os.PathLike, fmt: str, trusted: bool) -> list[str]:
    """Refuse a model whose file carries code unless ``trusted`` (what ``remote_code_allowed`` decided).

    ``fmt`` is ``keras``/``h5`` (the file) or ``savedmodel`` (the unpacked folder); other formats carry
    no code of their own. Returns what was found (empty for a plain model).
    """
    if fmt in ("keras", "h5"):
        found = keras_code(path)
    elif fmt == "savedmodel":
        found = savedmodel_code(path)
    else:
        return []
    if found and not trusted:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise FailedPrecondition(
            f"the model carries code that would run inside the service ({shown}); it was refused. If you trust "
            "where the model comes from, send trust_remote_code=true to a service whose operator started it with "
            "--allow-remote-code; otherwise re-export the model without Lambda layers or file/Python ops",
            {"reason": "unsafe_code", "setting": "allow_remote_code"},
        )
    return found
