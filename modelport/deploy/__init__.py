"""What the SDK's ``Client.deploy`` needs: the deploy spec, the stage runner and its report.

``DeploySpec`` / ``load_spec`` (``spec.py``) hold every option of a deploy; ``run_pipeline``
(``runner.py``) chains upload → convert → optimize → verify → load → smoke test through
``modelport.Client`` only; ``DeployReport`` / ``StageReport`` / ``StageFailed`` / ``Progress``
(``report.py``) say what happened. The gateway (``gateway/``) adds the CLI, ``up`` and offline
bundles on top; nothing here imports a service.
"""

from modelport.deploy.report import DeployReport, Progress, StageFailed, StageReport
from modelport.deploy.runner import SMOKE_MAX_SAMPLES, STAGES, run_pipeline
from modelport.deploy.spec import (
    NAME_RE,
    TECHNIQUES,
    BatchingSpec,
    DeploySpec,
    SpecError,
    load_spec,
    read_npz,
    validate_spec,
)

__all__ = [
    "NAME_RE", "SMOKE_MAX_SAMPLES", "STAGES", "TECHNIQUES", "BatchingSpec", "DeployReport", "DeploySpec",
    "Progress", "SpecError", "StageFailed", "StageReport", "load_spec", "read_npz", "run_pipeline",
    "validate_spec",
]
