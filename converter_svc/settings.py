"""Settings of the converter service (env prefix MODELPORT_CONVERTER_, flags override)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from modelport.runtime.job_service import JobServiceSettings


class ConverterSettings(JobServiceSettings):
    """modelport converter service."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_CONVERTER_", extra="ignore", use_attribute_docstrings=True)

    port: int = 50051
    """gRPC port (0 picks a free one)."""
    onnx2tf_python: str = ""
    """Python of a separate venv with onnx2tf (needs Python >= 3.12) used for ONNX -> TFLite/SavedModel;
    empty = ``.venv-onnx2tf/bin/python`` in the repo if present, else those targets answer UNIMPLEMENTED."""
    onnx2torch_python: str = ""
    """Python of a separate venv with torch (CPU) and onnx2torch, used for the ``pytorch`` target; empty =
    ``.venv-onnx2torch/bin/python`` in the repo if present, else that target answers UNIMPLEMENTED."""
