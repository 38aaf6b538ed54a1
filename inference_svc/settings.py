"""Settings of the inference service (env prefix MODELPORT_INFERENCE_, flags override)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from modelport.runtime.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    """modelport inference service."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_INFERENCE_", extra="ignore")

    port: int = 8001
    """gRPC port (0 picks a free one)."""
