"""What a deploy reports: one ``StageReport`` per stage in a ``DeployReport``, ``StageFailed``, ``Progress``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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
    cached: bool = False
    """The stage's work was already done (e.g. before a crash): its result came from a store or job cache."""
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

    def cached_stages(self) -> list[str]:
        """The stages whose result came from a cache (a rerun after a crash resumes from them)."""
        return [s.stage for s in self.stages if s.cached]

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

    def transfer(self, stage: str, done: int, total: int, label: str = "") -> None:
        """Bytes moved so far of a transfer (upload, download); by default a fraction of the stage."""
        mib = f"{done / 2**20:.0f}/{total / 2**20:.0f} MiB"
        self.update(stage, done / total if total else 1.0, f"{label} {mib}".strip())

