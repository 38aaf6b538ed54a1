"""Parity judged against the source's own float32 noise (modelport.conversion.source_noise; issue 18:
EfficientNetV2L with random weights, whose TensorFlow float32 run is off its float64 run as far as the
converted model is)."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.conversion import source_noise
from modelport.errors import FailedPrecondition
from modelport.parity import compare_outputs, enforce


def _cancelling_model(path):
    """Two 4096-input Dense paths of large weights (1e5) that differ by ~1, subtracted: the output (~10-100) is
    the small difference of ~1e6 sums, so float32 summation order (TensorFlow vs onnxruntime) moves it by
    several units: the same amplification of rounding as a deep random network, in two layers."""
    import keras

    keras.utils.set_random_seed(0)
    n = 4096
    x = keras.Input((n,), name="x")
    a = keras.layers.Dense(10, use_bias=False, name="big_a")
    b = keras.layers.Dense(10, use_bias=False, name="big_b")
    m = keras.Model(x, keras.layers.Subtract(name="logits")([a(x), b(x)]))
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1e5, (n, 10)).astype(np.float32)
    a.set_weights([w + rng.normal(0, 1, (n, 10)).astype(np.float32)])
    b.set_weights([w])
    m.save(str(path))


def test_a_conversion_of_a_numerically_unstable_source_passes_against_its_float64_run(tmp_path):
    from modelport import media
    from modelport.conversion.convert import convert_model
    from modelport.job_records import ConvertJob
    from modelport.store import ArtifactStore

    _cancelling_model(tmp_path / "m.keras")
    store = ArtifactStore(tmp_path / "store")
    ref = store.put_file(tmp_path / "m.keras", media.KERAS)
    res = convert_model(store, ConvertJob(source_digest=ref.digest, target_format="onnx"))
    o = res.parity.outputs[0]
    # Outside the default tolerances (atol 1e-4) against the float32 source, judged against float64 instead.
    assert o.max_abs_diff > 0.01 and not o.allclose
    assert res.parity.passed and o.passed and o.judged_by == source_noise.JUDGED_BY
    note = res.info.details[source_noise.DETAIL_KEY]
    assert note.startswith("the source model is numerically unstable") and "off its float64 run" in note


def test_a_stable_source_keeps_the_tolerance_verdict():
    ref = {"y": np.array([[1.0, 2.0], [3.0, 4.0]])}
    cand = {"y": np.array([[1.0, 2.5], [3.0, 4.0]])}
    rep = compare_outputs(ref, cand)
    note = source_noise.rejudge(rep, ref, cand, {"y": ref["y"].astype(np.float64)}, 1e-3, 1e-4)
    assert note == "" and not rep.passed and rep.outputs[0].judged_by == "allclose"
    # Tolerances asked far below float32 do not make a source that is stable at the defaults "unstable".
    exact = {"y": ref["y"] + 1e-7}
    cand = {"y": ref["y"] + 2e-7}
    rep = compare_outputs(ref, cand, rtol=1e-15, atol=1e-15)
    assert source_noise.rejudge(rep, ref, cand, exact, 1e-15, 1e-15) == "" and not rep.passed


def test_a_candidate_farther_than_the_source_noise_fails_and_the_message_says_why():
    exact = {"y": np.array([[10.0, 20.0], [30.0, 40.0]])}
    ref = {"y": exact["y"] + 1.0}  # the source's own float32 error: 1.0, so up to 4.0 passes
    cand = {"out": exact["y"].copy()}  # another name: paired by position, like compare_outputs
    cand["out"][0, 1] += 3.0
    rep = compare_outputs(ref, cand)
    assert not rep.passed
    note = source_noise.rejudge(rep, ref, cand, exact, 1e-3, 1e-4)
    assert rep.passed and rep.outputs[0].judged_by == "source noise" and "by max abs 1 " in note

    cand["out"][0, 1] += 2.0  # 5.0 from the float64 run: past 4x the source's noise
    rep = compare_outputs(ref, cand)
    note = source_noise.rejudge(rep, ref, cand, exact, 1e-3, 1e-4)
    assert not rep.passed and rep.outputs[0].judged_by == "allclose" and "more than 4x the source's" in note
    with pytest.raises(FailedPrecondition) as e:
        enforce(rep, allow_mismatch=False, note=note)
    assert "Note: the source model is numerically unstable" in e.value.message


def test_the_float64_twin_keeps_layers_and_weights():
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    m = keras.Model(x, keras.layers.Dense(3, name="d")(keras.layers.Normalization(mean=1.0, variance=4.0)(x)))
    twin = source_noise.float64_twin(m)
    xs = np.random.default_rng(0).uniform(-1, 1, (5, 4)).astype(np.float32)
    got = np.asarray(twin(xs.astype(np.float64)))
    assert got.dtype == np.float64 and all(np.asarray(w).dtype == np.float64 for w in twin.weights)
    np.testing.assert_allclose(got, np.asarray(m(xs)), rtol=1e-5, atol=1e-6)
