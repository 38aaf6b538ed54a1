"""The large-model settings are service settings (pydantic-settings: flags > environment > defaults) under
their established environment names, and reach the workers, whose job code reads them from there."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from converter_svc.settings import ConverterSettings
from modelport import memory
from modelport.runtime.settings import parse_settings
from optimizer_svc.settings import OptimizerSettings


def test_defaults_pass_the_route_to_the_workers_and_no_memory_cap():
    s = ConverterSettings()
    assert (s.onnx_export, s.onnx_external_data_bytes, s.memory_limit_bytes) == ("auto", 256 << 20, 0)
    assert s.worker_environment() == {"MODELPORT_ONNX_EXPORT": "auto", "MODELPORT_ONNX_EXTERNAL_DATA_BYTES": str(256 << 20)}
    assert OptimizerSettings().worker_environment() == {}


def test_environment_names_are_kept_and_flags_override_them(monkeypatch):
    monkeypatch.setenv("MODELPORT_ONNX_EXPORT", "classic")
    monkeypatch.setenv("MODELPORT_ONNX_EXTERNAL_DATA_BYTES", "1")
    monkeypatch.setenv("MODELPORT_MEMORY_LIMIT_BYTES", "5000000000")
    s = ConverterSettings()
    assert (s.onnx_export, s.onnx_external_data_bytes, s.memory_limit_bytes) == ("classic", 1, 5_000_000_000)
    assert OptimizerSettings().memory_limit_bytes == 5_000_000_000  # one name for every job service
    f = parse_settings(ConverterSettings, ["--onnx-export", "weights", "--memory-limit-bytes", "7"])
    assert (f.onnx_export, f.onnx_external_data_bytes, f.memory_limit_bytes) == ("weights", 1, 7)
    assert f.worker_environment() == {"MODELPORT_MEMORY_LIMIT_BYTES": "7", "MODELPORT_ONNX_EXPORT": "weights",
                                      "MODELPORT_ONNX_EXTERNAL_DATA_BYTES": "1"}


def test_bad_values_are_refused_with_the_setting_named():
    with pytest.raises(ValidationError, match="onnx_export"):
        ConverterSettings(onnx_export="fast")
    with pytest.raises(ValidationError, match="memory_limit_bytes"):
        OptimizerSettings(memory_limit_bytes=-1)


def test_a_configured_limit_caps_what_is_available():
    budget = memory.available_bytes(limit=12345)
    assert budget.available == 12345 and budget.source == "MODELPORT_MEMORY_LIMIT_BYTES=12345"
    assert memory.available_bytes(limit=0).source != budget.source  # 0 = no cap: the machine's figure
