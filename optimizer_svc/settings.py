"""Settings of the optimizer service (env prefix MODELPORT_OPTIMIZER_, flags override)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modelport.runtime.job_service import JobServiceSettings


class OptimizerSettings(JobServiceSettings):
    """modelport optimizer service."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_OPTIMIZER_", extra="ignore", use_attribute_docstrings=True)

    port: int = 50052
    """gRPC port (0 picks a free one)."""
    int8_search_s: float = Field(60.0, ge=0.0)
    """Time budget (seconds) of each job's int8-static recipe search: recipes (U8S8/S8S8, per-channel or
    per-tensor, QDQ/QOperator, reduce_range, calibration method, ops left in float) are built and timed on
    this machine in the order of their prior for its CPU until the budget is spent; the first is always
    measured, so 0 measures only the prior's first recipe."""
