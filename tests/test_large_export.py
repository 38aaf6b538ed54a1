"""Weights-as-inputs export (modelport.conversion.large_export) and the lean .keras loader, on small real
Keras 3 models checked with onnxruntime: outputs equal to Keras, weights in one external data file, the
graph as lean as the classic tf2onnx route's (weight-only nodes folded, LayerNorm fused), and issue 18's
failure classes (a Normalization input layer, a layer that traces to a nested function) converted.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tf_models

pytestmark = pytest.mark.integration


def _randomize(model, seed: int = 0):
    """Non-zero weights everywhere (zero biases let tf2onnx drop Adds and hide differences)."""
    rng = np.random.default_rng(seed)
    for v in model.variables:
        if "int" in str(v.dtype) or "seed" in v.path:
            continue
        if "variance" in v.path:
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype(v.dtype))
        else:
            v.assign((rng.standard_normal(v.shape) * 0.2).astype(v.dtype))
    return model


def _feeds(model, n: int = 4, seed: int = 1) -> dict[str, np.ndarray]:
    from modelport.conversion.onnx_export import keras_input_infos

    rng = np.random.default_rng(seed)
    out = {}
    for info in keras_input_infos(model):
        shape = [n, *info.shape[1:]]
        out[info.name] = (rng.integers(0, 5, shape).astype(info.dtype) if info.dtype.startswith("int")
                          else rng.uniform(-1, 1, shape).astype(info.dtype))
    return out


def _keras_outputs(model, feeds):
    import tensorflow as tf

    args = list(feeds.values())
    y = model(args[0] if len(args) == 1 else args, training=False)
    return [np.asarray(t) for t in (y.values() if isinstance(y, dict) else tf.nest.flatten(y))]


def _ort(path, feeds, level=None, optimized: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if level is not None:
        so.graph_optimization_level = level
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess, sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})


def _conv_bn():
    keras = tf_models._keras()
    x_in = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same")(x_in)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(x_in, keras.layers.Dense(5, name="logits")(x), name="conv_bn")


BUILDERS = {
    "sequential_dense": tf_models.sequential_dense,
    "conv_net": tf_models.conv_net,
    "conv1d_net": tf_models.conv1d_net,
    "recurrent_net": tf_models.recurrent_net,
    "attention_net": tf_models.attention_net,
    "multi_io": tf_models.multi_io,
    "subclassed": tf_models.subclassed,
    "conv_bn": _conv_bn,
}


@pytest.mark.parametrize("builder", list(BUILDERS))
def test_outputs_match_keras_with_weights_in_one_external_file(builder, tmp_path, monkeypatch):
    import onnx

    from modelport.conversion import large_export
    from modelport.conversion.large_export import DATA_FILE, keras_to_onnx_external
    from modelport.conversion.onnx_export import keras_input_infos

    # These models' tensors are mostly under onnx's 1 KiB threshold: send every one out, so onnxruntime has
    # to resolve them all from the data file.
    monkeypatch.setattr(large_export, "EXTERNAL_MIN_BYTES", 1)
    model = _randomize(BUILDERS[builder]())
    path = keras_to_onnx_external(model, tmp_path / "out", opset=17)
    assert path == tmp_path / "out" / "model.onnx"
    data = tmp_path / "out" / DATA_FILE
    assert data.is_file() and data.stat().st_size > 0

    proto = onnx.load_model(str(path), load_external_data=False)
    # The graph's inputs are the model's inputs: no weight is left as a graph input.
    assert [i.name for i in proto.graph.input] == [i.name for i in keras_input_infos(model)]
    size = data.stat().st_size
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external, "no tensor went to the data file"
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            assert info["location"] == DATA_FILE
            assert int(info["offset"]) + int(info["length"]) <= size
        else:  # only small integer tensors (shapes, axes) stay inline
            assert t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32), t.name
    assert proto.graph.node[0].op_type  # a real graph

    feeds = _feeds(model)
    _, got = _ort(path, feeds)
    want = _keras_outputs(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_tensors_from_1_kib_go_to_the_data_file(tmp_path):
    import onnx

    from modelport.conversion.large_export import keras_to_onnx_external

    model = _randomize(tf_models.attention_net())
    proto = onnx.load_model(str(keras_to_onnx_external(model, tmp_path / "a")), load_external_data=False)
    sizes = {}
    for t in proto.graph.initializer:
        n = int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        sizes[t.name] = (n, t.data_location == onnx.TensorProto.EXTERNAL)
    assert any(ext for _, ext in sizes.values()) and any(not ext for _, ext in sizes.values())
    assert all(ext == (n >= 1024) for n, ext in sizes.values()), sizes


@pytest.mark.parametrize("builder", ["attention_net", "conv_net", "multi_io"])
def test_single_file_when_not_external(builder, tmp_path):
    from modelport.conversion.large_export import DATA_FILE, keras_to_onnx_external

    model = _randomize(BUILDERS[builder]())
    path = keras_to_onnx_external(model, tmp_path / "one", opset=17, external=False)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["model.onnx"]
    assert not (tmp_path / "one" / DATA_FILE).exists()
    feeds = _feeds(model)
    _, got = _ort(path, feeds)
    for g, w in zip(got, _keras_outputs(model, feeds), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("builder", ["attention_net", "sequential_dense", "multi_io", "conv1d_net"])
def test_graph_has_the_classic_routes_op_types(builder, tmp_path):
    """Weight-side folding and the LayerNorm fusion still happen: same op multiset as tf2onnx with frozen
    weights, no node left that reads only constants."""
    import onnx

    from modelport.conversion.large_export import keras_to_onnx_external
    from modelport.conversion.onnx_export import keras_model_to_onnx

    model = _randomize(BUILDERS[builder]())
    new = onnx.load_model(str(keras_to_onnx_external(model, tmp_path / "new")), load_external_data=False)
    keras_model_to_onnx(model, tmp_path / "classic.onnx")
    classic = onnx.load_model(str(tmp_path / "classic.onnx"))
    ops_new = Counter(n.op_type for n in new.graph.node)
    ops_classic = Counter(n.op_type for n in classic.graph.node)
    assert ops_new == ops_classic, (ops_new - ops_classic, ops_classic - ops_new)
    if builder == "attention_net":
        assert ops_new["LayerNormalization"] == 2
    inits = {t.name for t in new.graph.initializer}
    # The attention fusion packs each layer's biases with a small node on initializers (folded by onnxruntime
    # at load, kept so the fusion never reads weight data); every other node must have been folded.
    fused = {i for n in new.graph.node if n.domain == "com.microsoft" for i in n.input}
    for n in reversed(new.graph.node):  # the bias packing feeding them (Reshape -> Concat -> bias)
        if set(n.output) <= fused:
            fused |= set(n.input)
    const_only = [n.name for n in new.graph.node if n.input and all(i in inits for i in n.input if i)
                  and not set(n.output) <= fused]
    assert const_only == []


def test_conv_batchnorm_difference_vanishes_at_session_load(tmp_path):
    """tf2onnx folds BatchNormalization into the Conv kernel only when the kernel is a constant. With the
    weights as initializers onnxruntime's basic level does the same at load: the optimized graphs match."""
    import onnx
    import onnxruntime as ort

    from modelport.conversion.large_export import keras_to_onnx_external
    from modelport.conversion.onnx_export import keras_model_to_onnx

    model = _randomize(_conv_bn())
    new = keras_to_onnx_external(model, tmp_path / "new")
    keras_model_to_onnx(model, tmp_path / "classic.onnx")
    raw = Counter(n.op_type for n in onnx.load_model(str(new), load_external_data=False).graph.node)
    assert raw["Conv"] == 2 and raw["BatchNormalization"] == 0  # BN arithmetic folded into two constants
    feeds = _feeds(model)
    level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    _, got_new = _ort(new, feeds, level, tmp_path / "new.opt.onnx")
    _, got_classic = _ort(tmp_path / "classic.onnx", feeds, level, tmp_path / "classic.opt.onnx")
    opt_new = Counter(n.op_type for n in onnx.load_model(str(tmp_path / "new.opt.onnx"), load_external_data=False).graph.node)
    opt_classic = Counter(n.op_type for n in onnx.load_model(str(tmp_path / "classic.opt.onnx")).graph.node)
    assert opt_new == opt_classic
    np.testing.assert_allclose(got_new[0], got_classic[0], rtol=1e-5, atol=1e-5)


def test_fixed_batch_and_names(tmp_path):
    import onnxruntime as ort

    from modelport.conversion.large_export import keras_to_onnx_external

    model = _randomize(tf_models.sequential_dense())
    path = keras_to_onnx_external(model, tmp_path / "fb", fixed_batch_size=2)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in sess.get_inputs()] == [("features", [2, 8])]
    assert [o.name for o in sess.get_outputs()] == ["probs"]
    path = keras_to_onnx_external(model, tmp_path / "dyn")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", 8]


def test_initializers_are_named_after_the_variables(tmp_path):
    import onnx

    from modelport.conversion.large_export import keras_to_onnx_external

    model = _randomize(tf_models.attention_net())
    proto = onnx.load_model(str(keras_to_onnx_external(model, tmp_path / "n")), load_external_data=False)
    names = {t.name for t in proto.graph.initializer}
    emb = next(v.path for v in model.variables if "embedding" in v.path)
    assert emb in names


# ---- issue 18: failure classes of the classic route, fixed at the root ---------------------------------

def _normalization_model(adapted: bool):
    keras = tf_models._keras()
    x_in = keras.Input((6,), name="x")
    if adapted:
        norm = keras.layers.Normalization()
        norm.adapt(np.random.default_rng(0).normal(3.0, 2.0, (64, 6)).astype("float32"))
    else:
        norm = keras.layers.Normalization(mean=np.arange(6.0), variance=np.arange(1.0, 7.0))
    return keras.Model(x_in, keras.layers.Dense(3, name="y")(norm(x_in)))


@pytest.mark.parametrize("adapted", [False, True])
def test_normalization_input_layer_converts(adapted, tmp_path):
    """Its mean/variance are captured tensors: tf2onnx leaves them as graph inputs ("missing from input
    feed"); here they are bound as constants of the model."""
    from modelport.conversion.large_export import keras_to_onnx_external

    model = _normalization_model(adapted)
    path = keras_to_onnx_external(model, tmp_path / "norm", external=False)
    feeds = {"x": np.random.default_rng(2).normal(3.0, 2.0, (5, 6)).astype("float32")}
    sess, got = _ort(path, feeds)
    assert [i.name for i in sess.get_inputs()] == ["x"]
    np.testing.assert_allclose(got[0], _keras_outputs(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_nested_function_layer_is_inlined(tmp_path):
    """A grouped convolution (ConvNeXt's depthwise 7x7) traces to a nested XLA-marked function that tf2onnx
    left as "No Op registered for PartitionedCall"; it is inlined before conversion."""
    import onnx

    from modelport.conversion.large_export import keras_to_onnx_external

    keras = tf_models._keras()
    x_in = keras.Input((10, 10, 8), name="image")
    x = keras.layers.Conv2D(8, 7, padding="same", groups=8, name="dw")(x_in)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    model = _randomize(keras.Model(x_in, keras.layers.GlobalAveragePooling2D(name="pooled")(x)))
    path = keras_to_onnx_external(model, tmp_path / "grouped")
    ops = {n.op_type for n in onnx.load_model(str(path), load_external_data=False).graph.node}
    assert "Conv" in ops and not ops & {"PartitionedCall", "StatefulPartitionedCall"}
    feeds = _feeds(model)
    _, got = _ort(path, feeds)
    np.testing.assert_allclose(got[0], _keras_outputs(model, feeds)[0], rtol=1e-5, atol=1e-5)


# ---- the lean .keras loader -------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["keras", "h5"])
@pytest.mark.parametrize("builder", ["conv_net", "attention_net", "recurrent_net", "multi_io"])
def test_lean_keras_load_equals_keras(builder, ext, tmp_path, monkeypatch):
    import keras

    from modelport.conversion import keras_lean_load

    monkeypatch.setattr(keras_lean_load, "LAZY_MIN_BYTES", 1)  # every array dataset takes the block path
    monkeypatch.setattr(keras_lean_load, "BLOCK_BYTES", 64)  # and several blocks
    model = _randomize(BUILDERS[builder]())
    path = tmp_path / f"m.{ext}"
    model.save(str(path))
    lean = keras_lean_load.load_keras_lean(str(path), safe_mode=True)
    plain = keras.saving.load_model(str(path), compile=False)
    # Dropout's seed generators are not in the weights file (both loads draw one; it only matters when
    # training): compare every other variable.
    lean_vars = [v for v in lean.variables if "seed_generator" not in v.path]
    plain_vars = [v for v in plain.variables if "seed_generator" not in v.path]
    assert [v.path for v in lean_vars] == [v.path for v in plain_vars]
    for a, b in zip(lean_vars, plain_vars, strict=True):
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()), err_msg=a.path)
    feeds = _feeds(plain)
    for g, w in zip(_keras_outputs(lean, feeds), _keras_outputs(plain, feeds), strict=True):
        np.testing.assert_array_equal(g, w)


def test_lean_load_is_used_from_the_size_threshold(tmp_path, monkeypatch):
    from modelport import formats
    from modelport.conversion import keras_lean_load, models

    calls = []
    real = keras_lean_load.load_keras_lean
    monkeypatch.setattr(keras_lean_load, "load_keras_lean", lambda *a: calls.append(a) or real(*a))
    path = tf_models.save_keras(_randomize(tf_models.conv_net()), tmp_path / "m.keras")
    models.load_model(path, formats.KERAS)
    assert calls == []  # a tiny model: plain Keras
    monkeypatch.setattr(models, "KERAS_LEAN_LOAD_MIN", 0)
    loaded = models.load_model(path, formats.KERAS)
    assert len(calls) == 1 and loaded.weight_bytes > 0
    feeds = _feeds(loaded.model)
    out = loaded.run(feeds)
    np.testing.assert_allclose(out["class_probs"], _keras_outputs(loaded.model, feeds)[0], rtol=1e-6)


# ---- SavedModel signatures: variable reads rewired to weight inputs -------------------------------------

@pytest.mark.parametrize("builder", ["attention_net", "conv_net", "multi_io", "subclassed"])
def test_savedmodel_signature_exports_with_weights_as_inputs(builder, tmp_path):
    import onnx

    from modelport import formats
    from modelport.conversion import large_export
    from modelport.conversion.models import load_model

    model = _randomize(BUILDERS[builder]())
    model.export(str(tmp_path / "sm"), verbose=False)
    src = load_model(tmp_path / "sm", formats.SAVEDMODEL)
    assert large_export.source_kind(src) == large_export.KIND_SAVEDMODEL and src.weight_bytes > 0
    fn, signature, outputs = src.tf_function(0)
    trace = large_export.savedmodel_weights_trace(fn, signature, outputs, src.sig.variables)
    path = large_export.export_weights_as_inputs(trace, tmp_path / "out")
    proto = onnx.load_model(str(path), load_external_data=False)
    assert [i.name for i in proto.graph.input] == [s.name for s in src.inputs]  # no weight left as an input
    assert len(trace.weights) == len(src.sig.variables)
    kfeeds = _feeds(model)
    if {s.name for s in src.inputs} == set(kfeeds):  # the signature names the model's inputs (sorted)
        feeds = {s.name: kfeeds[s.name] for s in src.inputs}
    else:  # a subclassed model's signature calls its one input args_0
        feeds = {s.name: v for s, v in zip(src.inputs, kfeeds.values(), strict=True)}
    want = src.run(feeds)
    sess, got = _ort(path, feeds)
    got = dict(zip([o.name for o in sess.get_outputs()], got, strict=True))
    assert set(got) == set(want)
    for name, w in want.items():
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-5, err_msg=name)


_TF_KERAS_SAVEDMODEL = """
import sys
import numpy as np
import tensorflow as tf
tf.keras.utils.set_random_seed(0)
ids = tf.keras.Input((6,), dtype="int32", name="ids")
x = tf.keras.layers.Flatten()(tf.keras.layers.Embedding(50, 8)(ids))
m = tf.keras.Model(ids, tf.keras.layers.Dense(3, name="out")(x))
assert type(m).__module__.startswith("tf_keras"), type(m).__module__
tf.saved_model.save(m, sys.argv[1])
np.save(sys.argv[2], m(np.arange(12, dtype="int32").reshape(2, 6)).numpy())
"""


def test_tf_keras_savedmodel_embedding_lookup_is_rewired(tmp_path):
    """tf-keras embeds with ResourceGather on the variable: it becomes a Gather on the weight input."""
    import os
    import subprocess
    import sys

    from modelport import formats
    from modelport.conversion import large_export
    from modelport.conversion.models import load_model

    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-c", _TF_KERAS_SAVEDMODEL, str(tmp_path / "sm"), str(tmp_path / "ref.npy")],
                   check=True, env=env, capture_output=True, timeout=300)
    src = load_model(tmp_path / "sm", formats.SAVEDMODEL)
    fn, signature, outputs = src.tf_function(0)
    trace = large_export.savedmodel_weights_trace(fn, signature, outputs, src.sig.variables)
    path = large_export.export_weights_as_inputs(trace, tmp_path / "out")
    assert sorted(w.name for w in trace.weights) == ["embedding/embeddings", "out/bias", "out/kernel"]
    _, got = _ort(path, {"ids": np.arange(12, dtype="int32").reshape(2, 6)})
    np.testing.assert_allclose(got[0], np.load(tmp_path / "ref.npy"), rtol=1e-6, atol=1e-6)


def test_savedmodel_with_a_loop_over_variables_falls_back_to_the_classic_route(tmp_path):
    from modelport import formats
    from modelport.conversion import convert, large_export
    from modelport.conversion.models import load_model

    tf_models.recurrent_net().export(str(tmp_path / "sm"), verbose=False)
    src = load_model(tmp_path / "sm", formats.SAVEDMODEL)
    fn, signature, outputs = src.tf_function(0)
    trace = large_export.savedmodel_weights_trace(fn, signature, outputs, src.sig.variables)
    with pytest.raises(large_export.Unsupported, match="uses a variable in a While node"):
        large_export.export_weights_as_inputs(trace, tmp_path / "out")
    out, notes = convert.produce(src, formats.ONNX, tmp_path / "work", 17, 0)
    assert notes["export"].startswith("classic (weights-as-inputs export failed: the SavedModel signature uses")
    assert out.name == "model.onnx" and out.is_file()


# ---- the lean SavedModel loader: only the signature's variables restored -------------------------------

def test_lean_savedmodel_load_restores_one_copy_of_a_keras_export(tmp_path, monkeypatch):
    """Keras 3's model.export() stores every weight twice (the model's variables and the archive's
    _all_variables); the lean load restores the copy the signature reads and leaves the other uninitialized."""
    import tensorflow as tf

    from modelport import formats, memory
    from modelport.conversion import convert, large_export, models
    from modelport.conversion import savedmodel_lean_load as lean

    model = _randomize(tf_models.attention_net())
    model.export(str(tmp_path / "sm"), verbose=False)
    model_bytes = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
    on_disk = memory.weight_bytes(tmp_path / "sm", formats.SAVEDMODEL)
    assert on_disk > 1.9 * model_bytes  # the two copies (plus the checkpoint's own records)

    calls = []
    real = lean.load_savedmodel_lean
    monkeypatch.setattr(lean, "load_savedmodel_lean", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(models, "SAVEDMODEL_LEAN_LOAD_MIN", 0)
    src = models.load_model(tmp_path / "sm", formats.SAVEDMODEL)
    assert len(calls) == 1
    assert src.weight_bytes == model_bytes  # what the signature reads, not the variables data on disk
    # The admission estimate counts the same bytes, read from saved_model.pb before anything is loaded.
    assert lean.signature_weight_bytes(tmp_path / "sm") == model_bytes
    assert convert.conversion_estimate(tmp_path / "sm", formats.SAVEDMODEL, formats.ONNX).weight_bytes == model_bytes
    used = {id(v) for v in src.sig.variables}
    others = [v for v in src.trackable._all_variables if id(v) not in used]
    assert len(others) == len(src.sig.variables)
    assert not any(bool(v.is_initialized()) for v in others)  # the second copy holds no memory

    plain = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    feeds = {s.name: v for s, v in zip(src.inputs, _feeds(model).values(), strict=True)}
    got = src.run(feeds)
    want = {k: np.asarray(v) for k, v in plain(**{k: tf.constant(v) for k, v in feeds.items()}).items()}
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])

    # And it exports: the weights-as-inputs route reads the restored variables.
    fn, signature, outputs = src.tf_function(0)
    trace = large_export.savedmodel_weights_trace(fn, signature, outputs, src.sig.variables)
    path = large_export.export_weights_as_inputs(trace, tmp_path / "out")
    sess, onnx_out = _ort(path, feeds)
    for o, value in zip(sess.get_outputs(), onnx_out, strict=True):
        np.testing.assert_allclose(value, want[o.name], rtol=1e-5, atol=1e-5)

    # TFLite goes through a SavedModel of the signature: it holds the restored variables, not the empty copies.
    (tmp_path / "lite").mkdir()
    lite, _ = convert.produce(src, formats.TFLITE, tmp_path / "lite", 17, 0)
    got_lite = models.load_model(lite, formats.TFLITE).run(feeds)
    for k in want:
        np.testing.assert_allclose(got_lite[k], want[k], rtol=1e-5, atol=1e-5)


def test_lean_savedmodel_load_refuses_other_state_and_the_plain_load_takes_it(tmp_path, monkeypatch, caplog):
    import tensorflow as tf

    from modelport import formats
    from modelport.conversion import models
    from modelport.conversion import savedmodel_lean_load as lean

    class WithTable(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable([2.0, 3.0])
            self.table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, default_value=-1.0)
            self.table.insert(tf.constant([1, 2], tf.int64), tf.constant([10.0, 20.0]))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="ids")])
        def serve(self, ids):
            return {"y": tf.reshape(self.table.lookup(ids), [-1, 1]) * self.scale[None, :]}

    m = WithTable()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures={"serving_default": m.serve})
    with pytest.raises(lean.LeanLoadUnsupported, match="resource"):
        lean.load_savedmodel_lean(str(tmp_path / "sm"))
    monkeypatch.setattr(models, "SAVEDMODEL_LEAN_LOAD_MIN", 0)
    with caplog.at_level("WARNING", logger="modelport.conversion.models"):
        src = models.load_model(tmp_path / "sm", formats.SAVEDMODEL)
    assert "lean SavedModel load failed (LeanLoadUnsupported" in caplog.text
    out = src.run({"ids": np.array([1, 2, 5], np.int64)})
    np.testing.assert_array_equal(out["y"], [[20.0, 30.0], [40.0, 60.0], [-2.0, -3.0]])
