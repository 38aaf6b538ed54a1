"""The typed records converter and optimizer jobs take and return; the domain code sees only these.

They mirror the ``modelport.v1`` messages field for field (same names, proto3 defaults), so the one
codec (``modelport.runtime.job_codec``) maps them both ways and the wire contract stays the
protos'. What a job is asked (``ConvertJob``, ``OptimizeJob``) and what it reports once done
(``ConvertResult``, ``OptimizeResult``) are frozen; the reports a job fills in as it measures and
ranks (``ModelInfo``, ``OutputParity``, ``ParityReport``, ``CandidateReport``) are plain dataclasses.
An optional message is ``None`` when absent (an artifact not stored, a ref the request left empty).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ArtifactRef:
    """A stored artifact: content digest, size, media type and the service that holds it."""

    digest: str = ""
    size: int = 0
    media_type: str = ""
    origin: str = ""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, KServe datatype (``FP32``, ``INT64``...) and shape (-1 = dynamic)."""

    name: str = ""
    datatype: str = ""
    shape: tuple[int, ...] = ()


@dataclass
class ModelInfo:
    """What a model is: format, inputs/outputs, opset, producer, size, parameters and format details."""

    format: str = ""
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    opset: int = 0
    producer: str = ""
    size_bytes: int = 0
    parameter_count: int = 0
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class OutputParity:
    """Parity of one output (``modelport.parity`` says how each figure is judged)."""

    name: str = ""
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    allclose: bool = False
    nan_or_inf: bool = False
    top1_agreement: float = 0.0
    cosine: float = 0.0
    topk_agreement: float = 0.0
    top_k: int = 0
    quant_scale: float = 0.0
    quant_zero_point: int = 0
    max_diff_steps: float = 0.0
    mean_diff_steps: float = 0.0
    passed: bool = False
    judged_by: str = ""
    quant_source: str = ""


@dataclass
class ParityReport:
    """Parity of every output, the tolerances that judged them and the samples they ran on."""

    outputs: list[OutputParity] = field(default_factory=list)
    passed: bool = False
    rtol: float = 0.0
    atol: float = 0.0
    samples: int = 0
    inputs_source: str = ""
    quant_max_steps: float = 0.0
    quant_mean_steps: float = 0.0
    min_cosine: float = 0.0
    min_topk_agreement: float = 0.0


@dataclass(frozen=True)
class ParityOptions:
    """How a conversion is verified; 0 / empty takes the default (``modelport.parity``)."""

    samples_digest: str = ""
    """The NPZ artifact of sample inputs; empty = generated inputs (``num_samples``, ``seed``)."""
    num_samples: int = 0
    rtol: float = 0.0
    atol: float = 0.0
    allow_mismatch: bool = False
    seed: int = 0
    quant_max_steps: float = 0.0
    quant_mean_steps: float = 0.0
    min_cosine: float = 0.0
    min_topk_agreement: float = 0.0


@dataclass(frozen=True)
class ConvertJob:
    """One conversion to run: the stored source, the target and how to verify it."""

    source_digest: str
    target_format: str = ""
    opset: int = 0
    parity: ParityOptions = ParityOptions()
    trust_remote_code: bool = False
    fixed_batch_size: int = 0


@dataclass(frozen=True)
class ConvertResult:
    """A finished conversion: the stored target, its info, the parity report and the source's info."""

    artifact: ArtifactRef | None = None
    info: ModelInfo | None = None
    parity: ParityReport | None = None
    source_info: ModelInfo | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class AccuracyBudget:
    """The quality drop a candidate may have: absolute, or a fraction of the baseline's (``relative``)."""

    max_drop: float = 0.0
    relative: bool = False


@dataclass(frozen=True)
class OptimizeJob:
    """One optimization to run; artifacts the request did not name are ``None``."""

    model: ArtifactRef
    techniques: tuple[str, ...] = ()
    goal: str = "latency"
    """``latency`` or ``size``."""
    budget: AccuracyBudget = AccuracyBudget()
    calibration_data: ArtifactRef | None = None
    train_data: ArtifactRef | None = None
    eval_data: ArtifactRef | None = None
    execution_provider: str = ""
    threads: int = 0
    options: Mapping[str, str] = field(default_factory=dict)
    student: ArtifactRef | None = None
    output_format: str = ""
    trust_remote_code: bool = False


@dataclass
class CandidateReport:
    """One measured (or failed, skipped, stopped) candidate; ranking fills in budget, choice and notes."""

    technique: str = ""
    artifact: ArtifactRef | None = None
    format: str = ""
    size_bytes: int = 0
    gzip_size_bytes: int = 0
    latency_p50_ms: float = 0.0
    latency_p90_ms: float = 0.0
    accuracy: float = 0.0
    agreement: float = 0.0
    max_abs_diff: float = 0.0
    within_budget: bool = False
    chosen: bool = False
    note: str = ""
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizeResult:
    """A finished optimization: the chosen artifact, the baseline, every candidate ranked, and why."""

    artifact: ArtifactRef | None = None
    chosen_technique: str = ""
    baseline: CandidateReport | None = None
    candidates: list[CandidateReport] = field(default_factory=list)
    reason: str = ""
