"""Settings of the optimizer service (env prefix MODELPORT_OPTIMIZER_, flags override)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from modelport.runtime.job_service import JobServiceSettings


class OptimizerSettings(JobServiceSettings):
    """modelport optimizer service."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_OPTIMIZER_", extra="ignore", use_attribute_docstrings=True)

    port: int = 50052
    """gRPC port (0 picks a free one)."""
