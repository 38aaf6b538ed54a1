"""Keras Hub models through the converter: backbones and task models (text classifier, causal LM,
masked LM, image classifiers; tiny, random) to ONNX with their named dict inputs, parity-checked;
a model whose package is missing is FAILED_PRECONDITION."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import hub_models
import numpy as np
import pytest
from converter_fixtures import *  # noqa: F403 - fixtures: converter_server, conv

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("keras-hub-models")
    return {name: hub_models.save(getattr(hub_models, name)(), d / f"{name}.keras")
            for name in ("gpt2_backbone", "bert_backbone", "bert_text_classifier", "gpt2_causal_lm",
                         "bert_masked_lm", "resnet_image_classifier", "vit_image_classifier")}


TEXT = ("INT32", [-1, -1])
IMAGES = ("FP32", [-1, hub_models.IMAGE, hub_models.IMAGE, 3])
# name -> (ONNX inputs with their datatype and shape, output names or None)
EXPECTED = {
    # a decoder backbone's one output (the last hidden states) is named like BERT's: sequence_output
    "gpt2_backbone": ({"token_ids": TEXT, "padding_mask": TEXT}, {"sequence_output"}),
    "bert_backbone": ({"token_ids": TEXT, "padding_mask": TEXT, "segment_ids": TEXT},
                      {"sequence_output", "pooled_output"}),
    "bert_text_classifier": ({"token_ids": TEXT, "padding_mask": TEXT, "segment_ids": TEXT}, None),
    "gpt2_causal_lm": ({"token_ids": TEXT, "padding_mask": TEXT}, {"logits"}),
    "bert_masked_lm": ({"token_ids": TEXT, "padding_mask": TEXT, "segment_ids": TEXT, "mask_positions": TEXT},
                       {"logits"}),
    # keras_hub's ResNet input has no name (Keras calls it keras_tensor_<n>, changing per load): "images"
    "resnet_image_classifier": ({"images": IMAGES}, {"predictions"}),
    "vit_image_classifier": ({"images": IMAGES}, {"predictions"}),
}


def request_feeds(inputs: set[str]) -> dict[str, np.ndarray]:
    """A request as a user sends one: a real padding mask (row 1 padded after 7 tokens), two segments,
    masked positions inside the sequence, or images."""
    rng = np.random.default_rng(3)
    if inputs == {"images"}:
        return {"images": rng.uniform(0, 1, (2, hub_models.IMAGE, hub_models.IMAGE, 3)).astype("float32")}
    feeds = {"token_ids": rng.integers(0, hub_models.VOCAB, (2, 12)).astype("int32"),
             "padding_mask": np.ones((2, 12), "int32")}
    feeds["padding_mask"][1, 7:] = 0
    if "segment_ids" in inputs:
        feeds["segment_ids"] = np.concatenate([np.zeros((2, 6), "int32"), np.ones((2, 6), "int32")], axis=1)
    if "mask_positions" in inputs:
        feeds["mask_positions"] = np.array([[1, 4, 11], [0, 2, 6]], "int32")
    return feeds


@pytest.mark.parametrize("name", list(EXPECTED))
def test_keras_hub_model_converts_to_onnx_with_named_inputs_and_parity(conv, hub_files, name, tmp_path):
    import keras
    import onnxruntime as ort

    events = conv.convert(conv.upload(hub_files[name]), "onnx")
    res = events[-1].convert_result
    assert events[-1].stage == "done", events[-1]
    inputs, outputs = EXPECTED[name]
    assert {i.name: (i.datatype, list(i.shape)) for i in res.info.inputs} == inputs
    assert {i.name for i in res.source_info.inputs} == set(inputs)  # the source is described by the same names
    if outputs:
        assert {o.name for o in res.info.outputs} == outputs
    assert res.parity.passed and res.parity.samples == 8
    assert all(o.max_abs_diff < 1e-4 for o in res.parity.outputs), res.parity
    assert res.source_info.details["model_class"] == type(keras.saving.load_model(hub_files[name])).__name__

    # The downloaded ONNX model answers a request with a real padding mask like the Keras model does.
    onnx_path = conv.download(res.artifact, tmp_path / "model.onnx")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = request_feeds(set(inputs))
    model = keras.saving.load_model(hub_files[name])
    keras_feeds = feeds["images"] if "images" in feeds else dict(feeds)
    want = model(keras_feeds, training=False)
    want = list(want.values()) if isinstance(want, dict) else [want]
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    by_shape = {tuple(np.shape(w)): np.asarray(w) for w in want}
    assert len(by_shape) == len(got)
    for value in got.values():
        np.testing.assert_allclose(value, by_shape[value.shape], atol=1e-4)
    if "mask_positions" in feeds:  # logits at the 3 masked positions only
        assert next(iter(got.values())).shape == (2, 3, hub_models.VOCAB)

    # Read back as ONNX (what the optimizer gets): generated samples stay inside the valid ranges. A dynamic
    # sequence is generated 4 long, so masked positions are below 4.
    from modelport.conversion.models import load_model

    ranges = {"token_ids": (0, hub_models.VOCAB), "padding_mask": (0, 2), "segment_ids": (0, 2), "mask_positions": (0, 4)}
    assert load_model(onnx_path, "onnx").int_ranges == {k: v for k, v in ranges.items() if k in inputs}


def test_model_of_a_missing_package_is_failed_precondition_naming_it(conv, hub_files, tmp_path):
    """A .keras file of keras_cv classes (Keras imports keras, keras_hub, keras_cv, keras_nlp modules
    by name; keras-cv is not installed here)."""
    import importlib.util

    assert importlib.util.find_spec("keras_cv") is None, "this test needs an environment without keras-cv"
    path = hub_models.rename_package(hub_files["gpt2_backbone"], tmp_path / "absent.keras", "keras_hub", "keras_cv")
    err, _ = conv.convert_error(conv.upload(path), "onnx")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert "needs the Python package 'keras-cv' (module keras_cv.src.models.gpt2" in err.details()
    assert "pip install 'keras-cv'" in err.details() and "corrupted" not in err.details()


def test_keras_hub_not_installed_is_failed_precondition_with_the_extra(hub_files):
    """Keras' own loader in a process where keras_hub cannot be imported (as in an environment without it)."""
    code = (
        "import sys; sys.modules['keras_hub'] = None\n"
        "from modelport.conversion.models import load_model\n"
        "from modelport.errors import FailedPrecondition\n"
        "try:\n"
        f"    load_model({str(hub_files['gpt2_causal_lm'])!r}, 'keras')\n"
        "except FailedPrecondition as e:\n"
        "    print('FAILED_PRECONDITION', e.details['package'], e.message)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("FAILED_PRECONDITION")), "")
    assert line.startswith("FAILED_PRECONDITION keras-hub "), out.stdout + out.stderr[-2000:]
    assert "keras_hub.src.models" in line and "pip install 'keras-hub==0.32.0'" in line
    assert "modelport[converter,optimizer]" in line and "corrupted" not in line


def test_causal_lm_converts_to_a_generation_model_that_loads_and_streams(conv, hub_files, tmp_path):
    """convert --to generation: the KV-cache step + generation.json as one artifact, parity = greedy decoding
    vs keras_hub generate(); the inference service loads that artifact (LoadModel) as a streaming model."""
    from inference_svc.service import InferenceService
    from inference_svc.settings import InferenceSettings
    from modelport import media
    from modelport.client import Client
    from modelport.runtime.background import BackgroundServer

    events = conv.convert(conv.upload(hub_files["gpt2_causal_lm"]), "generation")
    res = events[-1].convert_result
    assert events[-1].stage == "done", events[-1]
    assert res.artifact.media_type == media.GENERATION and res.info.format == "generation"
    assert res.info.details["architecture"] == "GPT2CausalLM" and res.info.details["max_context"] == "128"
    assert res.parity.passed and res.parity.samples == 32 and res.parity.outputs[0].name == "output_ids"
    assert res.parity.outputs[0].top1_agreement == 1.0 and "vs keras_hub generate()" in res.parity.inputs_source
    tar = conv.download(res.artifact, tmp_path / "gpt2.generation.tar")

    settings = InferenceSettings(port=0, host="127.0.0.1", store=tmp_path / "inference-store")
    with BackgroundServer(InferenceService(settings)) as srv, Client(inference=srv.address) as client:
        ref = client.upload(tar, media.GENERATION, service="inference")
        loaded = client.load_model("gpt2", ref)
        assert loaded.model.state == "READY"
        assert client.model_config("gpt2").model_transaction_policy.decoupled
        tokens = list(client.generate("gpt2", [5, 17, 42, 8, 3], max_tokens=12))
    import keras

    from modelport.conversion.llm_export import keras_greedy

    assert tokens == keras_greedy(keras.saving.load_model(hub_files["gpt2_causal_lm"]), [5, 17, 42, 8, 3], 12)


def test_generation_target_refuses_a_model_that_is_not_a_causal_lm(conv, hub_files):
    err, _ = conv.convert_error(conv.upload(hub_files["bert_text_classifier"]), "generation")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes a keras_hub causal LM" in err.details() and "BertTextClassifier" in err.details()
