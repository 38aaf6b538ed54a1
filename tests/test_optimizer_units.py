"""Unit tests of the optimizer's pure logic: technique plans, options, ranking, metrics, the
Keras 3 -> tf-keras config translation. No TensorFlow, no server."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelport.errors import InvalidArgument
from modelport.job_records import CandidateReport
from modelport.techniques import ALL_TECHNIQUES
from optimizer_svc import keras_bridge, measure, selection
from optimizer_svc.technique_options import parse_options, plan


def test_names_are_the_issue_vocabulary():
    assert ALL_TECHNIQUES == ("graph", "fp16", "int8-dynamic", "int8-static", "prune", "prune-2:4", "cluster",
                              "qat", "distill", "tflite-dynamic", "tflite-fp16", "tflite-int8", "int8-weight-only",
                              "int4-weight-only")


def test_auto_on_onnx_skips_keras_techniques_with_notes():
    p = plan(["auto"], "onnx", has_train=True, has_inputs=True)
    assert p.auto and p.run == ["graph", "fp16", "int8-dynamic", "int8-static"]
    skipped = dict(p.skipped)
    assert set(skipped) == {"prune", "prune-2:4", "cluster", "qat", "distill", "tflite-dynamic", "tflite-fp16",
                            "tflite-int8"}
    assert "needs the Keras model" in skipped["cluster"]


def test_auto_on_keras_without_data_skips_what_needs_data():
    p = plan(["auto"], "keras", has_train=False, has_inputs=False)
    assert p.run == ["graph", "fp16", "int8-dynamic", "tflite-dynamic", "tflite-fp16"]
    assert "needs train_data" in dict(p.skipped)["prune"]
    assert "calibration_data" in dict(p.skipped)["int8-static"]


def test_explicit_inapplicable_or_unknown_technique_is_invalid():
    with pytest.raises(InvalidArgument, match="prune needs the Keras model"):
        plan(["prune"], "onnx", has_train=True, has_inputs=True)
    with pytest.raises(InvalidArgument, match="needs representative inputs"):
        plan(["int8-static"], "onnx", has_train=False, has_inputs=False)
    with pytest.raises(InvalidArgument, match=r"unknown technique\(s\) 'int3'.*valid names: graph, fp16"):
        plan(["int3", "graph"], "onnx", has_train=False, has_inputs=False)
    with pytest.raises(InvalidArgument, match="cannot be combined"):
        plan(["auto", "graph"], "onnx", has_train=False, has_inputs=False)
    with pytest.raises(InvalidArgument, match="no technique given"):
        plan([], "onnx", has_train=False, has_inputs=False)


def test_options_defaults_types_and_errors():
    o = parse_options({"prune.sparsity": "0.5", "int8-static.per_channel": "true", "cluster.clusters": "8"})
    assert o["prune.sparsity"] == 0.5 and o["int8-static.per_channel"] == "true" and o["cluster.clusters"] == 8
    assert o["graph.level"] == "extended" and o["int8-static.method"] == "auto"
    assert o["int8-static.types"] == "auto" and o["int8-static.format"] == "auto"
    assert o["int8-dynamic.quick_stop"] == 1.5
    with pytest.raises(InvalidArgument, match="int8-static.types='u4s4' is invalid: use one of auto, u8s8, s8s8"):
        parse_options({"int8-static.types": "u4s4"})
    with pytest.raises(InvalidArgument, match="prune.sparsity='1.5' is invalid: must be between 0 and 0.99"):
        parse_options({"prune.sparsity": "1.5"})
    with pytest.raises(InvalidArgument, match="cluster.clusters='x' is invalid: not a number"):
        parse_options({"cluster.clusters": "x"})
    with pytest.raises(InvalidArgument, match="unknown optimizer option"):
        parse_options({"prune.target": "0.5"})


def _cand(tech, latency, gzip, accuracy=math.nan, agreement=1.0, fmt="onnx"):
    return CandidateReport(technique=tech, latency_p50_ms=latency, gzip_size_bytes=gzip, accuracy=accuracy,
                           agreement=agreement, format=fmt)


def test_auto_picks_the_fastest_within_budget():
    base = _cand("baseline", 10.0, 1000, accuracy=0.95)
    cands = [_cand("fp16", 9.0, 500, 0.95), _cand("int8-dynamic", 5.0, 300, 0.90), _cand("graph", 8.0, 1000, 0.95)]
    ranked, chosen, reason = selection.rank(base, cands, goal="latency", max_drop=0.01, relative=False, auto=True,
                                         min_gain=0.03)
    assert chosen.technique == "graph" and chosen.chosen and not base.chosen
    assert [c.technique for c in ranked] == ["graph", "fp16", "int8-dynamic"]
    assert not ranked[2].within_budget and "over budget" in ranked[2].note
    assert reason.startswith("graph: latency p50 0.800x")


def test_auto_never_returns_a_slower_or_larger_candidate():
    base = _cand("baseline", 10.0, 1000, accuracy=0.95)
    cands = [_cand("fp16", 10.2, 500, 0.95), _cand("int8-static", 12.0, 300, 0.95)]
    _, chosen, reason = selection.rank(base, cands, goal="latency", max_drop=0.01, relative=False, auto=True,
                                    min_gain=0.03)
    assert chosen is base and base.chosen and not any(c.chosen for c in cands)
    assert "returning the baseline" in reason and "fp16" in reason
    base = _cand("baseline", 10.0, 1000, accuracy=0.95)
    cands = [_cand("graph", 5.0, 1001, 0.95)]
    _, chosen, reason = selection.rank(base, cands, goal="size", max_drop=0.01, relative=False, auto=True, min_gain=0.0)
    assert chosen is base and "gzip size" in reason


def test_auto_needs_the_gain_in_every_interleaved_round():
    base = _cand("baseline", 10.0, 1000, accuracy=0.95)
    noisy = _cand("prune-2:4", 8.5, 500, 0.95)
    noisy.details.update({"latency_ratio_paired": "0.85", "latency_rounds_faster": "4/6"})
    steady = _cand("graph", 9.5, 1000, 0.95)
    steady.details.update({"latency_ratio_paired": "0.95", "latency_rounds_faster": "6/6"})
    _, chosen, _ = selection.rank(base, [noisy, steady], goal="latency", max_drop=0.01, relative=False, auto=True,
                               min_gain=0.03)
    assert chosen is steady
    assert "faster in only 4/6 interleaved rounds" in noisy.note
    _, chosen, reason = selection.rank(_cand("baseline", 10.0, 1000, accuracy=0.95), [noisy], goal="latency",
                                    max_drop=0.01, relative=False, auto=True, min_gain=0.03)
    assert chosen.technique == "baseline" and "returning the baseline" in reason


def test_paired_latency_counts_rounds_won():
    import time as _time

    from optimizer_svc.measure import paired_latency

    def slow(feed):
        _time.sleep(0.002)

    def fast(feed):
        return None

    c50, _, b50, wins = paired_latency(fast, slow, {}, warmup=1, repeats=6, rounds=4)
    assert wins == 4 and c50 < b50
    _, _, _, wins = paired_latency(slow, fast, {}, warmup=1, repeats=6, rounds=4)
    assert wins == 0


def test_relative_budget_and_tflite_not_eligible_under_onnx_output():
    base = _cand("baseline", 10.0, 1000, accuracy=0.80)
    cands = [_cand("tflite-int8", 2.0, 100, 0.79, fmt="tflite"), _cand("prune", 9.0, 400, 0.785)]
    _, chosen, _ = selection.rank(base, cands, goal="latency", max_drop=0.02, relative=True, auto=True, min_gain=0.03,
                               output_format="onnx")
    # 2 % of 0.80 = 0.016: prune (drop 0.015) is within budget; tflite is faster but not ONNX.
    assert chosen.technique == "prune"
    assert "not eligible under auto" in cands[0].note


def test_explicit_returns_the_requested_technique_even_if_not_faster():
    base = _cand("baseline", 10.0, 1000, accuracy=0.95)
    cands = [_cand("int8-static", 14.0, 300, 0.95)]
    _, chosen, reason = selection.rank(base, cands, goal="latency", max_drop=0.01, relative=False, auto=False,
                                    min_gain=0.0)
    assert chosen.technique == "int8-static" and "not better than the baseline" in reason


def test_failed_candidates_rank_last_and_are_never_chosen():
    base = _cand("baseline", 10.0, 1000, accuracy=0.9)
    failed = CandidateReport(technique="qat", note="failed: x", details={"status": "failed"})
    ranked, chosen, _ = selection.rank(base, [failed, _cand("graph", 9.0, 900, 0.9)], goal="latency", max_drop=0.0,
                                    relative=False, auto=True, min_gain=0.03)
    assert [c.technique for c in ranked] == ["graph", "qat"] and chosen.technique == "graph"


def test_metrics():
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]], "float32")
    assert measure.accuracy([probs], np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert measure.accuracy([probs], np.eye(2)[[1, 0, 1]]) == 1.0
    assert measure.agreement([probs], [probs[[1, 0, 2]]]) == pytest.approx(1 / 3)
    assert measure.max_abs_diff([probs], [probs + 0.25]) == pytest.approx(0.25)
    assert measure.cosine([probs], [2 * probs]) == pytest.approx(1.0)
    # the centered cosine ignores what all samples share: a constant offset hides nothing from it
    ref = np.array([[10.0, 1.0], [10.0, -1.0], [10.0, 0.5]])
    flipped = ref * np.array([1.0, -1.0])  # same shared part, input-dependent part reversed
    assert measure.cosine([flipped], [ref]) > 0.98
    assert measure.centered_cosine([flipped], [ref]) == pytest.approx(-1.0)
    assert measure.centered_cosine([ref + 3.0], [ref]) < measure.centered_cosine([ref], [ref]) == pytest.approx(1.0)
    assert math.isnan(measure.centered_cosine([ref[:1]], [ref[:1]]))
    assert math.isnan(measure.accuracy([np.zeros((3, 1))], np.zeros(3)))


def test_metrics_over_chunks_equal_the_whole_array_figures(monkeypatch):
    # Chunk boundaries inside the sample axis must not change any figure (rows compared whole, means over all).
    rng = np.random.default_rng(3)
    out = rng.standard_normal((7, 20, 1)).astype(np.float32)  # not a classifier: agreement is closeness
    ref = out + rng.standard_normal(out.shape).astype(np.float32) * np.float32(0.01)
    ref[2] = out[2]  # one sample within tolerance everywhere
    whole = [f([out], [ref]) for f in (measure.agreement, measure.max_abs_diff, measure.cosine, measure.centered_cosine)]
    monkeypatch.setattr(measure, "_CHUNK_ELEMENTS", 20)  # one row (20 elements) per chunk
    chunked = [f([out], [ref]) for f in (measure.agreement, measure.max_abs_diff, measure.cosine,
                                         measure.centered_cosine)]
    assert chunked == pytest.approx(whole, rel=1e-12)
    assert whole[0] == pytest.approx(1 / 7) and whole[1] == pytest.approx(float(np.abs(out - ref).max()))


def test_metrics_of_large_outputs_take_a_fraction_of_their_size(monkeypatch):
    # A language model's logits over the eval set: the metrics once made whole-array float64 copies and products
    # of them, 1.9 GB on top of two sessions of a 0.73 GB transformer. Now they work on chunks of at most
    # _CHUNK_ELEMENTS (set here to one 1 MiB row in float64, so 32 MiB of outputs show it).
    import tracemalloc

    monkeypatch.setattr(measure, "_CHUNK_ELEMENTS", 1 << 17)
    rng = np.random.default_rng(0)
    out = rng.standard_normal((64, 128, 1024), dtype=np.float32)
    ref = out + np.float32(0.01)
    tracemalloc.start()
    try:
        for f in (measure.agreement, measure.max_abs_diff, measure.cosine, measure.centered_cosine):
            tracemalloc.reset_peak()
            value = f([out], [ref])
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < 0.25 * out.nbytes, f"{f.__name__} took {peak / out.nbytes:.2f}x its output's bytes"
            assert not math.isnan(value)
    finally:
        tracemalloc.stop()


def test_keras3_config_translation():
    k3 = {"class_name": "Functional", "config": {"name": "m", "trainable": True, "layers": [
        {"module": "keras.layers", "class_name": "InputLayer", "name": "a", "inbound_nodes": [],
         "config": {"batch_shape": [None, 4], "dtype": "float32", "sparse": False, "name": "a", "optional": False}},
        {"module": "keras.layers", "class_name": "Dense", "name": "d", "build_config": {"input_shape": [None, 4]},
         "config": {"name": "d", "units": 2, "dtype": {"module": "keras", "class_name": "DTypePolicy",
                                                       "config": {"name": "float32"}}},
         "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__",
                                      "config": {"shape": [None, 4], "keras_history": ["a", 0, 0]}}], "kwargs": {}}]},
        {"module": "keras.layers", "class_name": "Add", "name": "s", "config": {"name": "s"},
         "inbound_nodes": [{"args": [[{"class_name": "__keras_tensor__", "config": {"keras_history": ["d", 0, 0]}},
                                      {"class_name": "__keras_tensor__", "config": {"keras_history": ["d", 0, 0]}}]],
                            "kwargs": {}}]},
    ], "input_layers": ["a", 0, 0], "output_layers": ["s", 0, 0]}}
    out = keras_bridge.translate_config(k3)
    layers = out["config"]["layers"]
    assert layers[0]["config"]["batch_input_shape"] == [None, 4] and "optional" not in layers[0]["config"]
    assert layers[1]["config"]["dtype"] == "float32" and "module" not in layers[1]
    assert layers[1]["inbound_nodes"] == [[["a", 0, 0, {}]]]
    assert layers[2]["inbound_nodes"] == [[["d", 0, 0, {}], ["d", 0, 0, {}]]]
    assert out["config"]["input_layers"] == [["a", 0, 0]] and out["config"]["output_layers"] == [["s", 0, 0]]
    mha = {"class_name": "MultiHeadAttention", "name": "att", "config": {"name": "att", "num_heads": 2},
           "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {"keras_history": ["q", 0, 0]}},
                                       {"class_name": "__keras_tensor__", "config": {"keras_history": ["v", 1, 0]}}],
                              "kwargs": {"use_causal_mask": True}}]}
    k3["config"]["layers"].append(mha)
    att = keras_bridge.translate_config(k3)["config"]["layers"][-1]
    assert att["inbound_nodes"] == [[["q", 0, 0, {"use_causal_mask": True, "value": ["v", 1, 0]}]]]
    assert att["config"]["query_shape"] is None  # tf-keras builds it on the first call
    assert keras_bridge._unknown_kwarg("('Keyword argument not understood:', 'quantization_config')") == \
        "quantization_config"
    assert keras_bridge._unknown_kwarg("__init__() got an unexpected keyword argument 'input_axes'") == "input_axes"
