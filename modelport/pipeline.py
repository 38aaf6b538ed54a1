"""The deploy pipeline the gateway runs, and its YAML spec.

``DeploySpec`` holds every option of ``modelport deploy`` (flags and ``-f pipeline.yaml`` are
the same options; unknown keys, wrong types and missing files are refused with clear messages).
``run_pipeline(client, spec)`` chains upload → convert → optimize → verify → load → smoke test
over the three services through ``modelport.Client`` and returns a ``DeployReport`` (one
``StageReport`` per stage); a failing stage raises ``StageFailed`` carrying the partial report.
``run_offline(spec)`` runs the very same pipeline against in-process services on loopback and
writes a Triton-layout model-repository bundle plus ``report.json``.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelport.techniques import ALL_TECHNIQUES as TECHNIQUES
from modelport.techniques import KERAS_SOURCE_TECHNIQUES as KERAS_TECHNIQUES

STAGES = ("upload", "convert", "optimize", "verify", "load", "smoke")
SMOKE_MAX_SAMPLES = 2048  # the smoke test runs at most this many eval rows through the served model
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# ---- spec ----------------------------------------------------------------------------------
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


# ---- report --------------------------------------------------------------------------------
@dataclass
class StageReport:
    """What one stage did: format, size, latency, accuracy or parity, and how long it took."""

    stage: str
    status: str = "pending"  # ok, failed, skipped, pending
    seconds: float = 0.0
    format: str = ""
    size_bytes: int = 0
    latency_ms: float | None = None
    accuracy: float | None = None
    parity: str = ""
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeployReport:
    """The whole deploy: one StageReport per stage, the endpoint, and the failure if any."""

    name: str
    model: str
    target: str = "onnx"
    ok: bool = False
    version: str = ""
    execution_provider: str = ""
    endpoint: str = ""
    failed_stage: str = ""
    error: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    bundle: str = ""
    seconds: float = 0.0
    stages: list[StageReport] = field(default_factory=list)

    def stage(self, name: str) -> StageReport:
        for s in self.stages:
            if s.stage == name:
                return s
        s = StageReport(name)
        self.stages.append(s)
        return s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN/Inf become null)."""
        return _clean(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, np.generic):
        return _clean(v.item())
    return v


class StageFailed(Exception):
    """A pipeline stage failed; ``report`` holds everything done so far and the reason."""

    def __init__(self, stage: str, code: str, message: str, report: DeployReport):
        super().__init__(f"{stage} failed: {code}: {message}")
        self.stage, self.code, self.message, self.report = stage, code, message, report


class Progress:
    """Receives pipeline progress; the CLI renders it as rich progress bars. Default: silent."""

    def start(self, stage: str, message: str = "") -> None:
        """A stage began."""

    def update(self, stage: str, fraction: float, message: str = "") -> None:
        """Progress of a stage (0..1) with the latest message (from JobEvents for jobs)."""

    def finish(self, stage: str, report: StageReport) -> None:
        """A stage ended (ok, failed or skipped)."""


# ---- the pipeline --------------------------------------------------------------------------
def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _parity_summary(p) -> str:
    if p is None or not p.samples:
        return ""
    worst = max((o.max_abs_diff for o in p.outputs), default=0.0)
    top1 = [o.top1_agreement for o in p.outputs if o.top1_agreement >= 0]
    s = f"{'passed' if p.passed else 'FAILED'}: max|diff| {worst:.2e} on {p.samples} samples"
    if top1:
        s += f", top-1 {min(top1) * 100:.1f}%"
    return s


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an NPZ data file (inputs by name or 'x', optional 'y'); ValueError naming the file."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable NPZ file ({e}); write it with numpy.savez(path, x=..., y=...)") \
            from None


class _Runner:
    def __init__(self, client, spec: DeploySpec, progress: Progress | None):
        self.client = client
        self.spec = spec
        self.progress = progress or Progress()
        self.report = DeployReport(name=spec.name or "model", model=str(spec.model), target=spec.target)
        self.tmp = tempfile.TemporaryDirectory(prefix="modelport-deploy-")
        self.refs: dict[str, Any] = {}
        self.eval_arrays: dict[str, np.ndarray] | None = None

    # one stage: time it, report it, turn any error into StageFailed
    def stage(self, name: str, fn: Callable[[StageReport], None]) -> None:
        from modelport.client import ClientError
        from modelport.errors import ModelportError

        rep = self.report.stage(name)
        self.progress.start(name)
        t0 = time.perf_counter()
        try:
            fn(rep)
            rep.status = rep.status if rep.status == "skipped" else "ok"
        except ClientError as e:
            self._fail(rep, e.code, e.message, t0)
        except StageFailed:
            raise
        except ModelportError as e:
            self._fail(rep, e.status, e.message, t0)
        except ValueError as e:
            self._fail(rep, "INVALID_ARGUMENT", str(e), t0)
        except (OSError, KeyError) as e:
            self._fail(rep, "INVALID_ARGUMENT", f"{type(e).__name__}: {e}", t0)
        finally:
            rep.seconds = time.perf_counter() - t0
        self.progress.finish(name, rep)

    def _fail(self, rep: StageReport, code: str, message: str, t0: float) -> None:
        rep.status = "failed"
        rep.seconds = time.perf_counter() - t0
        rep.detail = f"{code}: {message}"
        self.report.failed_stage = rep.stage
        self.report.error = {"stage": rep.stage, "code": code, "message": message}
        self.progress.finish(rep.stage, rep)
        self.report.seconds = sum(s.seconds for s in self.report.stages)
        raise StageFailed(rep.stage, code, message, self.report)

    def on_job(self, stage: str):
        def cb(ev) -> None:
            self.progress.update(stage, ev.progress, f"{ev.stage}: {ev.message}" if ev.message else ev.stage)
        return cb

    # ---- stages ----
    def upload(self, rep: StageReport) -> None:
        from modelport import media
        from modelport.archive import pack_dir

        spec = self.spec
        self.eval_arrays = read_npz(spec.eval) if spec.eval else None
        path = spec.model
        media_type = None
        if path.is_dir():  # a SavedModel folder travels as one archive artifact
            tar = Path(self.tmp.name) / f"{path.name}.tar"
            pack_dir(path, tar)
            path, media_type = tar, media.SAVEDMODEL
        files = [("model", path, media_type)]
        for key in ("calib", "eval", "train"):
            p = getattr(spec, key)
            if p is not None:
                files.append((key, p, media.NPZ))
        if self.eval_arrays is not None:  # the converter verifies against the original on real rows
            rows = {k: v[: spec.parity_samples] for k, v in self.eval_arrays.items() if k != "y"}
            parity = Path(self.tmp.name) / "parity.npz"
            np.savez(parity, **rows)
            files.append(("parity", parity, media.NPZ))
        for i, (key, p, mt) in enumerate(files):
            self.progress.update("upload", i / len(files), f"{key}: {p.name}")
            self.refs[key] = self.client.upload(p, media_type=mt, service="converter")
        model = self.refs["model"]
        rep.format = model.media_type.rsplit(".", 1)[-1].removesuffix("+tar")
        rep.size_bytes = model.size
        rep.detail = f"{model.digest[:19]}… to converter"
        rep.data = {k: {"digest": r.digest, "size": r.size, "media_type": r.media_type} for k, r in self.refs.items()}

    def convert(self, rep: StageReport) -> None:
        spec = self.spec
        res = self.client.convert(self.refs["model"], spec.target, opset=spec.opset,
                                  parity_samples=self.refs.get("parity"), num_samples=spec.parity_samples,
                                  trust_remote_code=spec.trust_remote_code, on_event=self.on_job("convert"))
        self.convert_result = res
        self.final_ref = res.artifact
        rep.format = res.info.format or spec.target
        rep.size_bytes = res.artifact.size
        rep.parity = _parity_summary(res.parity)
        rep.detail = f"from {res.source_info.format or '?'}" + (f", opset {res.info.opset}" if res.info.opset else "")
        rep.data = {
            "artifact": res.artifact.digest,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in res.info.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in res.info.outputs],
            "parity": [{"output": o.name, "max_abs_diff": o.max_abs_diff, "max_rel_diff": o.max_rel_diff,
                        "allclose": o.allclose, "top1_agreement": o.top1_agreement} for o in res.parity.outputs],
            "parity_passed": res.parity.passed,
            "source_format": res.source_info.format,
        }

    def optimize(self, rep: StageReport) -> None:
        spec = self.spec
        techniques = spec.techniques
        self.optimize_result = None
        if not techniques:
            rep.status = "skipped"
            rep.detail = "--optimize none"
            rep.format = self.report.stage("convert").format
            rep.size_bytes = self.final_ref.size
            return
        keras_source = self.convert_result.source_info.format in ("keras", "h5", "savedmodel")
        # auto on a Keras source gets the original, so TFMOT/TFLite candidates compete too
        use_source = keras_source and (techniques == ["auto"] or bool(KERAS_TECHNIQUES & set(techniques)))
        model = self.refs["model"] if use_source else self.final_ref
        res = self.client.optimize(
            model, techniques, goal=spec.goal, max_accuracy_drop=spec.max_accuracy_drop, relative=spec.relative_drop,
            calibration_data=self.refs.get("calib") or self.refs.get("eval"), train_data=self.refs.get("train"),
            eval_data=self.refs.get("eval"), execution_provider=spec.ep, options=spec.options,
            output_format="onnx", on_event=self.on_job("optimize"))
        self.optimize_result = res
        self.final_ref = res.artifact
        chosen = next((c for c in res.candidates if c.chosen), res.baseline)
        rep.format = chosen.format or "onnx"
        rep.size_bytes = res.artifact.size or chosen.size_bytes
        rep.latency_ms = _finite(chosen.latency_p50_ms)
        rep.accuracy = _finite(chosen.accuracy)
        rep.detail = f"chose {res.chosen_technique or 'baseline'}: {res.reason}".strip()
        base = res.baseline

        def row(c) -> dict[str, Any]:
            return {"technique": c.technique, "format": c.format, "size_bytes": c.size_bytes,
                    "gzip_size_bytes": c.gzip_size_bytes, "latency_p50_ms": c.latency_p50_ms,
                    "latency_p90_ms": c.latency_p90_ms, "accuracy": c.accuracy, "agreement": c.agreement,
                    "max_abs_diff": c.max_abs_diff, "within_budget": c.within_budget, "chosen": c.chosen,
                    "note": c.note}

        rep.data = {"input": "original model" if use_source else "converted onnx",
                    "chosen": res.chosen_technique, "reason": res.reason, "baseline": row(base),
                    "candidates": [row(c) for c in res.candidates]}
        if base.latency_p50_ms and chosen.latency_p50_ms:
            rep.data["speedup"] = base.latency_p50_ms / chosen.latency_p50_ms
        if base.size_bytes and chosen.size_bytes:
            rep.data["size_ratio"] = chosen.size_bytes / base.size_bytes

    def verify(self, rep: StageReport) -> None:
        from modelport.client import ClientError

        spec = self.spec
        cr = self.convert_result
        checks = []
        if cr.parity.samples:
            if not cr.parity.passed:
                raise ClientError("FAILED_PRECONDITION", f"the converted model disagrees with the original "
                                  f"({_parity_summary(cr.parity)})")
            checks.append(f"onnx vs original: {_parity_summary(cr.parity)}")
        rep.parity = "; ".join(checks)
        res = self.optimize_result
        if res is not None:
            chosen = next((c for c in res.candidates if c.chosen), res.baseline)
            base = res.baseline
            acc, base_acc = _finite(chosen.accuracy), _finite(base.accuracy)
            if acc is not None and base_acc is not None:
                drop = base_acc - acc
                limit = spec.max_accuracy_drop * (base_acc if spec.relative_drop else 1.0)
                rep.accuracy = acc
                checks.append(f"accuracy {acc:.4f} vs baseline {base_acc:.4f} (drop {drop:+.4f}, budget {limit:.4f})")
                if drop > limit + 1e-9:
                    raise ClientError("FAILED_PRECONDITION",
                                      f"{res.chosen_technique} drops accuracy by {drop:.4f} > budget {limit:.4f}; "
                                      "raise --max-accuracy-drop or choose other techniques")
            elif chosen.technique != "baseline" and chosen.agreement > 0:
                checks.append(f"top-1 agreement with baseline {chosen.agreement * 100:.1f}%")
                if 1.0 - chosen.agreement > spec.max_accuracy_drop + 1e-9:
                    raise ClientError("FAILED_PRECONDITION",
                                      f"{res.chosen_technique} agrees with the baseline on only "
                                      f"{chosen.agreement * 100:.1f}% of samples (budget {spec.max_accuracy_drop})")
            rep.latency_ms = _finite(chosen.latency_p50_ms)
        from modelport import media

        if self.final_ref.media_type and self.final_ref.media_type != media.ONNX:
            raise ClientError("FAILED_PRECONDITION", f"the chosen model is {self.final_ref.media_type}, but the "
                              "inference service serves ONNX; choose ONNX techniques or --optimize none")
        rep.parity = "; ".join(checks) or "no samples"
        rep.format = "onnx"
        rep.size_bytes = self.final_ref.size
        rep.data = {"checks": checks}

    def load(self, rep: StageReport) -> None:
        from modelport.v1 import serving_pb2

        spec = self.spec
        batching = None
        if spec.batching is not None:
            b = spec.batching
            batching = serving_pb2.BatchingConfig(
                max_batch_size=b.max_batch_size, max_queue_delay_us=b.max_queue_delay_us,
                preferred_batch_sizes=b.preferred_batch_sizes, max_queue_size=b.max_queue_size,
                enabled=b.max_queue_delay_us > 0 or b.max_batch_size > 0)
        resp = self.client.load_model(spec.name, self.final_ref, version=spec.version, execution_provider=spec.ep,
                                      batching=batching, keep_versions=spec.keep_versions)
        m = resp.model
        self.report.version = m.version
        self.report.execution_provider = m.execution_provider
        self.report.endpoint = f"{self.client.inference} (model {m.name}, version {m.version})"
        self.report.warnings += list(resp.warnings)
        if self.optimize_result is not None:  # the ranking holds on a CPU with the same flags only
            from modelport import cpuinfo

            warning = cpuinfo.serving_warning(self.optimize_result.baseline.details.get("cpu_flags"),
                                              self.client.server_metadata().extensions)
            self.report.warnings += [warning] if warning else []
        rep.format = "onnx"
        rep.size_bytes = self.final_ref.size
        rep.detail = f"{m.name} v{m.version} {m.state} on {m.execution_provider}"
        rep.data = {"name": m.name, "version": m.version, "state": m.state, "digest": self.final_ref.digest,
                    "execution_provider": m.execution_provider, "warnings": list(resp.warnings)}

    def smoke(self, rep: StageReport) -> None:
        from modelport.client import ClientError
        from modelport.dtypes import to_numpy_dtype

        spec = self.spec
        meta = self.client.model_metadata(spec.name, self.report.version)
        labels = None
        if self.eval_arrays is not None:
            arrays = {k: v for k, v in self.eval_arrays.items() if k != "y"}
            labels = self.eval_arrays.get("y")
            if set(arrays) == {"x"} and len(meta.inputs) == 1:
                arrays = {meta.inputs[0].name: arrays["x"]}
            dtypes = {t.name: t.datatype for t in meta.inputs}
            arrays = {k: v.astype(to_numpy_dtype(dtypes[k])) if dtypes.get(k, "BYTES") != "BYTES" else v
                      for k, v in arrays.items()}
        else:
            rng = np.random.default_rng(0)
            arrays = {}
            for t in meta.inputs:
                shape = [4 if i == 0 and d < 0 else max(int(d), 1) for i, d in enumerate(t.shape)]
                dt = to_numpy_dtype(t.datatype)
                arrays[t.name] = (rng.random(shape).astype(dt) if dt.kind == "f"
                                  else rng.integers(0, 2, shape).astype(dt))
        n = min(len(next(iter(arrays.values()))), SMOKE_MAX_SAMPLES)
        arrays = {k: v[:n] for k, v in arrays.items()}
        labels = labels[:n] if labels is not None else None
        batch = 64  # requests stay within the model's max batch size when batching is configured
        if spec.batching is not None and spec.batching.max_batch_size > 0:
            batch = min(batch, spec.batching.max_batch_size)
        outs: list[dict[str, np.ndarray]] = []
        lat = []
        for i in range(0, n, batch):
            t0 = time.perf_counter()
            outs.append(self.client.infer(spec.name, {k: v[i:i + batch] for k, v in arrays.items()},
                                          version=self.report.version))
            lat.append((time.perf_counter() - t0) * 1000)
        merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        for k, v in merged.items():
            if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                raise ClientError("FAILED_PRECONDITION", f"output {k} holds NaN or Inf on the smoke inputs")
        rep.latency_ms = float(np.median(lat))
        rep.format = "onnx"
        rep.detail = f"{n} samples in {len(lat)} request(s); outputs " + ", ".join(
            f"{k}{list(v.shape)}" for k, v in merged.items())
        rep.data = {"samples": n, "requests": len(lat), "outputs": {k: list(v.shape) for k, v in merged.items()}}
        if labels is not None and len(merged) >= 1:
            probs = next(iter(merged.values()))
            if probs.ndim == 2 and probs.shape[0] == len(labels):
                acc = float(np.mean(np.argmax(probs, axis=1) == labels.reshape(-1)))
                rep.accuracy = acc
                rep.data["served_accuracy"] = acc
                opt_acc = self.report.stage("verify").accuracy
                if opt_acc is not None and abs(opt_acc - acc) > 0.02:
                    self.report.warnings.append(
                        f"served accuracy {acc:.4f} differs from the optimizer's measurement {opt_acc:.4f}")

    def run(self) -> DeployReport:
        t0 = time.perf_counter()
        try:
            for name in STAGES:
                self.stage(name, getattr(self, name))
        finally:
            self.report.seconds = time.perf_counter() - t0
            self.tmp.cleanup()
        self.report.ok = True
        return self.report


def run_pipeline(client, spec: DeploySpec, progress: Progress | None = None) -> DeployReport:
    """Deploy ``spec.model`` through the services ``client`` talks to; raises StageFailed."""
    return _Runner(client, spec, progress).run()


# ---- offline -------------------------------------------------------------------------------
def write_bundle(client, report: DeployReport, spec: DeploySpec, out: Path) -> Path:
    """Write ``out/<name>/<version>/model.onnx`` + ``config.pbtxt`` (Triton layout); returns the model file.

    The bytes and the config come from the inference service the pipeline loaded and smoke-tested,
    so the bundle holds exactly what was verified. An existing bundle gains a new version.
    """
    from modelport import repository
    from modelport.kserve.v2 import grpc_service_pb2 as kpb
    from modelport.kserve.v2 import grpc_service_pb2_grpc as kgrpc

    name = spec.name
    existing = [int(p.name) for p in (out / name).glob("*") if p.is_dir() and p.name.isdigit()]
    version = int(spec.version) if spec.version.isdigit() else max(existing, default=0) + 1
    stub = kgrpc.GRPCInferenceServiceStub(client.channel("inference"))
    cfg = stub.ModelConfig(kpb.ModelConfigRequest(name=name, version=report.version), timeout=60).config
    with tempfile.TemporaryDirectory(prefix="modelport-bundle-") as tmp:
        model = client.download(report.stage("load").data["digest"], Path(tmp) / "model.onnx", service="inference")
        return repository.write_model(out, name, version, model, cfg)


def run_offline(spec: DeploySpec, progress: Progress | None = None, store: Path | None = None) -> DeployReport:
    """The same pipeline against in-process services on loopback; writes the bundle and report.json."""
    import grpc

    from modelport.client import Client, ClientError
    from modelport.errors import ModelportError
    from modelport.launcher import in_process_services

    out = Path(spec.output or f"./{spec.name}-repository").resolve()
    with tempfile.TemporaryDirectory(prefix="modelport-offline-") as tmp, \
            in_process_services(Path(store or Path(tmp) / "store")) as addrs, Client(**addrs) as client:
        try:
            report = run_pipeline(client, spec, progress)
        except StageFailed as e:
            _write_report(out, e.report)
            raise
        rep = report.stage("bundle")
        if progress:
            progress.start("bundle")
        t0 = time.perf_counter()
        try:
            model_file = write_bundle(client, report, spec, out)
        except (ClientError, grpc.RpcError, OSError, ModelportError) as e:
            code = (e.code if isinstance(e, ClientError) else e.code().name if isinstance(e, grpc.RpcError)
                    else e.status if isinstance(e, ModelportError) else "INTERNAL")
            rep.status, rep.detail = "failed", f"{code}: {e}"
            report.ok, report.failed_stage = False, "bundle"
            report.error = {"stage": "bundle", "code": str(code), "message": str(e)}
            _write_report(out, report)
            raise StageFailed("bundle", str(code), str(e), report) from None
        rep.status, rep.seconds = "ok", time.perf_counter() - t0
        rep.format, rep.size_bytes = "model-repository", sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        rep.detail = str(model_file.relative_to(out))
        rep.data = {"model_file": str(model_file), "config": str(model_file.parent.parent / "config.pbtxt")}
        report.bundle = str(out)
        report.endpoint = f"modelport-inference --repository {out}"
        if progress:
            progress.finish("bundle", rep)
        _write_report(out, report)
    return report


def _write_report(out: Path, report: DeployReport) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".report.json.tmp"
    tmp.write_text(report.to_json())
    tmp.replace(out / "report.json")
