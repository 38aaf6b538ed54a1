"""Attention fusion (modelport/conversion/onnx_attention.py): Keras 3 MultiHeadAttention layers converted
through the converter's export become one onnxruntime contrib attention op each, with Keras's answers;
graphs that are not exactly the pattern are left as they were; the optimizer's ``graph`` technique applies
the same rewrites to a plain tf2onnx export."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ATOL = 1e-5


def _keras():
    import keras

    keras.utils.set_random_seed(0)
    return keras


def _random_biases(model):
    """Keras starts biases at 0 and tf2onnx drops an Add of zeros: give them values, as training would."""
    rng = np.random.default_rng(1)
    for w in model.weights:
        if w.path.endswith("bias"):
            w.assign(rng.normal(0, 0.2, size=w.shape).astype("float32"))
    return model


def _ops(path_or_model) -> Counter:
    import onnx

    m = onnx.load(str(path_or_model)) if not hasattr(path_or_model, "graph") else path_or_model
    return Counter(n.op_type for n in m.graph.node)


def _feeds(model, batch: int, rng, seq: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    from modelport.conversion.onnx_export import keras_input_infos

    feeds = {}
    for info in keras_input_infos(model):
        shape = [batch] + [d if d is not None else (seq or {}).get(info.name, 7) for d in info.shape[1:]]
        if info.dtype == "bool":
            mask = rng.random(shape) > 0.3
            mask[0, 1, :] = False  # one query row with every key masked
            feeds[info.name] = mask
        elif info.dtype.startswith("int"):
            feeds[info.name] = rng.integers(0, 30, shape).astype(info.dtype)
        else:
            feeds[info.name] = rng.standard_normal(shape).astype(info.dtype)
    return feeds


def _keras_out(model, feeds):
    args = list(feeds.values())
    return np.asarray(model(args[0] if len(args) == 1 else args, training=False))


def _ort_out(path, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _mha_model(kind: str):
    """Small Keras 3 models with MultiHeadAttention; returns (model, number of attention layers)."""
    keras = _keras()
    L = keras.layers
    if kind == "one_head":
        x = keras.Input((9, 12), name="x")
        out = L.MultiHeadAttention(num_heads=1, key_dim=6)(x, x)
        return keras.Model(x, out), 1
    if kind == "mask_four_heads":
        x = keras.Input((10, 16), name="x")
        mask = keras.Input((10, 10), dtype="bool", name="mask")
        out = L.MultiHeadAttention(num_heads=4, key_dim=4)(x, x, attention_mask=mask)
        return keras.Model([x, mask], out), 1
    if kind == "value_dim":  # key_dim != value_dim, with a mask
        x = keras.Input((8, 16), name="x")
        mask = keras.Input((8, 8), dtype="bool", name="mask")
        out = L.MultiHeadAttention(num_heads=2, key_dim=8, value_dim=12)(x, x, attention_mask=mask)
        return keras.Model([x, mask], out), 1
    if kind == "cross":  # query from one sequence, key and value from others of another length
        q = keras.Input((6, 16), name="q")
        v = keras.Input((9, 20), name="v")
        k = keras.Input((9, 24), name="k")
        out = L.MultiHeadAttention(num_heads=2, key_dim=8, value_dim=6)(q, v, key=k)
        return keras.Model([q, v, k], out), 1
    if kind == "no_bias_dynamic_seq":  # use_bias=False, sequence length unknown until run time
        x = keras.Input((None, 16), name="x")
        out = L.MultiHeadAttention(num_heads=2, key_dim=8, use_bias=False)(x, x)
        return keras.Model(x, out), 1
    if kind == "causal":  # the mask is built from the shapes inside the graph
        x = keras.Input((7, 16), name="x")
        out = L.MultiHeadAttention(num_heads=2, key_dim=8)(x, x, use_causal_mask=True)
        return keras.Model(x, out), 1
    if kind == "encoder":  # two blocks, token ids, LayerNorm and FFN around the attention
        from benchmarks.models import transformer_encoder

        return transformer_encoder(keras, vocab=50, seq=12, dim=32, heads=4, ff=64, blocks=2, head_units=8), 2
    raise AssertionError(kind)


KINDS = ["one_head", "mask_four_heads", "value_dim", "cross", "no_bias_dynamic_seq", "causal", "encoder"]


@pytest.mark.parametrize("kind", KINDS)
def test_converted_keras_attention_is_one_fused_op_with_keras_answers(kind, tmp_path):
    from modelport.conversion.onnx_export import keras_model_to_onnx

    model, layers = _mha_model(kind)
    _random_biases(model)
    path = tmp_path / "m.onnx"
    keras_model_to_onnx(model, path)
    ops = _ops(path)
    assert ops["MultiHeadAttention"] == layers, ops
    assert ops["Softmax"] == 0 and ops["Einsum"] == 0 and ops["Transpose"] == 0, ops
    rng = np.random.default_rng(3)
    for batch, seq in ((1, 5), (3, 11)):
        feeds = _feeds(model, batch, rng, {"x": seq})
        got, ref = _ort_out(path, feeds), _keras_out(model, feeds)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind", ["mask_four_heads", "value_dim", "encoder"])
def test_attention_target_packs_qkv_and_keeps_answers(kind, tmp_path):
    """``target="Attention"``: one packed-QKV Attention op per self-attention layer (the mask as mask_index)."""
    import onnx

    from modelport.conversion.onnx_attention import fuse_attention

    model, layers = _mha_model(kind)
    _random_biases(model)
    proto = _plain_tf2onnx(model, opset=17)
    assert fuse_attention(proto, target="Attention") == layers
    ops = _ops(proto)
    assert ops["Attention"] == layers and ops["Softmax"] == 0, ops
    onnx.save(proto, str(tmp_path / "a.onnx"))
    feeds = _feeds(model, 2, np.random.default_rng(4))
    np.testing.assert_allclose(_ort_out(tmp_path / "a.onnx", feeds), _keras_out(model, feeds), rtol=0, atol=ATOL)


def test_int8_dynamic_of_the_attention_op_keeps_the_mask(tmp_path):
    """quantize_dynamic turns Attention into QAttention, which reads mask_index (not attention_bias): the mask
    must survive quantization."""
    import onnx

    from modelport.conversion.onnx_attention import fuse_attention
    from optimizer_svc.onnx_techniques import int8_dynamic

    model, _ = _mha_model("mask_four_heads")
    _random_biases(model)
    proto = _plain_tf2onnx(model, opset=17)
    assert fuse_attention(proto, target="Attention") == 1
    onnx.save(proto, str(tmp_path / "f.onnx"))
    int8_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx")
    assert _ops(tmp_path / "q.onnx")["QAttention"] == 1
    feeds = _feeds(model, 2, np.random.default_rng(5))
    ref, got = _keras_out(model, feeds), _ort_out(tmp_path / "q.onnx", feeds)
    unmasked = _keras_out(model, {**feeds, "mask": np.ones_like(feeds["mask"])})
    err, mask_effect = np.abs(got - ref).max(), np.abs(unmasked - ref).max()
    assert err < 0.1 * mask_effect, (err, mask_effect)


def _plain_tf2onnx(model, opset: int | None = None):
    """What a user gets from tf2onnx alone (no modelport rewrites)."""
    import tensorflow as tf
    import tf2onnx

    from modelport.conversion.onnx_export import CUSTOM_OP_HANDLERS, keras_tf_function

    fn, signature, _ = keras_tf_function(model)
    kwargs = {"opset": opset} if opset else {}
    with tf.device("/cpu:0"):
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, custom_op_handlers=CUSTOM_OP_HANDLERS,
                                                 **kwargs)
    return proto


def test_attention_scores_read_elsewhere_leave_the_graph_unchanged():
    """return_attention_scores=True: the Softmax output is a model output, so fusing would compute the layer
    twice; the graph is left exactly as it was."""
    from modelport.conversion.onnx_attention import fuse_attention

    keras = _keras()
    x = keras.Input((6, 8), name="x")
    out, scores = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(x, x, return_attention_scores=True)
    model = _random_biases(keras.Model(x, [out, scores]))
    proto = _plain_tf2onnx(model, opset=17)
    before = proto.SerializeToString()
    assert fuse_attention(proto) == 0
    assert proto.SerializeToString() == before


# ---- hand-made graphs: the numeric check of the cones decides, not the node names ----------------------

def _handmade(perm_k: list[int], scale: float = 0.5, extra: str | None = None):
    """x -> Q/K/V projections -> heads split -> scores -> softmax -> context -> output projection, written the
    way a framework other than tf2onnx might (plain Transpose + MatMul). ``perm_k`` transposes K for the
    scores MatMul: [0, 2, 3, 1] is right; anything else computes something else."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    B, S, D, N, H = 2, 5, 8, 2, 4
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("wq", (D, N * H)), ("wk", (D, N * H)), ("wv", (D, N * H)), ("wo", (N * H, D)),
              ("bq", (N, H)), ("bk", (N, H)), ("bv", (N, H)))]
    inits += [numpy_helper.from_array(np.array([0, 0, N, H], np.int64), "split"),
              numpy_helper.from_array(np.array([0, 0, N * H], np.int64), "merge"),
              numpy_helper.from_array(np.array(scale, np.float32), "scale")]
    nodes = []
    for p in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}_mm"]),
                  helper.make_node("Reshape", [f"{p}_mm", "split"], [f"{p}_r"]),
                  helper.make_node("Add", [f"{p}_r", f"b{p}"], [f"{p}_4d"])]
    nodes += [helper.make_node("Transpose", ["q_4d"], ["q_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k_4d"], ["k_t"], perm=perm_k),
              helper.make_node("Transpose", ["v_4d"], ["v_t"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["q_t", "k_t"], ["qk"]),
              helper.make_node("Mul", ["qk", "scale"], ["scores"])]
    if extra == "relu":  # not a layout op: not the pattern
        nodes.append(helper.make_node("Relu", ["scores"], ["scores_r"]))
    nodes += [helper.make_node("Softmax", ["scores_r" if extra == "relu" else "scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v_t"], ["ctx_t"]),
              helper.make_node("Transpose", ["ctx_t"], ["ctx"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx", "merge"], ["ctx_flat"]),
              helper.make_node("MatMul", ["ctx_flat", "wo"], ["y"])]
    graph = helper.make_graph(nodes, "handmade", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", S, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", S, D])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, rng.standard_normal((B, S, D)).astype(np.float32)


def _run_proto(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("target", ["MultiHeadAttention", "Attention"])
def test_handmade_attention_fuses_with_the_scale_it_uses(target):
    from modelport.conversion.onnx_attention import fuse_attention

    model, x = _handmade([0, 2, 3, 1], scale=0.37)
    ref = _run_proto(model, x)
    assert fuse_attention(model, target) == 1
    ops = _ops(model)
    assert ops[target] == 1 and ops["Softmax"] == 0 and ops["Transpose"] == 0
    node = next(n for n in model.graph.node if n.op_type == target)
    assert next(a.f for a in node.attribute if a.name == "scale") == pytest.approx(0.37)
    assert next(a.i for a in node.attribute if a.name == "num_heads") == 2
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    if target == "MultiHeadAttention":  # fed by the projections' MatMuls, biases packed into the op
        assert [producers[i] for i in node.input[:4]] == ["MatMul", "MatMul", "MatMul", "Concat"]
    else:  # x itself, the three weights and biases packed
        assert node.input[0] == "x" and [producers[i] for i in node.input[1:3]] == ["Concat", "Concat"]
    np.testing.assert_allclose(_run_proto(model, x), ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("perm_k, extra", [([0, 2, 1, 3], None),  # K not transposed: scores = Q K (no K^T)
                                            ([0, 2, 3, 1], "relu")])  # a non-layout op on the scores
def test_graphs_that_are_not_exactly_attention_are_left_unchanged(perm_k, extra):
    from modelport.conversion.onnx_attention import fuse_attention

    model, x = _handmade(perm_k, extra=extra)
    before = model.SerializeToString()
    assert fuse_attention(model) == 0
    assert model.SerializeToString() == before


def test_fusion_reads_no_tensor_data_of_external_weights(tmp_path):
    """A model saved with external data and loaded without it: the fusion works from dims and names only."""
    import onnx

    from modelport.conversion.onnx_attention import fuse_attention

    model, _ = _mha_model("encoder")
    _random_biases(model)
    proto = _plain_tf2onnx(model, opset=17)
    onnx.save_model(proto, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=256)
    light = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    external = [t for t in light.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and not any(t.raw_data for t in external)
    assert fuse_attention(light) == 2
    (tmp_path / "m.onnx").write_bytes(light.SerializeToString())  # data file unchanged beside it
    feeds = _feeds(model, 2, np.random.default_rng(6))
    np.testing.assert_allclose(_ort_out(tmp_path / "m.onnx", feeds), _keras_out(model, feeds), rtol=0, atol=ATOL)


def test_graph_technique_applies_modelport_rewrites_to_a_plain_tf2onnx_export(tmp_path):
    """The optimizer's ``graph`` technique on an ONNX file tf2onnx made (default opset, no modelport rewrites):
    LayerNorm and attention fused, same answers as Keras."""
    import onnx

    from optimizer_svc.onnx_techniques import graph_optimize

    model, layers = _mha_model("encoder")
    _random_biases(model)
    proto = _plain_tf2onnx(model)
    src = tmp_path / "plain.onnx"
    onnx.save(proto, str(src))
    assert _ops(src)["Softmax"] == layers and _ops(src)["LayerNormalization"] == 0
    d = graph_optimize(src, tmp_path / "graph.onnx")
    assert d["attention_layers_fused"] == str(layers) and d["layer_norms_fused"] == str(2 * layers)
    ops = _ops(tmp_path / "graph.onnx")
    assert ops["MultiHeadAttention"] == layers and ops["Softmax"] == 0, ops
    assert ops["LayerNormalization"] + ops["SkipLayerNormalization"] == 2 * layers, ops
    assert int(d["nodes_after"]) < int(d["nodes_before"]) // 2
    assert not list(tmp_path.glob("*.rewritten.onnx*"))  # the staging file is gone
    feeds = _feeds(model, 3, np.random.default_rng(7))
    np.testing.assert_allclose(_ort_out(tmp_path / "graph.onnx", feeds), _keras_out(model, feeds), rtol=0, atol=ATOL)


_TF_KERAS_MHA = r"""
import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import tf_keras as keras

from modelport.conversion.onnx_export import keras_model_to_onnx

keras.utils.set_random_seed(0)
x = keras.Input((10, 16), name="x")
mask = keras.Input((10, 10), dtype="bool", name="mask")
out = keras.layers.MultiHeadAttention(num_heads=4, key_dim=4)(x, x, attention_mask=mask)
model = keras.Model([x, mask], out)
rng = np.random.default_rng(1)
for w in model.weights:
    if "bias" in w.name:
        w.assign(rng.normal(0, 0.2, size=w.shape).astype("float32"))
keras_model_to_onnx(model, sys.argv[1])
ops = Counter(n.op_type for n in onnx.load(sys.argv[1]).graph.node)
xs = rng.standard_normal((3, 10, 16)).astype("float32")
ms = rng.random((3, 10, 10)) > 0.3
ms[0, 1, :] = False
got = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).run(None, {"x": xs, "mask": ms})[0]
print(ops["MultiHeadAttention"], ops["Softmax"], float(np.abs(got - model([xs, ms]).numpy()).max()))
"""


def test_tf_keras_attention_with_its_additive_mask_and_transposed_scores_fuses(tmp_path):
    """tf-keras (legacy Keras) lowers differently: scale on the query, an additive mask, and tf2onnx keeps the
    scores transposed with the Softmax over axis 2. The numeric check finds the layout; the mask is
    transposed back for the fused op."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", _TF_KERAS_MHA, str(tmp_path / "t.onnx")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fused, softmax, diff = proc.stdout.split()[-3:]
    assert (fused, softmax) == ("1", "0")
    assert float(diff) <= ATOL
