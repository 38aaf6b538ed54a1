"""How the optimizer judges a keras_hub backbone's outputs: features (sequence_output, pooled_output) agree when
every feature vector keeps its direction (cosine >= 0.99), not when the argmax of a hidden state is unchanged."""

from __future__ import annotations

import math

import numpy as np

from modelport.conversion.hub_models import FEATURE_OUTPUTS, feature_outputs
from optimizer_svc import measure as M


def hidden_states(seed: int = 0, n: int = 32, seq: int = 6, dim: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, seq, dim)).astype(np.float32)


def test_quantization_noise_keeps_features_but_flips_argmaxes_of_hidden_states():
    ref = hidden_states()
    noisy = ref + 0.05 * np.random.default_rng(1).normal(size=ref.shape).astype(np.float32)  # cosine ~0.999
    assert M.feature_agreement([noisy], [ref]) == 1.0
    assert M.agreement([noisy], [ref], features=[True]) == 1.0
    assert M.agreement([noisy], [ref]) < 0.9  # the argmax of some position flips in most samples


def test_a_sample_disagrees_when_one_vector_loses_its_direction():
    ref = hidden_states()
    cand = ref.copy()
    cand[3, 2] = -ref[3, 2]  # one position of one sample
    cand[7, 0] = ref[7, 0] + 0.3 * np.linalg.norm(ref[7, 0]) * np.eye(64, dtype=np.float32)[5]  # cosine ~0.95
    assert M.feature_agreement([cand], [ref]) == 30 / 32
    assert M.feature_agreement([cand], [ref], threshold=0.9) == 31 / 32


def test_every_marked_output_counts_and_unmarked_ones_do_not():
    seq, pooled, logits = hidden_states(), hidden_states(2)[:, 0], hidden_states(3)[:, 0, :5]
    bad_pooled = pooled.copy()
    bad_pooled[0] = -pooled[0]
    other_logits = np.roll(logits, 1, axis=1)  # every argmax changes
    assert M.agreement([seq, bad_pooled, other_logits], [seq, pooled, logits], features=[True, True, False]) == 31 / 32
    assert M.agreement([seq, pooled, other_logits], [seq, pooled, logits], features=[True, True, False]) == 1.0
    assert M.agreement([other_logits, seq], [logits, seq], features=[False, False]) == 0.0  # top-1, as before


def test_zero_vectors_agree_and_mismatched_shapes_are_nan():
    z = np.zeros((4, 3, 8), np.float32)
    assert M.feature_agreement([z], [z]) == 1.0
    one = z.copy()
    one[0, 0, 0] = 1.0
    assert M.feature_agreement([one], [z]) == 0.75
    assert math.isnan(M.feature_agreement([z[:, :2]], [z]))


def test_features_are_keras_hubs_backbone_output_names():
    assert FEATURE_OUTPUTS == {"sequence_output", "pooled_output"}
    assert feature_outputs(["pooled_output", "sequence_output"]) == [True, True]
    assert feature_outputs(["logits", "predictions", "sequence_output_2"]) == [False, False, False]


def test_measure_names_the_metric_it_judged_features_by(tmp_path):
    ref = [hidden_states(n=4)]
    run = lambda feed: [feed["x"]]  # noqa: E731 - an identity "model"
    path = tmp_path / "m.onnx"
    path.write_bytes(b"0" * 16)
    m = M.measure(path, run, {"x": ref[0]}, None, ref, warmup=0, repeats=1, batch_size=1, features=[True])
    assert m.agreement == 1.0 and m.details["agreement_metric"] == "feature cosine >= 0.99"
    m = M.measure(path, run, {"x": ref[0]}, None, ref, warmup=0, repeats=1, batch_size=1)
    assert "agreement_metric" not in m.details


def test_a_model_that_serializes_constructor_arguments_is_no_layer_graph_for_tf_keras(tmp_path):
    """keras_hub's task models (Functional subclasses) give get_config() = their constructor arguments: translated,
    a Functional without layers, which tf-keras would rebuild as an empty model. The bridge refuses it by name."""
    import pytest

    from modelport.errors import InvalidArgument
    from optimizer_svc import keras_bridge

    hub = {"class_name": "Functional", "config": {"backbone": {"class_name": "ResNetBackbone", "config": {}},
                                                  "num_classes": 5, "name": "res_net_image_classifier"}}
    cfg = {**keras_bridge.translate_config(hub), keras_bridge.KERAS3_CLASS: "ResNetImageClassifier"}
    assert cfg["config"]["layers"] == []
    problem = keras_bridge.not_a_layer_graph(cfg)
    assert problem and "cannot rebuild this ResNetImageClassifier: its Keras 3 config holds its constructor" in problem
    (tmp_path / keras_bridge.CONFIG).write_text(__import__("json").dumps(cfg))
    with pytest.raises(InvalidArgument, match="only graph, fp16, int8-dynamic and int8-static apply"):
        keras_bridge.load_tf_keras(str(tmp_path))  # refused before tf-keras is imported or weights are read

    graph = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "name": "x", "config": {"batch_shape": [None, 4], "name": "x"}, "inbound_nodes": []}],
        "input_layers": ["x", 0, 0], "output_layers": ["x", 0, 0]}}
    assert keras_bridge.not_a_layer_graph(keras_bridge.translate_config(graph)) is None
    assert keras_bridge.not_a_layer_graph({"class_name": "Sequential", "config": {"layers": []}}) is None


def test_feature_agreement_compares_a_few_rows_at_a_time_with_the_same_result(monkeypatch):
    ref = hidden_states(n=40)
    cand = ref.copy()
    cand[[3, 17, 38], 1] *= -1
    whole = M.feature_agreement([cand], [ref])
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 2 * 6 * 64)  # two samples per chunk
    assert M.feature_agreement([cand], [ref]) == whole == 37 / 40
    assert math.isnan(M.feature_agreement([cand[:0]], [ref[:0]]))
