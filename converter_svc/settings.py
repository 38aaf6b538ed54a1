"""Settings of the converter service (env prefix MODELPORT_CONVERTER_, flags override)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from modelport.runtime.settings import ServiceSettings


class ConverterSettings(ServiceSettings):
    """modelport converter service."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_CONVERTER_", extra="ignore")

    port: int = 50051
    """gRPC port (0 picks a free one)."""
