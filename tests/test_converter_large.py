"""Large-model behaviour of the converter service, through real servers and workers: a job that cannot
fit is refused with RESOURCE_EXHAUSTED before any work; a result with external data is one folder
artifact (model.onnx + model.onnx.data) that round-trips; and how the ONNX route is chosen.

Each server here gets its environment before it starts, so its warm worker inherits it.
"""

from __future__ import annotations

import tarfile

import grpc
import numpy as np
import pytest
import tf_models
from converter_fixtures import ConverterClient, make_converter

from modelport.runtime.background import BackgroundServer

pytestmark = pytest.mark.integration


def _server(tmp_path_factory, name: str, env: dict[str, str]):
    """A converter whose (reused, warm) worker starts with ``env``; this process's environment is restored."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        srv = BackgroundServer(make_converter(tmp_path_factory.mktemp(name), worker_max_jobs=0,
                                              max_concurrent_jobs=1)).start()
    return srv, ConverterClient(srv.address)


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    """A converter whose jobs may use 1 MB (MODELPORT_MEMORY_LIMIT_BYTES)."""
    srv, client = _server(tmp_path_factory, "tight-store", {"MODELPORT_MEMORY_LIMIT_BYTES": "1000000"})
    yield client
    client.close()
    srv.stop()


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """A converter that writes every Keras -> ONNX result with external data (threshold 1 byte)."""
    srv, client = _server(tmp_path_factory, "external-store", {"MODELPORT_ONNX_EXTERNAL_DATA_BYTES": "1"})
    yield client
    client.close()
    srv.stop()


def test_job_that_cannot_fit_is_refused_before_loading(tight, tmp_path):
    path = tf_models.save_keras(tf_models.attention_net(), tmp_path / "m.keras")
    ref = tight.upload(path)
    err, events = tight.convert_error(ref, "onnx")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    msg = err.details()
    assert msg.startswith("converting this keras model to onnx (weights as inputs) needs about "), msg
    assert " of memory (" in msg and " MB of weights x 2)" in msg
    assert "but only 1.0 MB is available (MODELPORT_MEMORY_LIMIT_BYTES=1000000)" in msg
    assert "raise MODELPORT_MEMORY_LIMIT_BYTES" in msg
    stages = [e.stage for e in events]
    assert "loading" not in stages and "converting" not in stages  # refused before any work
    assert events[-1].error.code == "RESOURCE_EXHAUSTED"
    assert events[-1].error.details["available_bytes"] == "1000000"
    assert int(events[-1].error.details["needed_bytes"]) > 1000000


def test_external_data_result_is_one_folder_artifact_that_round_trips(external, tmp_path):
    import keras
    import onnxruntime as ort

    from modelport.archive import safe_unpack

    model = tf_models.attention_net()
    path = tf_models.save_keras(model, tmp_path / "m.keras")
    events = external.convert(external.upload(path), "onnx")
    res = events[-1].convert_result
    assert events[-1].stage == "done" and res.parity.passed, res.parity
    assert res.artifact.media_type == "application/vnd.modelport.onnx+tar"
    assert res.info.details["external_data"] == "model.onnx.data"
    assert res.info.details["export"].startswith("weights as inputs")
    assert [t.name for t in res.info.inputs] == ["token_ids"] and [t.name for t in res.info.outputs] == ["label"]

    tar_path = external.download(res.artifact, tmp_path / "result.tar")
    with tarfile.open(tar_path) as tar:
        assert sorted(tar.getnames()) == ["model.onnx", "model.onnx.data"]
    folder = tmp_path / "unpacked"
    folder.mkdir()
    safe_unpack(tar_path, folder, max_bytes=1 << 30, max_files=10)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(3).integers(0, 40, (6, 10)).astype("int32")
    got = sess.run(None, {"token_ids": ids})[0]
    want = keras.saving.load_model(str(path)).predict(ids, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_plan_export_routes(monkeypatch):
    from modelport.conversion import large_export
    from modelport.errors import FailedPrecondition, InvalidArgument

    keras3, saved = large_export.KIND_KERAS3, large_export.KIND_SAVEDMODEL
    monkeypatch.delenv(large_export.ROUTE_ENV, raising=False)
    monkeypatch.delenv(large_export.EXTERNAL_DATA_ENV, raising=False)
    plan = large_export.plan_export(keras3, 10_000)
    assert (plan.route, plan.external, plan.forced) == ("weights", False, False)
    assert large_export.plan_export(keras3, 300 << 20).external  # past the 256 MiB default
    assert large_export.plan_export(saved, 10_000).route == "weights"
    assert large_export.plan_export("Functional", 10_000).route == "classic"  # a tf-keras object
    with pytest.raises(FailedPrecondition, match="2 GiB limit"):
        large_export.plan_export("Functional", 3 << 30)
    monkeypatch.setenv(large_export.EXTERNAL_DATA_ENV, "1000")
    assert large_export.plan_export(keras3, 10_000).external
    monkeypatch.setenv(large_export.ROUTE_ENV, "classic")
    assert large_export.plan_export(keras3, 10_000) == large_export.ExportPlan("classic", False, True, 10_000)
    monkeypatch.setenv(large_export.ROUTE_ENV, "weights")
    with pytest.raises(FailedPrecondition, match="needs a Keras 3 model"):
        large_export.plan_export("Functional", 10_000)
    monkeypatch.setenv(large_export.ROUTE_ENV, "fastest")
    with pytest.raises(InvalidArgument, match="choose auto, weights or classic"):
        large_export.plan_export(keras3, 10_000)


def test_conversion_estimate_per_route(tmp_path, monkeypatch):
    from modelport.conversion import convert, large_export

    monkeypatch.delenv(large_export.ROUTE_ENV, raising=False)
    path = tf_models.save_keras(tf_models.sequential_dense(), tmp_path / "m.keras")
    est = convert.conversion_estimate(path, "keras", "onnx")
    assert est.factor == convert.FACTOR_WEIGHTS_ROUTE and "weights as inputs" in est.what
    assert est.weight_bytes > 0 and est.needed == int(est.weight_bytes * est.factor) + convert.CONVERT_OVERHEAD_BYTES
    monkeypatch.setenv(large_export.ROUTE_ENV, "classic")
    assert convert.conversion_estimate(path, "keras", "onnx").factor == convert.FACTOR_CLASSIC_ROUTE
    assert convert.conversion_estimate(path, "keras", "tflite").factor == convert.FACTOR_OTHER
