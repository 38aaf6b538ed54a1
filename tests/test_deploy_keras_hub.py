"""keras_hub models that are not causal LMs through `modelport deploy` against the session's real services:
convert to ONNX with named INT32 inputs, an optimizer technique (int8-dynamic), LoadModel, then requests with
those named inputs answered like Keras; without eval data, generated samples stay inside keras_hub's input ranges.
Tiny random models of hub_models (2 layers, hidden 64)."""

from __future__ import annotations

import hub_models
import numpy as np
import pytest
from cli_fixtures import gateway_services

from modelport import Client
from modelport.deploy import DeploySpec

__all__ = ["gateway_services"]  # fixture used by name

pytestmark = pytest.mark.integration

TEXT_INPUTS = {"token_ids", "padding_mask", "segment_ids"}


def text_batch(n: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Requests as a user sends them: token ids, a real padding mask (lengths 3..seq), two segments."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq + 1, n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype("int32")
    segments = (np.arange(seq)[None, :] >= (lengths // 2)[:, None]).astype("int32") * mask
    return {"token_ids": (rng.integers(1, hub_models.VOCAB, (n, seq)) * mask).astype("int32"),
            "padding_mask": mask, "segment_ids": segments}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """bert_text_classifier.keras, an eval NPZ labelled with its own predictions, and the Keras model."""
    import keras

    d = tmp_path_factory.mktemp("deploy-keras-hub")
    path = hub_models.save(hub_models.bert_text_classifier(), d / "bert_text_classifier.keras")
    model = keras.saving.load_model(path)
    x = text_batch(32, 12, seed=1)
    y = np.argmax(np.asarray(model(dict(x), training=False)), axis=1)
    np.savez(d / "eval.npz", **x, y=y)
    return {"model": path, "eval": d / "eval.npz", "keras": model}


@pytest.fixture(scope="module")
def client(gateway_services):
    with Client(**gateway_services["addresses"], timeout=600) as c:
        yield c


def test_deploy_quantizes_a_keras_hub_text_classifier_and_serves_its_named_inputs(classifier, client):
    spec = DeploySpec(model=classifier["model"], name="bert-cls", optimize=["int8-dynamic"], goal="size",
                      eval=classifier["eval"], max_accuracy_drop=0.25)
    report = client.deploy(spec=spec)
    assert report.ok and report.target == "onnx", report.error
    stages = {s.stage: s for s in report.stages}
    assert [s.stage for s in report.stages] == ["upload", "convert", "optimize", "verify", "load", "smoke"]
    conv = stages["convert"].data
    assert conv["parity_passed"] is True
    assert {(i["name"], i["datatype"]) for i in conv["inputs"]} == {(n, "INT32") for n in TEXT_INPUTS}
    opt = stages["optimize"].data
    assert opt["chosen"] == "int8-dynamic", opt
    assert opt["baseline"]["size_bytes"] > 0 and stages["optimize"].size_bytes < opt["baseline"]["size_bytes"]
    assert stages["load"].data["digest"] != conv["artifact"]  # the quantized model is served

    meta = client.model_metadata("bert-cls", report.version)
    assert {(t.name, t.datatype) for t in meta.inputs} == {(n, "INT32") for n in TEXT_INPUTS}
    # held-out requests with their named INT32 inputs answer like Keras, within int8 noise
    x = text_batch(16, 10, seed=7)
    want = np.asarray(classifier["keras"](dict(x), training=False))
    got = next(iter(client.infer("bert-cls", x, version=report.version).values()))
    assert got.shape == want.shape == (16, 3)
    diff = float(np.max(np.abs(got - want)))
    assert 1e-6 < diff < 5e-3, (got, want)  # int8 weights, not the FP32 model (measured 4.5e-4; logits ~3e-2)
    assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.75
    assert stages["smoke"].accuracy is not None and stages["smoke"].accuracy >= 0.75  # vs Keras's own labels


def test_deploy_without_eval_data_samples_a_masked_lm_inside_its_ranges(tmp_path, client):
    """No eval data: the optimizer measures on generated samples and the smoke stage sends generated requests, both
    with mask_positions inside the sequence and 0/1 padding masks (from 0..9 they hit ONNX Gather's bounds check)."""
    import keras

    path = hub_models.save(hub_models.bert_masked_lm(), tmp_path / "bert_masked_lm.keras")
    spec = DeploySpec(model=path, name="bert-mlm", optimize=["int8-dynamic"], goal="size", max_accuracy_drop=0.2)
    report = client.deploy(spec=spec)
    assert report.ok, report.error
    stages = {s.stage: s for s in report.stages}
    assert stages["optimize"].data["chosen"] == "int8-dynamic", stages["optimize"].data
    assert stages["smoke"].status == "ok" and stages["smoke"].data["outputs"] == {"logits": [4, 1, hub_models.VOCAB]}

    x = {**text_batch(4, 12, seed=5), "mask_positions": np.array([[0, 5, 11]] * 4, "int32")}
    meta = client.model_metadata("bert-mlm", report.version)
    assert {(t.name, t.datatype) for t in meta.inputs} == {(n, "INT32") for n in {*TEXT_INPUTS, "mask_positions"}}
    got = client.infer("bert-mlm", x, version=report.version)["logits"]
    want = np.asarray(keras.saving.load_model(path)(dict(x), training=False))
    assert got.shape == want.shape == (4, 3, hub_models.VOCAB)
    # int8 weights, not the FP32 model (measured 5e-3 on logits up to 0.49)
    assert 1e-6 < float(np.max(np.abs(got - want))) < 2e-2, float(np.max(np.abs(got - want)))
