"""A Keras -> ONNX failure names the layer and the op at fault and what to try (issue 18), not a tensor
name from inside the graph: end to end through the converter job on a model with an op ONNX lacks, and
the message builders on small hand-made ONNX graphs (the failure shapes seen before the root fixes)."""

from __future__ import annotations

import pytest

from modelport.conversion import diagnose
from modelport.errors import FailedPrecondition

LAYERS = {"normalization": "Normalization", "dense_1": "Dense", "odd_layer": "OddLayer", "block_0": "Functional"}


def _graph(nodes, inputs=("x",)):
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in inputs]
    out = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, [1])
    return helper.make_model(helper.make_graph(nodes, "g", ins, [out]))


def test_layer_of_drops_keras_scope_suffixes_and_takes_the_deepest_layer():
    assert diagnose.layer_of("functional_1/dense_1_1/MatMul", LAYERS) == "dense_1"
    assert diagnose.layer_of("StatefulPartitionedCall/functional_1/normalization_1/Sub", LAYERS) == "normalization"
    assert diagnose.layer_of("model/block_0_1/dense_1_1/BiasAdd", LAYERS) == "dense_1"
    assert diagnose.layer_of("functional_1/Identity", LAYERS) == ""


def test_a_captured_tensor_left_as_graph_input_is_reported_at_its_layer():
    """The old Normalization failure: onnxruntime asks for 'model/normalization_1/Sub/y:0'."""
    from onnx import helper

    y = "functional_1/normalization_1/Sub/y:0"
    proto = _graph([helper.make_node("Sub", ["x", y], ["s"], name="functional_1/normalization_1/Sub")],
                   inputs=("x", y))
    msg = diagnose.runtime_message(f"'{y}'", proto, LAYERS, 17)
    assert msg.startswith("the converted model failed to run on the parity inputs at op Sub in layer "
                          "'normalization' (Normalization)")
    assert "--opset 18" in msg and "savedmodel" in msg


def test_an_unregistered_op_is_reported_at_its_layer():
    """The old nested-function failure: 'No Op registered for StatefulPartitionedCall'."""
    from onnx import helper

    node = helper.make_node("StatefulPartitionedCall", ["x"], ["y"],
                            name="convnext_1/stage_0_block_0_depthwise_conv_1/StatefulPartitionedCall")
    layers = {"stage_0_block_0_depthwise_conv": "DepthwiseConv2D"}
    nodes = diagnose.unsupported_nodes(_graph([node]))
    assert [n.op_type for n in nodes] == ["StatefulPartitionedCall"]
    msg = diagnose.unsupported_message(nodes, layers, 18)
    assert "op StatefulPartitionedCall in layer 'stage_0_block_0_depthwise_conv' (DepthwiseConv2D)" in msg
    assert "--opset 13" in msg and "savedmodel" in msg


def test_standard_and_contrib_ops_are_not_flagged():
    from onnx import helper

    proto = _graph([helper.make_node("Relu", ["x"], ["r"], name="a"),
                    helper.make_node("FusedMatMul", ["r", "r"], ["y"], name="b", domain="com.microsoft")])
    assert diagnose.unsupported_nodes(proto) == []


def test_a_tf2onnx_exception_names_the_layer():
    msg = diagnose.conversion_message("ValueError: cannot infer shape of functional_1/odd_layer_1/Lgamma:0",
                                      LAYERS, 17)
    assert "at layer 'odd_layer' (OddLayer), node Lgamma" in msg and "--opset 18" in msg


@pytest.mark.integration
def test_convert_job_names_the_layer_and_op_onnx_lacks(tmp_path):
    """A .keras model whose custom layer uses Lgamma (no ONNX equivalent): the Convert job fails with the
    layer, its class, the op and what to try; no graph scope (``functional_1/odd_layer_1/...``) in it."""
    import keras
    import tensorflow as tf

    from modelport import media
    from modelport.conversion.convert import convert_model
    from modelport.job_records import ConvertJob
    from modelport.store import ArtifactStore

    @keras.saving.register_keras_serializable(package="modelport_test_diagnose")
    class OddLayer(keras.layers.Layer):
        def call(self, x):
            return tf.math.lgamma(tf.abs(x) + 1.0)

    x = keras.Input((8,), name="x")
    y = keras.layers.Dense(4, name="head")(OddLayer(name="odd_layer")(keras.layers.Dense(8, name="dense_in")(x)))
    path = tmp_path / "odd.keras"
    keras.Model(x, y).save(str(path))

    store = ArtifactStore(tmp_path / "store")
    ref = store.put_file(path, media.KERAS)
    with pytest.raises(FailedPrecondition) as err:
        convert_model(store, ConvertJob(source_digest=ref.digest, target_format="onnx"))
    msg = err.value.message
    assert "op Lgamma in layer 'odd_layer' (OddLayer)" in msg
    assert "--opset 18" in msg and "savedmodel" in msg
    assert "odd_layer_1" not in msg and "functional" not in msg
    assert err.value.details == {"unsupported_ops": "Lgamma", "layers": "odd_layer"}
