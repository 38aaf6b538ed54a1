"""The deploy spec: every option of ``modelport deploy`` (flags and ``-f pipeline.yaml`` alike).

Unknown keys, wrong types and missing files are refused with ``SpecError`` naming each problem.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelport.techniques import ALL_TECHNIQUES as TECHNIQUES

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class SpecError(ValueError):
    """A pipeline spec (file or flags) that cannot run; ``problems`` lists each one."""

    def __init__(self, problems: list[str], source: str = "pipeline spec"):
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))


class BatchingSpec(BaseModel):
    """Dynamic batching the inference service applies to the deployed model."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(0, ge=0)
    max_queue_delay_us: int = Field(0, ge=0)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_size: int = Field(0, ge=0)


class DeploySpec(BaseModel):
    """Every option of ``modelport deploy``; a pipeline YAML file holds the same keys."""

    model_config = ConfigDict(extra="forbid")

    model: Path
    """The trained model: .keras, .h5, .tflite, .onnx, or a SavedModel folder."""
    name: str | None = None
    """Served model name (default: the model file's stem)."""
    version: str = ""
    """Served version (default: one more than the highest loaded)."""
    target: Literal["onnx"] = "onnx"
    """Serving format; the inference service runs ONNX."""
    optimize: list[str] = Field(default_factory=lambda: ["auto"])
    """auto, none, or technique names."""
    goal: Literal["latency", "size"] = "latency"
    calib: Path | None = None
    """NPZ calibration data (inputs by name or 'x') for int8-static / tflite-int8."""
    eval: Path | None = None
    """NPZ evaluation data (inputs + optional 'y' labels) for accuracy, parity and the smoke test."""
    train: Path | None = None
    """NPZ fine-tuning data for prune / cluster / qat / distill."""
    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0)
    relative_drop: bool = False
    ep: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"
    opset: int = 0
    options: dict[str, str] = Field(default_factory=dict)
    """Technique parameters, e.g. prune.sparsity: '0.8'."""
    batching: BatchingSpec | None = None
    trust_remote_code: bool = False
    generation: Literal["auto", "on", "off"] = "auto"
    """auto: a keras_hub causal LM (or decoder backbone) .keras deploys on the generation path (KV-cache step,
    weight-only quantization, streamed tokens); on: require that; off: plain ONNX (logits/hidden states)."""
    parity_samples: int = Field(16, ge=1, le=4096)
    """How many eval rows the converter's parity check uses."""
    keep_versions: int = Field(0, ge=0)
    offline: bool = False
    output: Path | None = None
    """Offline bundle folder (default ./<name>-repository)."""

    @field_validator("optimize", mode="before")
    @classmethod
    def _split_optimize(cls, v: Any):
        if v is None:
            return ["auto"]
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list | tuple):
            out: list[str] = []
            for item in v:
                if not isinstance(item, str):
                    return v  # let the type check report it
                out += [p.strip() for p in item.split(",") if p.strip()]
            return out
        return v

    @field_validator("optimize")
    @classmethod
    def _check_techniques(cls, v: list[str]) -> list[str]:
        unknown = [t for t in v if t not in (*TECHNIQUES, "auto", "none")]
        if unknown:
            raise ValueError(f"unknown technique(s) {', '.join(unknown)}; use auto, none or some of: "
                             + ", ".join(TECHNIQUES))
        if len(v) > 1 and ({"auto", "none"} & set(v)):
            raise ValueError("'auto' and 'none' stand alone; do not mix them with technique names")
        return v or ["auto"]

    @field_validator("model")
    @classmethod
    def _model_exists(cls, v: Path) -> Path:
        if not v.exists():
            raise ValueError(f"model file not found: {v}")
        return v

    @field_validator("calib", "eval", "train")
    @classmethod
    def _npz_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"data file not found: {v} (an NPZ with inputs by name or 'x', optional 'y')")
        return v

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError(f"invalid model name {v!r}: use letters, digits, '_', '-', '.' (starting with a "
                             "letter or digit)")
        return v

    @field_validator("opset")
    @classmethod
    def _opset_ok(cls, v: int) -> int:
        if v and not 13 <= v <= 18:
            raise ValueError(f"opset {v} is not supported; use 13..18 (0 = the converter's default)")
        return v

    @model_validator(mode="after")
    def _defaults(self) -> DeploySpec:
        if self.name is None:
            stem = re.sub(r"[^A-Za-z0-9_.-]", "-", self.model.stem if self.model.is_file() else self.model.name)
            self.name = stem.lstrip("-_.") or "model"
        if "int8-static" in self.optimize and self.calib is None and self.eval is None:
            raise ValueError("int8-static needs calibration data: pass calib (or eval) as an NPZ file")
        return self

    @property
    def techniques(self) -> list[str]:
        return [] if self.optimize == ["none"] else list(self.optimize)


def _format_error(err: dict, fields: list[str]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ())) or "(spec)"
    kind = err.get("type", "")
    msg = err.get("msg", "")
    if kind == "extra_forbidden":
        return f"unknown key '{loc}' (allowed keys: {', '.join(fields)})"
    if kind == "missing":
        return f"missing required key '{loc}'"
    if kind == "value_error":
        return f"'{loc}': {msg.removeprefix('Value error, ')}" if loc != "(spec)" else msg.removeprefix("Value error, ")
    if kind == "literal_error":
        return f"'{loc}': {msg.lower()}, got {err.get('input')!r}"
    return f"'{loc}': {msg.lower()} (got {err.get('input')!r})"


def validate_spec(data: dict[str, Any], source: str = "pipeline spec") -> DeploySpec:
    """A DeploySpec from a mapping, or ``SpecError`` listing every problem in plain words."""
    try:
        return DeploySpec.model_validate(data)
    except ValidationError as e:
        fields = list(DeploySpec.model_fields)
        raise SpecError([_format_error(err, fields) for err in e.errors()], source) from None


def load_spec(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> DeploySpec:
    """Read a pipeline YAML (relative paths resolve against its folder) and apply flag overrides.

    ``overrides`` with value None are ignored (flag not given); flags win over the file.
    """
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise SpecError([f"pipeline file not found: {path}"], source)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SpecError([f"not valid YAML: {e}"], source) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise SpecError([f"the top level must be a mapping of options, got {type(loaded).__name__}"], source)
        for key in ("model", "calib", "eval", "train", "output"):
            if isinstance(loaded.get(key), str) and not Path(loaded[key]).expanduser().is_absolute():
                loaded[key] = str(path.parent / Path(loaded[key]).expanduser())
        data.update(loaded)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate_spec(data, source)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an NPZ data file (inputs by name or 'x', optional 'y'); ValueError naming the file."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable NPZ file ({e}); write it with numpy.savez(path, x=..., y=...)") \
            from None

