"""Settings of the converter service (env prefix MODELPORT_CONVERTER_, flags override)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
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
    onnx_export: Literal["auto", "weights", "classic"] = Field(
        "auto", validation_alias=AliasChoices("onnx_export", "MODELPORT_ONNX_EXPORT"))
    """How TensorFlow-backed models (Keras 3 .keras/.h5, SavedModel) go to ONNX: auto = with the weights as
    graph inputs, streamed to external data (no 2 GiB limit, ~2x the weights in memory) where the source
    allows it, else tf2onnx with frozen weights; weights = that route or fail; classic = tf2onnx with frozen
    weights always (~18-25x the weights in memory, below 2 GiB). Environment: ``MODELPORT_ONNX_EXPORT``."""
    onnx_external_data_bytes: int = Field(
        256 << 20, ge=1, validation_alias=AliasChoices("onnx_external_data_bytes", "MODELPORT_ONNX_EXTERNAL_DATA_BYTES"))
    """Weight bytes from which an ONNX result is a folder (model.onnx + model.onnx.data) instead of one file
    (a single file is held whole in memory once more to be written, and cannot pass 2 GiB). Environment:
    ``MODELPORT_ONNX_EXTERNAL_DATA_BYTES``."""

    def worker_environment(self) -> dict[str, str]:
        """The export route settings, read by ``modelport.conversion.large_export`` in the workers."""
        return {**super().worker_environment(), "MODELPORT_ONNX_EXPORT": self.onnx_export,
                "MODELPORT_ONNX_EXTERNAL_DATA_BYTES": str(self.onnx_external_data_bytes)}
