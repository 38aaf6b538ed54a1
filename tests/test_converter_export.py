"""keras_model_to_onnx on real Keras 3 and tf-keras models, checked with onnxruntime."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tf_models

pytestmark = pytest.mark.integration


def _run_both(model, onnx_path, feeds: dict[str, np.ndarray]):
    import onnxruntime as ort
    import tensorflow as tf

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)
    args = list(feeds.values())
    ref = [np.asarray(r) for r in tf.nest.flatten(model(args[0] if len(args) == 1 else args, training=False))]
    return sess, got, ref


@pytest.mark.parametrize("builder", ["sequential_dense", "conv_net", "conv1d_net", "recurrent_net",
                                     "attention_net", "subclassed"])
def test_keras3_models_convert_with_names_and_dynamic_batch(builder, tmp_path):
    from modelport.conversion.onnx_export import keras_input_infos, keras_model_to_onnx

    model = getattr(tf_models, builder)()
    out = tmp_path / "m.onnx"
    keras_model_to_onnx(model, out)
    infos = keras_input_infos(model)
    rng = np.random.default_rng(0)
    feeds = {}
    for info in infos:
        shape = [5, *info.shape[1:]]
        feeds[info.name] = (rng.integers(0, 12, shape).astype(info.dtype) if info.dtype.startswith("int")
                            else rng.uniform(-1, 1, shape).astype(info.dtype))
    sess, got, ref = _run_both(model, out, feeds)
    assert [i.shape[0] for i in sess.get_inputs()] == ["batch"] * len(infos)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    if builder == "sequential_dense":
        assert [i.name for i in sess.get_inputs()] == ["features"]
        assert [o.name for o in sess.get_outputs()] == ["probs"]


def test_exact_gelu_uses_erfc_handler(tmp_path):
    import keras

    from modelport.conversion.onnx_export import keras_model_to_onnx

    x_in = keras.Input((6,), name="x")
    model = keras.Model(x_in, keras.layers.Activation("gelu", name="g")(keras.layers.Dense(6)(x_in) * 3.0))
    keras_model_to_onnx(model, tmp_path / "g.onnx")
    x = np.linspace(-4, 4, 24, dtype="float32").reshape(4, 6)
    _, got, ref = _run_both(model, tmp_path / "g.onnx", {"x": x})
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5)


def test_multi_io_keeps_names_and_fixed_batch_on_request(tmp_path):
    from modelport.conversion.onnx_export import keras_model_to_onnx

    model = tf_models.multi_io()
    keras_model_to_onnx(model, tmp_path / "m.onnx", opset=13, fixed_batch_size=2)
    feeds = {"numeric": np.ones((2, 6), "float32"), "category": np.array([[1], [4]], "int32")}
    sess, got, ref = _run_both(model, tmp_path / "m.onnx", feeds)
    assert [i.name for i in sess.get_inputs()] == ["numeric", "category"]
    assert [o.name for o in sess.get_outputs()] == ["cls", "reg"]
    assert sess.get_inputs()[0].shape == [2, 6]
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def _op_types(path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_layer_norms_become_one_node_from_opset_17(tmp_path):
    """tf2onnx's 13-node lowering of Keras LayerNormalization is fused into ONNX LayerNormalization
    (opset >= 17) with the same outputs; older opsets keep the lowering."""
    import keras

    from modelport.conversion.onnx_export import keras_model_to_onnx

    model = tf_models.attention_net()
    # Non-trivial gamma/beta so a wrong fusion (swapped, dropped or misplaced constants) shows.
    for layer in model.layers:
        if isinstance(layer, keras.layers.LayerNormalization):
            gamma, beta = layer.get_weights()
            layer.set_weights([np.linspace(0.5, 2.0, gamma.size, dtype="float32"),
                               np.linspace(-1.0, 1.0, beta.size, dtype="float32")])
    ids = np.random.default_rng(1).integers(0, 40, (6, 10)).astype("int32")
    keras_model_to_onnx(model, tmp_path / "ln17.onnx", opset=17)
    keras_model_to_onnx(model, tmp_path / "ln13.onnx", opset=13)
    ops17, ops13 = _op_types(tmp_path / "ln17.onnx"), _op_types(tmp_path / "ln13.onnx")
    assert ops17.count("LayerNormalization") == 2
    assert "GlobalAveragePool" not in ops17 and "Reciprocal" not in ops17
    assert "LayerNormalization" not in ops13 and ops13.count("GlobalAveragePool") == 4
    for name in ("ln17.onnx", "ln13.onnx"):
        _, got, ref = _run_both(model, tmp_path / name, {"token_ids": ids})
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5)


def test_layer_norm_on_rank2_input_is_left_alone(tmp_path):
    import keras

    from modelport.conversion.onnx_export import keras_model_to_onnx

    x_in = keras.Input((8,), name="x")
    model = keras.Model(x_in, keras.layers.LayerNormalization(name="ln")(keras.layers.Dense(8)(x_in)))
    keras_model_to_onnx(model, tmp_path / "ln2.onnx")
    assert "LayerNormalization" not in _op_types(tmp_path / "ln2.onnx")
    x = np.random.default_rng(2).normal(size=(3, 8)).astype("float32")
    _, got, ref = _run_both(model, tmp_path / "ln2.onnx", {"x": x})
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5)


def test_reshapes_get_constant_targets_and_keep_every_batch_size(tmp_path):
    """Keras 3 Flatten and Dense on 3-D inputs (tf2onnx Tensordot) rebuild their reshape target from
    Shape/Gather/Concat on every call; the export gives them constant targets (-1 for the batch) and
    drops that arithmetic, with the same outputs at any batch size."""
    import keras

    from modelport.conversion.onnx_export import keras_model_to_onnx

    img = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(img)
    flat = keras.layers.Dense(5, name="flat")(keras.layers.Flatten()(h))
    seq = keras.Input((6, 3), name="seq")
    per_step = keras.layers.Dense(4, name="per_step")(seq)  # a Tensordot over the last axis
    model = keras.Model([img, seq], [flat, per_step])
    keras_model_to_onnx(model, tmp_path / "r.onnx")
    ops = _op_types(tmp_path / "r.onnx")
    assert "Shape" not in ops and "Concat" not in ops and "Gather" not in ops, ops
    rng = np.random.default_rng(3)
    for batch in (1, 4, 9):
        feeds = {"image": rng.random((batch, 8, 8, 1), dtype=np.float32),
                 "seq": rng.random((batch, 6, 3), dtype=np.float32)}
        _, got, ref = _run_both(model, tmp_path / "r.onnx", feeds)
        for g, r in zip(got, ref, strict=True):
            assert g.shape == r.shape
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_bad_opset_is_invalid_argument(tmp_path):
    from modelport.conversion.onnx_export import keras_model_to_onnx
    from modelport.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="choose 13..18"):
        keras_model_to_onnx(tf_models.sequential_dense(), tmp_path / "m.onnx", opset=19)


_TF_KERAS_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np, onnxruntime as ort, tensorflow as tf
    from modelport.conversion.onnx_export import keras_model_to_onnx
    k = tf.keras
    assert k.__name__.startswith("tf_keras"), k.__name__
    seq = k.Sequential([k.Input((8,), name="feat"), k.layers.Dense(4, activation="relu"),
                        k.layers.Dense(3, activation="softmax", name="probs")])
    class Sub(k.Model):
        def __init__(self):
            super().__init__()
            self.d = k.layers.Dense(2)
        def call(self, x):
            return self.d(x)
    sub = Sub(); sub(np.zeros((1, 5), "float32"))
    for m, width, name in [(seq, 8, "feat"), (sub, 5, None)]:
        keras_model_to_onnx(m, sys.argv[1])
        s = ort.InferenceSession(sys.argv[1])
        x = np.random.default_rng(0).uniform(size=(3, width)).astype("float32")
        got = s.run(None, {s.get_inputs()[0].name: x})[0]
        assert np.abs(got - m(x).numpy()).max() < 1e-5
        assert name is None or s.get_inputs()[0].name == name
    print("OK")
""")


def test_tf_keras_models_convert_under_legacy_keras(tmp_path):
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", _TF_KERAS_SCRIPT, str(tmp_path / "t.onnx")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")
