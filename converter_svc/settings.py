"""Settings of the converter service (env prefix MODELPORT_CONVERTER_, flags override)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from modelport.runtime.settings import ServiceSettings


class ConverterSettings(ServiceSettings):
    """modelport converter service."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_CONVERTER_", extra="ignore", use_attribute_docstrings=True)

    port: int = 50051
    """gRPC port (0 picks a free one)."""
    max_concurrent_jobs: int = 1
    """Conversions running at once (one worker process each); further jobs queue and say so."""
    job_timeout_s: float = 1800.0
    """Per-job limit in seconds (Convert and Inspect); a job past it is stopped (DEADLINE_EXCEEDED)."""
    worker_max_jobs: int = 1
    """Jobs a worker runs before it exits and a warm spare replaces it (memory goes back); 0 = reuse forever."""
    warm_workers: int = 1
    """Workers started (TensorFlow pre-imported) before the service reports SERVING."""
    onnx2tf_python: str = ""
    """Python of a separate venv with onnx2tf (needs Python >= 3.12) used for ONNX -> TFLite/SavedModel;
    empty = ``.venv-onnx2tf/bin/python`` in the repo if present, else those targets answer UNIMPLEMENTED."""
