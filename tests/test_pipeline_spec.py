"""Pipeline spec (YAML + flags) validation, and the report's JSON/table rendering."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from gateway.cli import app
from gateway.cli.render import print_report
from modelport.deploy import DeployReport, SpecError, StageReport, load_spec


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "digits.keras"
    model.write_bytes(b"PK\x03\x04 not really a model")
    np.savez(tmp_path / "eval.npz", x=np.zeros((4, 8, 8, 1), np.float32), y=np.arange(4))
    return tmp_path


def write(path, text):
    path.write_text(text)
    return path


def test_spec_file_resolves_relative_paths_and_flags_override(files):
    spec_file = write(files / "pipeline.yaml", "model: digits.keras\nname: digits\noptimize: [fp16, graph]\n"
                                               "eval: eval.npz\nmax_accuracy_drop: 0.02\n"
                                               "batching: {max_batch_size: 16, max_queue_delay_us: 500}\n")
    spec = load_spec(spec_file, {"name": "other", "ep": None})
    assert spec.model == files / "digits.keras"
    assert spec.eval == files / "eval.npz"
    assert spec.name == "other"  # the flag wins
    assert spec.optimize == ["fp16", "graph"]
    assert spec.max_accuracy_drop == 0.02
    assert spec.batching.max_batch_size == 16
    assert spec.ep == "auto"


def test_defaults_name_from_stem_and_comma_techniques(files):
    spec = load_spec(None, {"model": str(files / "digits.keras"), "optimize": ["fp16,int8-dynamic"]})
    assert spec.name == "digits"
    assert spec.techniques == ["fp16", "int8-dynamic"]
    assert load_spec(None, {"model": str(files / "digits.keras"), "optimize": "none"}).techniques == []


def test_unknown_key_is_named_with_the_allowed_keys(files):
    spec_file = write(files / "p.yaml", "model: digits.keras\noptimise: auto\n")
    with pytest.raises(SpecError) as e:
        load_spec(spec_file)
    assert e.value.problems[0].startswith("unknown key 'optimise' (allowed keys: model, name,")
    assert "optimize" in e.value.problems[0]
    assert str(e.value).startswith(str(spec_file))


def test_wrong_types_are_named(files):
    spec_file = write(files / "p.yaml", "model: digits.keras\nmax_accuracy_drop: lots\nep: gpu\nopset: 9\n")
    with pytest.raises(SpecError) as e:
        load_spec(spec_file)
    problems = "\n".join(e.value.problems)
    assert "'max_accuracy_drop': input should be a valid number" in problems and "'lots'" in problems
    assert "'ep': input should be 'auto', 'cpu', 'cuda' or 'tensorrt', got 'gpu'" in problems
    assert "'opset': opset 9 is not supported; use 13..18" in problems
    assert len(e.value.problems) == 3


def test_missing_files_and_bad_techniques(files):
    spec_file = write(files / "p.yaml", "model: nope.keras\ncalib: missing.npz\noptimize: [fp16, turbo]\n")
    with pytest.raises(SpecError) as e:
        load_spec(spec_file)
    problems = "\n".join(e.value.problems)
    assert f"'model': model file not found: {files / 'nope.keras'}" in problems
    assert f"'calib': data file not found: {files / 'missing.npz'}" in problems
    assert "'optimize': unknown technique(s) turbo; use auto, none or some of: graph, fp16," in problems


def test_structural_problems(files):
    with pytest.raises(SpecError, match="pipeline file not found"):
        load_spec(files / "absent.yaml")
    with pytest.raises(SpecError, match="the top level must be a mapping of options, got list"):
        load_spec(write(files / "l.yaml", "- model\n"))
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(write(files / "b.yaml", "model: [unclosed\n"))
    with pytest.raises(SpecError, match="missing required key 'model'"):
        load_spec(write(files / "e.yaml", "name: x\n"))
    with pytest.raises(SpecError, match="'auto' and 'none' stand alone"):
        load_spec(None, {"model": str(files / "digits.keras"), "optimize": ["auto", "fp16"]})
    with pytest.raises(SpecError, match="int8-static needs calibration data"):
        load_spec(None, {"model": str(files / "digits.keras"), "optimize": ["int8-static"]})
    with pytest.raises(SpecError, match="invalid model name 'a b'"):
        load_spec(None, {"model": str(files / "digits.keras"), "name": "a b"})


def test_cli_reports_spec_errors_with_exit_code_2(files):
    spec_file = write(files / "p.yaml", "model: digits.keras\noptimise: auto\nmax_accuracy_drop: lots\n")
    res = CliRunner().invoke(app, ["deploy", "-f", str(spec_file)])
    assert res.exit_code == 2
    text = " ".join(res.output.split())  # rich may wrap lines
    assert f"invalid pipeline spec {spec_file}" in text
    assert "unknown key 'optimise'" in text
    assert "'max_accuracy_drop': input should be a valid number" in text
    res = CliRunner().invoke(app, ["deploy"])
    assert res.exit_code == 2 and "give a MODEL file or a pipeline spec" in res.output


def test_gateway_config_file_and_env(tmp_path, monkeypatch):
    cfg = write(tmp_path / "c.yaml", "inference: 10.0.0.1:9000\nconverterr: x\n")
    res = CliRunner().invoke(app, ["--config", str(cfg), "status"])
    assert res.exit_code == 2
    assert "unknown key 'converterr'" in " ".join(res.output.split())
    from gateway.cli.config import load_config

    write(cfg, "inference: 10.0.0.1:9000\nconverter: 10.0.0.1:1\n")
    monkeypatch.setenv("MODELPORT_CONFIG", str(cfg))
    c = load_config(None, {"converter": "flag:1", "optimizer": None})
    assert (c.converter, c.optimizer, c.inference) == ("flag:1", "127.0.0.1:50052", "10.0.0.1:9000")


def _report(ok: bool) -> DeployReport:
    r = DeployReport(name="digits", model="digits.keras", ok=ok, version="1", execution_provider="CPUExecutionProvider")
    r.stages.append(StageReport("upload", "ok", 0.1, "keras", 1000))
    r.stages.append(StageReport("convert", "ok", 2.0, "onnx", 900, parity="passed: max|diff| 1e-07 on 16 samples"))
    r.stages.append(StageReport("optimize", "ok", 3.0, "onnx", 500, 0.5, float("nan"), data={
        "baseline": {"technique": "baseline", "format": "onnx", "size_bytes": 900, "latency_p50_ms": 1.0,
                     "accuracy": float("nan"), "within_budget": True},
        "candidates": [{"technique": "fp16", "format": "onnx", "size_bytes": 500, "latency_p50_ms": 0.5,
                        "accuracy": 0.97, "within_budget": True, "chosen": True, "note": "fastest"}]}))
    if not ok:
        r.stages.append(StageReport("verify", "failed", detail="FAILED_PRECONDITION: too inaccurate"))
        r.failed_stage = "verify"
        r.error = {"stage": "verify", "code": "FAILED_PRECONDITION", "message": "too inaccurate"}
    return r


def test_report_json_is_strict_json_and_table_renders():
    d = json.loads(_report(True).to_json())  # NaN must not leak into JSON
    assert d["stages"][2]["accuracy"] is None
    assert d["stages"][2]["data"]["baseline"]["accuracy"] is None
    assert [s["stage"] for s in d["stages"]] == ["upload", "convert", "optimize"]
    console = Console(record=True, width=200)
    print_report(console, _report(True))
    text = console.export_text()
    assert "deploy digits" in text and "* fp16" in text and "passed: max|diff| 1e-07" in text
    console = Console(record=True, width=200)
    print_report(console, _report(False))
    assert "deploy failed at stage verify: FAILED_PRECONDITION: too inaccurate" in console.export_text()


def test_rich_progress_renders_stages_from_events():
    from gateway.cli.render import RichProgress
    from modelport.v1 import jobs_pb2

    console = Console(record=True, width=120, force_terminal=False)
    with RichProgress(console) as p:
        p.start("convert")
        p.update("convert", jobs_pb2.JobEvent(stage="converting", progress=0.5).progress, "converting: tf2onnx")
        p.finish("convert", StageReport("convert", "ok", parity="passed: max|diff| 1e-07"))
        p.finish("verify", StageReport("verify", "failed", detail="FAILED_PRECONDITION: [too] inaccurate"))
    text = console.export_text()
    assert "convert" in text and "done passed: max|diff| 1e-07" in text
    assert "FAILED FAILED_PRECONDITION: [too] inaccurate" in text


def test_unreadable_eval_npz_fails_the_upload_stage(files):
    from modelport import Client
    from modelport.deploy import StageFailed, run_pipeline

    (files / "eval.npz").write_bytes(b"not a zip")
    spec = load_spec(None, {"model": str(files / "digits.keras"), "eval": str(files / "eval.npz")})
    with Client(converter="127.0.0.1:1", optimizer="127.0.0.1:1", inference="127.0.0.1:1") as client:
        with pytest.raises(StageFailed) as e:
            run_pipeline(client, spec)
    assert (e.value.stage, e.value.code) == ("upload", "INVALID_ARGUMENT")
    assert f"{files / 'eval.npz'} is not a readable NPZ file" in e.value.message
    assert e.value.report.to_dict()["stages"][0]["status"] == "failed"
