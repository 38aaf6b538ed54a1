"""Running a model's own code: a hostile caller gets a clear no, and no code runs.

Real converter and optimizer services started with a token; every model carries code that writes a
marker file when it runs (a Keras 3 Lambda, a tf-keras HDF5 Lambda, a SavedModel whose graph writes a
file). Each attack asserts the status code, the message, that the marker was not written, that nothing
was stored, and that the service still answers health checks. One server started with
``--allow-remote-code`` shows the marker mechanism is real: there, with the request's flag, the code runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from trust_helpers import TOKEN, health, rpc_error, stored_digests, token_channel, upload

from modelport.archive import pack_dir
from modelport.runtime.background import BackgroundServer
from modelport.v1 import converter_pb2, converter_pb2_grpc, optimizer_pb2, optimizer_pb2_grpc

pytestmark = pytest.mark.integration


# ---- models whose code writes a marker ---------------------------------------------------------------


def keras3_lambda(path: Path, marker: Path) -> Path:
    """A Keras 3 .keras model whose Lambda writes ``marker`` when Keras builds or runs it."""
    import keras

    fn = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), t)[1]")  # noqa: S307
    x = keras.Input((4,), name="x")
    y = keras.layers.Dense(2, name="y")(keras.layers.Lambda(fn, name="evil")(x))
    keras.Model(x, y).save(str(path))
    marker.unlink(missing_ok=True)  # saving traced it once
    return path


_TF_KERAS_LAMBDA_H5 = textwrap.dedent("""
    import sys
    import tf_keras
    marker = sys.argv[2]
    fn = eval(f"lambda t: (__import__('pathlib').Path({marker!r}).write_text('ran'), t)[1]")
    x = tf_keras.Input((4,), name="x")
    y = tf_keras.layers.Dense(2, name="y")(tf_keras.layers.Lambda(fn, name="evil")(x))
    tf_keras.Model(x, y).save(sys.argv[1], save_format="h5")
""")


def tf_keras_lambda_h5(path: Path, marker: Path) -> Path:
    """A legacy tf-keras HDF5 model with a Lambda: tf-keras runs it on load even with safe_mode=True."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-c", _TF_KERAS_LAMBDA_H5, str(path), str(marker)], check=True, env=env,
                   capture_output=True, timeout=300)
    marker.unlink(missing_ok=True)
    return path


def savedmodel_writing_a_file(folder: Path, marker: Path) -> Path:
    """A SavedModel (packed as tar) whose serving function writes ``marker`` with tf.io.write_file."""
    import tensorflow as tf

    class WritesFile(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            tf.io.write_file(str(marker), "ran")
            return {"y": x * 2.0}

    m = WritesFile()
    tf.saved_model.save(m, str(folder / "sm"), signatures={"serving_default": m.serve})
    pack_dir(folder / "sm", folder / "sm.tar")
    return folder / "sm.tar"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("code-models")
    markers = {k: d / f"{k}.marker" for k in ("keras", "h5", "savedmodel")}
    files = {"keras": keras3_lambda(d / "evil.keras", markers["keras"]),
             "h5": tf_keras_lambda_h5(d / "evil.h5", markers["h5"]),
             "savedmodel": savedmodel_writing_a_file(d, markers["savedmodel"])}
    return files, markers


def _converter(store: Path, **kw):
    from converter_svc.service import ConverterService
    from converter_svc.settings import ConverterSettings

    kw = {"auth_token": TOKEN, **kw}
    return ConverterService(ConverterSettings(host="127.0.0.1", port=0, store=store, warm_workers=0,
                                              worker_max_jobs=0, **kw))


def _optimizer(store: Path, **kw):
    from optimizer_svc.service import OptimizerService
    from optimizer_svc.settings import OptimizerSettings

    kw = {"auth_token": TOKEN, **kw}
    return OptimizerService(OptimizerSettings(host="127.0.0.1", port=0, store=store, warm_workers=0,
                                              worker_max_jobs=0, **kw))


@pytest.fixture(scope="module")
def converter(tmp_path_factory):
    srv = BackgroundServer(_converter(tmp_path_factory.mktemp("conv-store"))).start()
    yield srv
    srv.stop(grace=1)


@pytest.fixture(scope="module")
def optimizer(tmp_path_factory):
    srv = BackgroundServer(_optimizer(tmp_path_factory.mktemp("opt-store"))).start()
    yield srv
    srv.stop(grace=1)


def convert(ch, ref, **kw):
    return list(converter_pb2_grpc.ConverterStub(ch).Convert(
        converter_pb2.ConvertRequest(source=ref, target_format="onnx", **kw), timeout=300))


def optimize(ch, ref, **kw):
    return list(optimizer_pb2_grpc.OptimizerStub(ch).Optimize(
        optimizer_pb2.OptimizeRequest(model=ref, techniques=["graph"], **kw), timeout=300))


# ---- Converter.Inspect is guarded --------------------------------------------------------------------


def test_inspect_without_token_is_unauthenticated_and_pulls_nothing(converter, models, tmp_path, channel_to):
    """The issue's attack: Inspect of a ref whose origin the caller runs, with trust_remote_code, no token."""
    files, markers = models
    origin = BackgroundServer(_converter(tmp_path / "attacker", auth_token=None)).start()
    try:
        with grpc.insecure_channel(origin.address) as ch:
            ref = upload(ch, files["keras"])  # the attacker's own server holds the model
        before = stored_digests(converter.service.store)
        ch = channel_to(converter.address)
        err = rpc_error(lambda: converter_pb2_grpc.ConverterStub(ch).Inspect(
            converter_pb2.InspectRequest(artifact=ref, trust_remote_code=True), timeout=30))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <token>" in err.details()
        assert stored_digests(converter.service.store) == before  # nothing pulled into the store
        assert not markers["keras"].exists()
        assert health(ch) == "SERVING"
    finally:
        origin.stop(grace=1)


# ---- the request's flag alone never turns safe loading off ----------------------------------------


@pytest.mark.parametrize("rpc", ["convert", "inspect"])
def test_trust_remote_code_on_a_default_converter_is_permission_denied(converter, models, rpc):
    files, markers = models
    with token_channel(converter.address) as ch:
        ref = upload(ch, files["keras"])
        before = stored_digests(converter.service.store)
        if rpc == "convert":
            err = rpc_error(lambda: convert(ch, ref, trust_remote_code=True))
        else:
            err = rpc_error(lambda: converter_pb2_grpc.ConverterStub(ch).Inspect(
                converter_pb2.InspectRequest(artifact=ref, trust_remote_code=True), timeout=60))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "--allow-remote-code" in err.details() and "MODELPORT_CONVERTER_ALLOW_REMOTE_CODE" in err.details()
        assert stored_digests(converter.service.store) == before
        assert not markers["keras"].exists()
        assert health(ch) == "SERVING"


@pytest.mark.parametrize("kind", ["keras", "savedmodel"])
def test_model_code_without_the_flag_is_refused_before_it_runs(converter, models, kind):
    files, markers = models
    with token_channel(converter.address) as ch:
        ref = upload(ch, files[kind], media_type="application/x-tar" if kind == "savedmodel" else "")
        before = stored_digests(converter.service.store)
        err = rpc_error(lambda: convert(ch, ref))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        found = "Lambda layer 'evil'" if kind == "keras" else "WriteFile"
        assert found in err.details() and "--allow-remote-code" in err.details()
        assert not markers[kind].exists()
        assert stored_digests(converter.service.store) == before  # no converted artifact
        assert health(ch) == "SERVING"


def test_optimizer_refuses_a_tf_keras_h5_lambda_and_the_flag_alone(optimizer, models, tmp_path):
    """tf-keras would run this Lambda while loading (even with safe_mode): the optimizer never loads it."""
    import keras

    files, markers = models
    x = keras.Input((4,), name="x")
    keras.Model(x, keras.layers.Dense(2, name="y")(x)).save(str(tmp_path / "clean.keras"))
    with token_channel(optimizer.address) as ch:
        ref = upload(ch, files["h5"])
        clean = upload(ch, tmp_path / "clean.keras")
        before = stored_digests(optimizer.service.store)
        err = rpc_error(lambda: optimize(ch, ref))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Lambda layer 'evil'" in err.details() and "trust_remote_code" in err.details()
        err = rpc_error(lambda: optimize(ch, ref, trust_remote_code=True))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "MODELPORT_OPTIMIZER_ALLOW_REMOTE_CODE" in err.details()
        # a code-carrying student for distillation is refused the same way, before the teacher is touched
        err = rpc_error(lambda: optimize(ch, clean, student=ref))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "Lambda layer 'evil'" in err.details()
        assert not markers["h5"].exists()
        assert stored_digests(optimizer.service.store) == before  # no candidate stored
        assert health(ch) == "SERVING"


def test_the_marker_is_real_where_the_operator_allows_remote_code(models, tmp_path):
    """With --allow-remote-code and the request's flag, the same model's code runs (and converts)."""
    files, markers = models
    srv = BackgroundServer(_converter(tmp_path / "allowed", allow_remote_code=True)).start()
    try:
        with token_channel(srv.address) as ch:
            ref = upload(ch, files["keras"])
            err = rpc_error(lambda: convert(ch, ref))  # the server allows it, the request did not ask
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and not markers["keras"].exists()
            events = convert(ch, ref, trust_remote_code=True)
        assert events[-1].convert_result.artifact.digest
        assert markers["keras"].read_text() == "ran"
    finally:
        srv.stop(grace=1)
        markers["keras"].unlink(missing_ok=True)
