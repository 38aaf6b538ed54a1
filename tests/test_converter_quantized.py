"""int8 TFLite models (full-integer post-training quantization, made here) converted to ONNX through the
converter: a faithful conversion passes quantized parity; a deliberately broken one fails it."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from converter_fixtures import *  # noqa: F403 - fixtures: converter_server, conv
from onnx import numpy_helper

from modelport import parity
from modelport.conversion.models import OnnxModel, TFLiteModel
from modelport.conversion.quantization import output_quantization
from modelport.errors import FailedPrecondition

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def int8_models(tmp_path_factory):
    """A small CNN and a small dense model on the digits, each full-integer quantized with int8 and float I/O."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from gateway.demo import digits_cnn, digits_splits

    d = tmp_path_factory.mktemp("int8")
    data = digits_splits(0)
    keras.utils.set_random_seed(0)
    cnn = digits_cnn(keras, filters=(8, 16), dense=32)
    cnn.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    cnn.fit(data["x_train"], data["y_train"], epochs=2, batch_size=32, verbose=0)
    inp = keras.Input((64,), name="features")
    dense = keras.Model(inp, keras.layers.Dense(10, name="logits")(keras.layers.Dense(32, activation="relu")(inp)))
    dense.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dense.fit(data["x_train"].reshape(-1, 64), data["y_train"], epochs=3, batch_size=32, verbose=0)
    files = {}
    for name, model, x in (("cnn", cnn, data["x_train"]), ("dense", dense, data["x_train"].reshape(-1, 64))):
        for io in ("int8", "float"):
            conv = tf.lite.TFLiteConverter.from_keras_model(model)
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda x=x: ([x[i:i + 1]] for i in range(100))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if io == "int8":
                conv.inference_input_type = conv.inference_output_type = tf.int8
            files[f"{name}_{io}"] = d / f"{name}_{io}.tflite"
            files[f"{name}_{io}"].write_bytes(conv.convert())
    return files, data


@pytest.mark.parametrize("name", ["cnn_int8", "cnn_float", "dense_int8", "dense_float"])
def test_int8_tflite_to_onnx_passes_quantized_parity(conv, converter_server, int8_models, name):
    files, _ = int8_models
    lite = TFLiteModel(files[name])
    expected = output_quantization(lite, "source")
    (out_name, q), = expected.items()
    res = conv.convert(conv.upload(files[name]), "onnx")[-1].convert_result
    assert res.parity.passed, res.parity
    o = res.parity.outputs[0]
    assert o.judged_by == "quantized" and o.passed
    assert o.quant_scale == pytest.approx(q.scale) and o.quant_zero_point == q.zero_point
    assert o.quant_source.startswith("source output") and o.max_diff_steps <= parity.DEFAULT_QUANT_MAX_STEPS
    assert o.cosine >= 0.99 and o.topk_agreement == 1.0 and res.parity.quant_max_steps == 8
    io = res.source_info.inputs[0].datatype
    assert io == ("INT8" if name.endswith("int8") else "FP32")


def _corrupt(path, how: str) -> onnx.ModelProto:
    """A deliberately broken conversion: one weight scale, one weight tensor or the output zero point changed."""
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
          and len(inits[n.input[0]].dims) >= 2]  # weight dequantizations
    if how == "weight_scale":
        t = inits[dq[0].input[1]]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 2.0, t.name))
    elif how == "weight":
        t = inits[dq[-1].input[0]]
        t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), t.name))
    else:  # output zero point
        producer = {o: n for n in m.graph.node for o in n.output}
        q = producer[m.graph.output[0].name]
        arr = numpy_helper.to_array(inits[q.input[2]])
        # its own initializer: tf2onnx shares one zero point between the Quantize/Dequantize pair
        m.graph.initializer.append(numpy_helper.from_array((arr.astype(np.int16) + 3).astype(arr.dtype), "broken_zp"))
        q.input[2] = "broken_zp"
    return m


@pytest.mark.parametrize("name", ["cnn_int8", "dense_float"])
def test_broken_int8_conversion_fails_quantized_parity(conv, converter_server, int8_models, name, tmp_path):
    files, data = int8_models
    res = conv.convert(conv.upload(files[name]), "onnx")[-1].convert_result
    good = conv.download(res.artifact, tmp_path / "good.onnx")
    lite = TFLiteModel(files[name])
    x = data["x_test"][:32] if name.startswith("cnn") else data["x_test"][:32].reshape(-1, 64)
    if name.endswith("int8"):
        scale, zp = lite._in[0][1]["quantization"]
        x = np.clip(np.round(x / scale + zp), -128, 127).astype(np.int8)
    feeds = {lite.inputs[0].name: x}
    quant = output_quantization(lite, "source")  # before running: the XNNPACK delegate then hides the ops
    ref = lite.run(feeds)
    assert parity.compare_outputs(ref, OnnxModel(good).run(feeds), quantization=quant).passed  # the faithful one
    for how in ("weight_scale", "weight", "output_zero_point"):
        onnx.save(_corrupt(good, how), tmp_path / f"{how}.onnx")
        rep = parity.compare_outputs(ref, OnnxModel(tmp_path / f"{how}.onnx").run(feeds), quantization=quant)
        assert not rep.passed, (how, parity.summarize(rep))
        with pytest.raises(FailedPrecondition, match="parity check failed"):
            parity.enforce(rep, allow_mismatch=False)
