"""The gateway CLI and SDK end to end against real services (one launcher-started set per session)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_fixtures import (
    digits_model,
    gateway_args,
    gateway_services,
    tiny_onnx_classifier,
    tiny_onnx_reference,
)
from typer.testing import CliRunner

from gateway.cli import app
from modelport import Client
from modelport.client import ClientError

__all__ = ["digits_model", "gateway_args", "gateway_services"]  # fixtures used by name


def run(args, **kw):
    res = CliRunner().invoke(app, args, catch_exceptions=False, env={"COLUMNS": "200"}, **kw)
    return res


@pytest.fixture(scope="module")
def client(gateway_services):
    with Client(**gateway_services["addresses"], timeout=600) as c:
        yield c


def test_status_cli_table_and_json(gateway_args, gateway_services):
    res = run([*gateway_args, "status"])
    assert res.exit_code == 0, res.output
    assert res.output.count("SERVING") == 3
    data = json.loads(run([*gateway_args, "status", "--json"]).output)
    assert data["ok"] is True
    assert [s["service"] for s in data["services"]] == ["converter", "optimizer", "inference"]
    assert {s["status"] for s in data["services"]} == {"SERVING"}
    with Client(**gateway_services["addresses"]) as c:
        c.wait_ready(timeout=30)  # returns at once: all three are SERVING


def test_status_reports_unreachable_with_exit_1(gateway_args):
    args = list(gateway_args)
    args[args.index("--optimizer") + 1] = "127.0.0.1:1"
    res = run([*args, "status", "--json", "--timeout", "0.5"])
    assert res.exit_code == 1
    data = json.loads(res.output)
    assert data["ok"] is False
    assert {s["service"]: s["status"] for s in data["services"]}["optimizer"] == "UNREACHABLE"


def test_sdk_upload_stat_download_round_trip(client, tmp_path):
    src = tmp_path / "blob.onnx"
    src.write_bytes(np.random.default_rng(1).bytes(3 << 20))
    ref = client.upload(src, service="converter")
    assert ref.digest.startswith("sha256:") and ref.size == 3 << 20
    assert ref.origin == client.converter  # the next service pulls from here
    assert client.stat(ref.digest).digest == ref.digest
    out = client.download(ref, tmp_path / "copy.onnx")
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(ClientError) as e:
        client.stat("sha256:" + "0" * 64)
    assert e.value.code == "NOT_FOUND"
    with pytest.raises(ClientError, match="INVALID_ARGUMENT: .*nope.onnx: no such file"):
        client.upload(tmp_path / "nope.onnx")


def test_load_via_origin_then_infer_models_and_bench_cli(client, gateway_args, tmp_path):
    """Uploaded once to the converter; the inference service pulls it by ref.origin."""
    model = tiny_onnx_classifier(tmp_path / "tiny.onnx")
    ref = client.upload(model, service="converter")
    resp = client.load_model("tiny", ref, execution_provider="cpu")
    assert resp.model.state == "READY" and resp.model.execution_provider == "CPUExecutionProvider"
    x = np.random.default_rng(2).random((5, 4)).astype(np.float32)
    out = client.infer("tiny", {"x": x})
    np.testing.assert_allclose(out["probs"], tiny_onnx_reference(x), rtol=1e-5, atol=1e-6)

    np.savez(tmp_path / "in.npz", x=x)
    res = run([*gateway_args, "infer", "tiny", "--input", str(tmp_path / "in.npz"), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)["outputs"]["probs"]
    assert got["shape"] == [5, 3]
    np.testing.assert_allclose(np.array(got["data"]), tiny_onnx_reference(x), rtol=1e-5, atol=1e-6)
    # JSON input with lists (cast to the model's FP32) and the 'x' -> single-input mapping
    (tmp_path / "in.json").write_text(json.dumps({"x": x[:2].tolist()}))
    res = run([*gateway_args, "infer", "tiny", "--input", str(tmp_path / "in.json")])
    assert res.exit_code == 0, res.output
    assert "probs float32 [2, 3]" in res.output and "argmax: " in res.output
    # a wrong input name is refused with the names the model takes
    np.savez(tmp_path / "bad.npz", a=x, b=x)
    res = run([*gateway_args, "infer", "tiny", "--input", str(tmp_path / "bad.npz")])
    assert res.exit_code == 2 and "unknown input(s) a, b; the model takes x" in " ".join(res.output.split())

    res = run([*gateway_args, "models", "--json"])
    rows = {(m["name"], m["version"]): m for m in json.loads(res.output)["models"]}
    assert rows[("tiny", resp.model.version)]["state"] == "READY"
    assert rows[("tiny", resp.model.version)]["digest"] == ref.digest
    res = run([*gateway_args, "models"])
    assert "tiny" in res.output and "CPUExecutionProvider" in res.output

    res = run([*gateway_args, "bench", "tiny", "--concurrency", "2", "--duration", "0.5", "--warmup", "0.1",
               "--batch", "4", "--json"])
    assert res.exit_code == 0, res.output
    b = json.loads(res.output)
    assert b["requests"] > 0 and b["errors"] == 0 and b["batch"] == 4 and b["concurrency"] == 2
    assert 0 < b["p50_ms"] <= b["p90_ms"] <= b["p99_ms"]
    assert b["samples_per_s"] == pytest.approx(b["throughput_rps"] * 4)

    res = run([*gateway_args, "infer", "nope", "--input", str(tmp_path / "in.npz")])
    assert res.exit_code == 1 and "infer failed: NOT_FOUND" in res.output


REPORT_KEYS = {"name", "model", "target", "ok", "version", "execution_provider", "endpoint", "failed_stage",
               "error", "warnings", "bundle", "seconds", "stages"}
STAGE_KEYS = {"stage", "status", "seconds", "format", "size_bytes", "latency_ms", "accuracy", "parity", "detail", "cached",
              "data"}


@pytest.mark.integration
def test_deploy_end_to_end_json_then_infer(digits_model, gateway_args, client):
    d = digits_model
    res = run([*gateway_args, "deploy", str(d["model"]), "--name", "digits", "--optimize", "graph,fp16",
               "--eval", str(d["eval"]), "--calib", str(d["calib"]), "--max-accuracy-drop", "0.05", "--ep", "cpu",
               "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert set(report) == REPORT_KEYS
    assert report["ok"] is True and report["name"] == "digits" and report["error"] == {}
    assert [s["stage"] for s in report["stages"]] == ["upload", "convert", "optimize", "verify", "load", "smoke"]
    assert all(set(s) == STAGE_KEYS and s["status"] == "ok" for s in report["stages"])
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["convert"]["format"] == "onnx" and stages["convert"]["data"]["parity_passed"] is True
    assert stages["optimize"]["data"]["chosen"] in ("graph", "fp16", "baseline", "")
    assert report["execution_provider"] == "CPUExecutionProvider"
    # optimizer and inference service share this CPU: the flag comparison finds no difference to warn about
    assert not [w for w in report["warnings"] if "CPU" in w], report["warnings"]
    # the served model answers like Keras on held-out digits
    assert stages["smoke"]["accuracy"] is not None and stages["smoke"]["accuracy"] > 0.5
    name = stages["convert"]["data"]["inputs"][0]["name"]
    probs = client.infer("digits", {name: d["x_test"][:64]}, version=report["version"])
    served = next(iter(probs.values()))
    assert served.shape == (64, 10)
    assert np.mean(np.argmax(served, 1) == d["y_test"][:64]) > 0.5
    models = {(m.name, m.version): m for m in client.list_models()}
    assert models[("digits", report["version"])].state == "READY"


@pytest.mark.integration
def test_deploy_from_spec_file_rich_output(digits_model, gateway_args, tmp_path):
    d = digits_model
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(f"model: {d['model']}\nname: from-spec\noptimize: none\neval: {d['eval']}\n"
                    "batching: {max_batch_size: 8, max_queue_delay_us: 200}\n")
    res = run([*gateway_args, "deploy", "-f", str(spec), "--name", "digits-plain"])  # the flag wins
    assert res.exit_code == 0, res.output
    for word in ("deploy digits-plain", "upload", "convert", "optimize", "skipped", "verify", "load", "smoke",
                 "deployed digits-plain", "onnx vs original: passed"):
        assert word in res.output


@pytest.mark.integration
def test_convert_and_optimize_single_steps(digits_model, gateway_args, tmp_path):
    import onnxruntime as ort

    d = digits_model
    out = tmp_path / "digits.onnx"
    res = run([*gateway_args, "convert", str(d["model"]), "--to", "onnx", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["output"] == str(out) and result["parity"]["passed"] is True
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {sess.get_inputs()[0].name: d["x_test"]})[0]
    assert np.mean(np.argmax(probs, 1) == d["y_test"]) == pytest.approx(d["keras_test_accuracy"], abs=0.01)

    opt = tmp_path / "digits-fp16.onnx"
    res = run([*gateway_args, "optimize", str(out), "-t", "fp16", "--eval", str(d["eval"]), "-o", str(opt)])
    assert res.exit_code == 0, res.output
    assert "optimization candidates" in res.output and f"wrote {opt}" in " ".join(res.output.split())
    assert opt.is_file() and opt.stat().st_size > 0
    res = run([*gateway_args, "optimize", str(out), "-t", "turbo", "-o", str(opt)])
    assert res.exit_code == 2 and "unknown technique(s) turbo" in res.output


@pytest.mark.integration
def test_sdk_deploy_reports_progress_and_returns_the_report(digits_model, client):
    from modelport.deploy import Progress

    seen: list[tuple[str, str]] = []

    class Recorder(Progress):
        def start(self, stage, message=""):
            seen.append((stage, "start"))

        def finish(self, stage, report):
            seen.append((stage, report.status))

    report = client.deploy(digits_model["model"], name="sdk-digits", optimize="none", progress=Recorder())
    assert report.ok and report.version and report.stage("load").data["state"] == "READY"
    assert seen == [(s, e) for s in ("upload", "convert", "optimize", "verify", "load", "smoke")
                    for e in ("start", "skipped" if s == "optimize" else "ok")]
    assert report.stage("smoke").data["samples"] == 4  # generated from the model's metadata (no --eval)


def test_failing_stage_exits_1_naming_stage_and_reason(gateway_args, tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"PK\x03\x04" + b"\x00garbage" * 64)
    res = run([*gateway_args, "deploy", str(bad), "--json"])
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert report["ok"] is False and report["failed_stage"] == "convert"
    assert report["error"]["code"] == "INVALID_ARGUMENT" and report["error"]["message"]
    assert [s["status"] for s in report["stages"]] == ["ok", "failed"]
    res = run([*gateway_args, "deploy", str(bad)])
    assert res.exit_code == 1
    assert "deploy failed at stage convert: INVALID_ARGUMENT:" in " ".join(res.output.split())


def test_unreachable_service_fails_upload_with_unavailable(tmp_path, gateway_args):
    model = tiny_onnx_classifier(tmp_path / "m.onnx")
    args = list(gateway_args)
    args[args.index("--converter") + 1] = "127.0.0.1:1"
    res = run([*args, "--timeout", "5", "deploy", str(model), "--json"])
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert report["failed_stage"] == "upload" and report["error"]["code"] == "UNAVAILABLE"
    assert "is the converter service running? start all three with `modelport up`" in report["error"]["message"]


def test_bearer_token_is_sent_on_mutating_rpcs(tmp_path):
    from inference_svc.service import InferenceService
    from inference_svc.settings import InferenceSettings
    from modelport.runtime.background import BackgroundServer

    settings = InferenceSettings(host="127.0.0.1", port=0, store=tmp_path / "store", auth_token="s3cret")
    with BackgroundServer(InferenceService(settings)) as srv:
        model = tiny_onnx_classifier(tmp_path / "t.onnx")
        with Client(inference=srv.address) as anonymous:
            with pytest.raises(ClientError) as e:
                anonymous.upload(model, service="inference")
            assert e.value.code == "UNAUTHENTICATED"
        with Client(inference=srv.address, token="s3cret") as client:
            ref = client.upload(model, service="inference")
            assert client.load_model("t", ref).model.state == "READY"
        res = run(["--inference", srv.address, "--auth-token", "s3cret", "models", "--json"])
        assert [m["name"] for m in json.loads(res.output)["models"]] == ["t"]
