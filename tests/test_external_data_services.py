"""ONNX with external data through the real services: upload as a folder or as model.onnx + data
(streamed, with byte progress), Inspect, onnx->onnx conversion, every ONNX optimizer technique, the
inference service loading it from its store and from a Triton repository, the CLI's folder outputs,
the offline bundle, and the client's memory while it uploads a file far larger than that memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from extdata_fixtures import DATA, embedding_model, embedding_reference
from typer.testing import CliRunner

from gateway.cli import app
from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport import Client, media
from modelport.onnx_files import external_data_files
from modelport.runtime.background import BackgroundServer

ROOT = Path(__file__).resolve().parent.parent
VOCAB, DIM, OUT = 20000, 64, 16
IDS = np.array([[1, 5, 19999], [0, 4093, 3]], np.int64)
REF = embedding_reference(IDS, DIM, OUT)
# int8 shifts each output by a few quantization steps of the weights and activations
TOLERANCE = {"graph": 1e-5, "fp16": 2e-3, "int8-dynamic": 0.05, "int8-static": 0.05}


def _close(y: np.ndarray, technique: str) -> float:
    err = float(np.max(np.abs(y - REF)) / np.max(np.abs(REF)))
    assert err <= TOLERANCE[technique], f"{technique}: max |diff| / max |ref| = {err}"
    return err


def _run(model_path: Path) -> np.ndarray:
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"ids": IDS})[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Three in-process services sharing one store, and a 5 MB embedding model with external data."""
    from gateway.launcher import in_process_services

    root = tmp_path_factory.mktemp("extdata")
    model = embedding_model(root / "src", VOCAB, DIM, OUT)
    cal = root / "cal.npz"
    np.savez(cal, ids=np.random.default_rng(0).integers(0, VOCAB, (32, 3)).astype(np.int64))
    mp = pytest.MonkeyPatch()
    mp.setenv("MODELPORT_CONVERTER_WARM_WORKERS", "0")
    mp.setenv("MODELPORT_OPTIMIZER_WARM_WORKERS", "0")
    try:
        with in_process_services(root / "store") as addrs, Client(**addrs) as client:
            yield {"root": root, "model": model, "cal": cal, "client": client, "addrs": addrs,
                   "store": root / "store"}
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def uploaded(env):
    seen: list[tuple[int, int]] = []
    ref = env["client"].upload(env["model"].parent, progress=lambda done, total: seen.append((done, total)))
    return ref, seen


def test_upload_folder_or_file_with_data_is_one_folder_artifact(env, uploaded):
    ref, seen = uploaded
    assert ref.media_type == media.ONNX_FOLDER and ref.origin == env["addrs"]["converter"]
    data_bytes = (env["model"].parent / DATA).stat().st_size
    assert ref.size > data_bytes
    assert seen[0] == (0, ref.size) and seen[-1] == (ref.size, ref.size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) > 3  # chunk by chunk
    again = env["client"].upload(env["model"])  # model.onnx with its data beside it: the same artifact
    assert again.digest == ref.digest and again.media_type == media.ONNX_FOLDER

    info = env["client"].inspect(ref)
    assert info.format == "onnx" and info.details["external_data"] == DATA
    assert info.parameter_count == VOCAB * DIM + DIM * OUT + OUT and info.size_bytes == ref.size
    assert [(t.name, t.datatype, list(t.shape)) for t in info.inputs] == [("ids", "INT64", [-1, -1])]


def test_upload_of_model_without_its_data_names_the_missing_file(env, tmp_path):
    lone = tmp_path / "model.onnx"
    lone.write_bytes(env["model"].read_bytes())
    with pytest.raises(Exception) as err:
        env["client"].upload(lone)
    assert err.value.code == "INVALID_ARGUMENT" and "model.onnx.data is not beside it" in err.value.message


@pytest.mark.integration
def test_convert_onnx_to_onnx_keeps_external_data_and_downloads_round_trip(env, uploaded, tmp_path):
    ref, _ = uploaded
    res = env["client"].convert(ref, "onnx", opset=16)
    assert res.parity.passed and res.source_info.details["external_data"] == DATA
    assert res.artifact.media_type == media.ONNX_FOLDER and res.info.opset == 16
    folder_model = env["client"].download_model(res.artifact, tmp_path / "out")
    assert folder_model == tmp_path / "out" / "model.onnx"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", DATA]
    assert external_data_files(folder_model) == [DATA]
    assert onnx.load(str(folder_model), load_external_data=False).opset_import[0].version == 16
    np.testing.assert_allclose(_run(folder_model), REF, rtol=1e-5, atol=1e-6)
    named = env["client"].download_model(res.artifact, tmp_path / "flat" / "emb.onnx")
    assert sorted(p.name for p in named.parent.iterdir()) == ["emb.onnx", DATA]
    np.testing.assert_allclose(_run(named), REF, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def optimized(env, uploaded):
    ref, _ = uploaded
    client = env["client"]
    cal = client.upload(env["cal"], media_type=media.NPZ, service="optimizer")
    return client.optimize(ref, list(TOLERANCE), max_accuracy_drop=1.0, calibration_data=cal)


@pytest.mark.integration
@pytest.mark.parametrize("technique", list(TOLERANCE))
def test_each_onnx_technique_reads_and_writes_external_data(env, optimized, technique, tmp_path):
    c = next(c for c in optimized.candidates if c.technique == technique)
    assert c.artifact.digest, c.note
    assert c.artifact.media_type == media.ONNX_FOLDER
    model = env["client"].download_model(c.artifact, tmp_path / technique)
    assert external_data_files(model) == [DATA]  # one data file, beside model.onnx
    files = sorted(p.name for p in model.parent.iterdir())
    assert files == ["model.onnx", DATA]
    assert c.size_bytes == sum(p.stat().st_size for p in model.parent.iterdir())
    _close(_run(model), technique)
    if technique.startswith("int8"):
        assert int(c.details["int8_weight_tensors"]) >= 1


@pytest.mark.integration
def test_inference_loads_folder_artifacts_from_its_store(env, optimized, uploaded):
    client = env["client"]
    ref, _ = uploaded
    loaded = client.load_model("emb", ref)
    assert loaded.model.state == "READY"
    np.testing.assert_allclose(client.infer("emb", {"ids": IDS})["y"], REF, rtol=1e-5, atol=1e-6)
    unpacked = env["store"] / "unpacked" / "sha256" / ref.digest.split(":")[1]
    assert sorted(p.name for p in unpacked.iterdir()) == ["model.onnx", DATA]
    q = next(c for c in optimized.candidates if c.technique == "int8-dynamic")
    client.load_model("emb-int8", q.artifact)  # pulled from the optimizer's store (its origin)
    _close(client.infer("emb-int8", {"ids": IDS})["y"], "int8-dynamic")


def test_inference_serves_model_and_data_from_a_triton_repository(env, tmp_path):
    from modelport import repository

    repository.write_model(tmp_path / "repo", "emb", 1, env["model"],
                           repository.config_from_onnx("emb", env["model"], max_batch_size=8))
    settings = InferenceSettings(port=0, host="127.0.0.1", store=tmp_path / "store", repository=tmp_path / "repo")
    with BackgroundServer(InferenceService(settings)) as srv, Client(inference=srv.address) as client:
        assert [(m.name, m.version, m.state) for m in client.list_models()] == [("emb", "1", "READY")]
        np.testing.assert_allclose(client.infer("emb", {"ids": IDS})["y"], REF, rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_cli_convert_and_optimize_write_model_and_data(env, tmp_path):
    a = env["addrs"]
    flags = ["--converter", a["converter"], "--optimizer", a["optimizer"], "--inference", a["inference"]]
    res = CliRunner().invoke(app, [*flags, "convert", str(env["model"].parent), "--to", "onnx",
                                   "-o", str(tmp_path / "converted"), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["output"] == str(tmp_path / "converted" / "model.onnx")
    assert sorted(p.name for p in (tmp_path / "converted").iterdir()) == ["model.onnx", DATA]
    res = CliRunner().invoke(app, [*flags, "optimize", str(env["model"]), "-t", "int8-dynamic",
                                   "-o", str(tmp_path / "q" / "emb-int8.onnx")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["emb-int8.onnx", DATA]
    _close(_run(tmp_path / "q" / "emb-int8.onnx"), "int8-dynamic")
    assert "upload" in res.output and "download" in res.output  # the byte progress bars


@pytest.mark.integration
def test_offline_bundle_holds_model_and_data_and_is_served(env, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_CONVERTER_WARM_WORKERS", "0")
    monkeypatch.setenv("MODELPORT_OPTIMIZER_WARM_WORKERS", "0")
    out = tmp_path / "bundle"
    res = CliRunner().invoke(app, ["deploy", str(env["model"].parent), "--offline", "-o", str(out), "--name", "emb",
                                   "--optimize", "none", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["stages"][0]["format"] == "onnx" and report["stages"][-1]["detail"] == "emb/1/model.onnx"
    assert sorted(p.name for p in (out / "emb" / "1").iterdir()) == ["model.onnx", DATA]
    assert (out / "emb" / "config.pbtxt").is_file()
    settings = InferenceSettings(port=0, host="127.0.0.1", store=tmp_path / "store", repository=out)
    with BackgroundServer(InferenceService(settings)) as srv, Client(inference=srv.address) as client:
        np.testing.assert_allclose(client.infer("emb", {"ids": IDS})["y"], REF, rtol=1e-5, atol=1e-6)


_UPLOAD_RSS = textwrap.dedent("""
    import json, sys
    from modelport import Client, media

    def rss(field):
        return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024

    path, address = sys.argv[1], sys.argv[2]
    with Client(converter=address) as c:
        c.stat("sha256:" + "0" * 64) if False else None
        before = rss("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
        ref = c.upload(path, media_type=media.OCTET)
        print(json.dumps({"before": before, "peak": rss("VmHWM"), "size": ref.size}))
""")


def test_client_uploads_a_large_file_in_bounded_memory(env, tmp_path):
    """A 512 MiB (sparse) file: the uploading process grows by far less than the file."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(512 << 20)
    p = subprocess.run([sys.executable, "-c", _UPLOAD_RSS, str(big), env["addrs"]["converter"]],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    assert r["size"] == 512 << 20
    assert r["peak"] - r["before"] < 64 << 20, r  # chunks in flight, never the file
    for blob in (env["store"] / "blobs" / "sha256").iterdir():
        if blob.stat().st_size == 512 << 20:
            blob.unlink()  # 512 MiB of zeros: not worth keeping on a shared disk
