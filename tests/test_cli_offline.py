"""`modelport deploy --offline`: the same pipeline in-process, a Triton-layout bundle that
`modelport-inference --repository DIR` serves as is, and report.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_fixtures import digits_model
from typer.testing import CliRunner

from gateway.cli import app
from gateway.launcher import Launcher
from modelport import Client
from modelport.repository import read_config

__all__ = ["digits_model"]


def _no_warm_workers(monkeypatch) -> None:
    """In-process services spawn their TensorFlow worker on the first job instead of at startup."""
    monkeypatch.setenv("MODELPORT_CONVERTER_WARM_WORKERS", "0")
    monkeypatch.setenv("MODELPORT_OPTIMIZER_WARM_WORKERS", "0")


@pytest.mark.integration
def test_offline_bundle_is_served_by_the_inference_service(digits_model, tmp_path, monkeypatch):
    _no_warm_workers(monkeypatch)
    d = digits_model
    out = tmp_path / "bundle"
    res = CliRunner().invoke(app, ["deploy", str(d["model"]), "--offline", "-o", str(out), "--name", "digits",
                                   "--optimize", "graph", "--eval", str(d["eval"]), "--max-accuracy-drop", "0.05",
                                   "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ok"] is True and report["bundle"] == str(out)
    assert [s["stage"] for s in report["stages"]] == ["upload", "convert", "optimize", "verify", "load", "smoke",
                                                      "bundle"]
    assert json.loads((out / "report.json").read_text()) == report
    model_file = out / "digits" / "1" / "model.onnx"
    assert model_file.is_file()
    cfg = read_config(out / "digits" / "config.pbtxt")
    assert cfg.name == "digits" and cfg.platform == "onnxruntime_onnx"
    input_name = report["stages"][1]["data"]["inputs"][0]["name"]
    assert [i.name for i in cfg.input] == [input_name]

    # served as is by a separate inference process
    served = Launcher(tmp_path / "store", ports={"inference": 0}, services=("inference",), log_dir=tmp_path / "logs",
                      extra_args={"inference": ["--repository", str(out)]})
    addrs = served.start(timeout=120)
    try:
        with Client(inference=addrs["inference"]) as client:
            assert [(m.name, m.version, m.state) for m in client.list_models()] == [("digits", "1", "READY")]
            probs = next(iter(client.infer("digits", {input_name: d["x_test"]}).values()))
        acc = float(np.mean(np.argmax(probs, 1) == d["y_test"]))
        assert acc == pytest.approx(d["keras_test_accuracy"], abs=0.02)
    finally:
        assert set(served.stop().values()) == {0}


@pytest.mark.integration
def test_offline_failure_writes_report_and_exits_1(tmp_path, monkeypatch):
    _no_warm_workers(monkeypatch)
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    out = tmp_path / "bundle"
    res = CliRunner().invoke(app, ["deploy", str(bad), "--offline", "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 1
    assert "deploy failed at stage convert: INVALID_ARGUMENT" in " ".join(res.output.split())
    report = json.loads((out / "report.json").read_text())
    assert report["failed_stage"] == "convert" and report["error"]["code"] == "INVALID_ARGUMENT"
    assert not (out / "broken").exists()  # no partial bundle
