"""Triton model-repository layout: read and write ``<repo>/<model>/<version>/model.onnx`` + config.pbtxt.

``config.pbtxt`` is protobuf text format of ``inference.ModelConfig``; we parse it against our
subset of Triton's message with unknown fields allowed (a full Triton config still loads) and
write it back with ``text_format``. Used by the inference service (scan at start) and the CLI's
offline bundle writer. No grpc, no onnxruntime.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from modelport.errors import InvalidArgument, NotFound
from modelport.kserve.v2 import model_config_pb2 as mc

CONFIG_FILE = "config.pbtxt"
DEFAULT_MODEL_FILE = "model.onnx"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"

# KServe datatype names <-> Triton config enum (TYPE_STRING is KServe's BYTES).
KSERVE_TO_CONFIG: dict[str, int] = {
    "BOOL": mc.TYPE_BOOL, "UINT8": mc.TYPE_UINT8, "UINT16": mc.TYPE_UINT16, "UINT32": mc.TYPE_UINT32,
    "UINT64": mc.TYPE_UINT64, "INT8": mc.TYPE_INT8, "INT16": mc.TYPE_INT16, "INT32": mc.TYPE_INT32,
    "INT64": mc.TYPE_INT64, "FP16": mc.TYPE_FP16, "FP32": mc.TYPE_FP32, "FP64": mc.TYPE_FP64,
    "BYTES": mc.TYPE_STRING, "BF16": mc.TYPE_BF16,
}
CONFIG_TO_KSERVE: dict[int, str] = {v: k for k, v in KSERVE_TO_CONFIG.items()}


@dataclass
class RepositoryModel:
    """One model folder: its config (possibly empty) and version number -> model file."""

    name: str
    path: Path
    config: mc.ModelConfig
    versions: dict[int, Path] = field(default_factory=dict)
    has_config: bool = False

    def selected_versions(self) -> list[int]:
        """Versions the config's version_policy asks to serve (ascending)."""
        return select_versions(self.config.version_policy, list(self.versions))


# Bounds on a model config read from a file or a request. A config may come from a caller (inside an
# uploaded model-repository archive, or RepositoryModelLoad's 'config' parameter): Triton configs are a
# few KB and nest about 5 levels, while the text-format parser takes seconds per MB and recurses per level.
MAX_CONFIG_BYTES = 256 << 10
MAX_CONFIG_DEPTH = 32


def check_config_size(size: int, source: str) -> None:
    """InvalidArgument for a model config larger than MAX_CONFIG_BYTES."""
    if size > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"{source} is {size} bytes; a model config is at most {MAX_CONFIG_BYTES} bytes "
                              "(Triton configs are a few KB): remove what is not configuration",
                              {"file": source, "limit": str(MAX_CONFIG_BYTES)})


def _nesting(text: str) -> int:
    """The deepest ``{``/``<`` nesting of protobuf text outside strings and comments."""
    depth = deepest = 0
    quote = ""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in "{<":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "}>":
            depth -= 1
        i += 1
    return deepest


def parse_config(text: str, source: str = "config.pbtxt") -> mc.ModelConfig:
    """Parse config.pbtxt text (unknown Triton fields are skipped); InvalidArgument on syntax errors and
    on text past the bounds (MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH levels of nesting)."""
    check_config_size(len(text.encode("utf-8", "surrogatepass")), source)
    if (depth := _nesting(text)) > MAX_CONFIG_DEPTH:
        raise InvalidArgument(f"{source} nests {depth} levels deep; a model config nests at most "
                              f"{MAX_CONFIG_DEPTH} (Triton configs use about 5): fix the braces",
                              {"file": source, "limit": str(MAX_CONFIG_DEPTH)})
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"{source}: {exc}; fix the protobuf text-format syntax of the model config",
                              {"file": source}) from None
    return cfg


def read_config(path: str | os.PathLike) -> mc.ModelConfig:
    """Read a config.pbtxt file (its size checked before it is read)."""
    p = Path(path)
    source = f"{p.parent.name}/{p.name}"  # relative: no internal paths
    check_config_size(p.stat().st_size, source)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start}); save the model "
                              "config as UTF-8", {"file": source}) from None
    return parse_config(text, source)


def format_config(config: mc.ModelConfig) -> str:
    """config.pbtxt text of a ModelConfig."""
    return text_format.MessageToString(config)


def select_versions(policy: mc.ModelVersionPolicy, available: list[int]) -> list[int]:
    """Apply a Triton version policy: latest N (default: latest 1), all, or specific versions."""
    avail = sorted(set(available))
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return avail
    if kind == "specific":
        return sorted(v for v in set(policy.specific.versions) if v in avail)
    n = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions > 0 else 1
    return avail[-n:]


def model_file_name(config: mc.ModelConfig) -> str:
    """The model file inside a version folder (default model.onnx); a plain file name, never a path."""
    name = config.default_model_filename or DEFAULT_MODEL_FILE
    if "/" in name or "\\" in name or "\x00" in name or name in (".", ".."):
        raise InvalidArgument(f"default_model_filename {name[:64]!r} must be a plain file name inside the version "
                              "folder, such as 'model.onnx'", {"field": "default_model_filename"})
    return name


def read_model(folder: str | os.PathLike) -> RepositoryModel:
    """Read one model folder: config.pbtxt (optional) and numeric version folders holding the model."""
    path = Path(folder)
    if not path.is_dir():
        raise NotFound(f"model folder '{path.name}' does not exist", {"model": path.name})
    cfg_path = path / CONFIG_FILE
    has_config = cfg_path.is_file()
    cfg = read_config(cfg_path) if has_config else mc.ModelConfig()
    if cfg.name and cfg.name != path.name:
        raise InvalidArgument(
            f"{path.name}/{CONFIG_FILE}: name '{cfg.name}' differs from its folder '{path.name}'; rename one so "
            "they match",
            {"model": path.name},
        )
    cfg.name = path.name
    fname = model_file_name(cfg)
    versions: dict[int, Path] = {}
    for child in path.iterdir():
        if child.is_dir() and child.name.isdigit() and (child / fname).is_file():
            versions[int(child.name)] = child / fname
    return RepositoryModel(path.name, path, cfg, versions, has_config)


def scan(root: str | os.PathLike, errors: dict[str, str] | None = None) -> dict[str, RepositoryModel]:
    """All models of a repository folder (folders without any version are skipped).

    With ``errors`` given, a model folder that cannot be read (bad config.pbtxt) is recorded
    there as ``name -> message`` instead of failing the whole scan.
    """
    r = Path(root)
    if not r.is_dir():
        raise NotFound(f"model repository {r} does not exist; create it or pass an existing --repository",
                       {"path": str(r)})
    out: dict[str, RepositoryModel] = {}
    for child in sorted(r.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            try:
                m = read_model(child)
            except InvalidArgument as exc:
                if errors is None:
                    raise
                errors[child.name] = exc.message
                continue
            if m.versions:
                out[m.name] = m
    return out


def write_model(root: str | os.PathLike, name: str, version: int, model: str | os.PathLike | bytes,
                config: mc.ModelConfig | None = None) -> Path:
    """Write ``<root>/<name>/<version>/model.onnx`` (+ config.pbtxt when given); returns the file.

    An ONNX ``model`` file with external data brings its data file(s) along, copied beside it in the
    version folder (ONNX Runtime resolves them there); a generation folder (``model.onnx`` + ``generation.json``)
    is copied whole. The version folder appears
    atomically (written in a temp folder, then renamed), so a scanning server never sees a
    half-written model.
    """
    if not name or "/" in name or name.startswith("."):
        raise InvalidArgument(f"model name {name!r} is not a valid folder name; use letters, digits, '-', '_'")
    if int(version) < 1:
        raise InvalidArgument(f"version {version} must be >= 1 (Triton versions are positive integers)")
    model_dir = Path(root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    fname = model_file_name(config) if config is not None else DEFAULT_MODEL_FILE
    final = model_dir / str(int(version))
    if final.exists():
        raise InvalidArgument(f"{final} already exists; pick a new version number")
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        target = tmp / fname
        if isinstance(model, (bytes, bytearray)):
            target.write_bytes(model)
        elif Path(model).is_dir() and (Path(model) / "generation.json").is_file():  # a generation folder, whole
            shutil.copytree(model, tmp, dirs_exist_ok=True)
        elif fname.endswith(".onnx"):
            from modelport.onnx_files import copy_model

            copy_model(model, tmp, fname)
        else:
            shutil.copyfile(model, target)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if config is not None:
        cfg = mc.ModelConfig()
        cfg.CopyFrom(config)
        cfg.name = name
        write_config(model_dir / CONFIG_FILE, cfg)
    return final / fname


def write_config(path: str | os.PathLike, config: mc.ModelConfig) -> None:
    """Write config.pbtxt atomically."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".config.", dir=p.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(format_config(config))
    os.replace(tmp, p)


def make_config(name: str, inputs: list[tuple[str, str, list[int]]], outputs: list[tuple[str, str, list[int]]],
                max_batch_size: int = 0, *, dynamic_batching: bool = False, preferred_batch_sizes=(),
                max_queue_delay_us: int = 0, instance_count: int = 0,
                cpu_accelerators: list[str] | None = None, gpu_accelerators: list[str] | None = None,
                ) -> mc.ModelConfig:
    """Build a ModelConfig. ``inputs``/``outputs`` are ``(name, KServe datatype, dims)``; with
    ``max_batch_size > 0`` dims exclude the batch dimension, as in Triton."""
    cfg = mc.ModelConfig(name=name, platform=PLATFORM, backend=BACKEND, max_batch_size=max_batch_size)
    for n, dt, dims in inputs:
        cfg.input.add(name=n, data_type=KSERVE_TO_CONFIG[dt.upper()], dims=list(dims))
    for n, dt, dims in outputs:
        cfg.output.add(name=n, data_type=KSERVE_TO_CONFIG[dt.upper()], dims=list(dims))
    if dynamic_batching:
        cfg.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes)
        cfg.dynamic_batching.max_queue_delay_microseconds = int(max_queue_delay_us)
    if instance_count:
        cfg.instance_group.add(count=instance_count, kind=mc.ModelInstanceGroup.KIND_CPU)
    for acc in cpu_accelerators or ():
        cfg.optimization.execution_accelerators.cpu_execution_accelerator.add(name=acc)
    for acc in gpu_accelerators or ():
        cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name=acc)
    return cfg


def config_from_onnx(name: str, onnx_path: str | os.PathLike, max_batch_size: int = 0,
                     **kwargs) -> mc.ModelConfig:
    """A ModelConfig describing an ONNX file's inputs and outputs (imports ``onnx`` lazily).

    With ``max_batch_size > 0`` the first dimension is taken as the batch dimension and left out
    of ``dims``. Symbolic/unknown dimensions become -1.
    """
    import onnx

    from modelport.dtypes import ONNX_TO_KSERVE

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def describe(values) -> list[tuple[str, str, list[int]]]:
        """(name, KServe datatype, dims) of graph inputs/outputs."""
        out = []
        for v in values:
            if v.name in inits:
                continue
            tt = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            if max_batch_size > 0:
                dims = dims[1:]
            out.append((v.name, ONNX_TO_KSERVE.get(tt.elem_type, "FP32"), dims))
        return out

    return make_config(name, describe(model.graph.input), describe(model.graph.output), max_batch_size, **kwargs)
