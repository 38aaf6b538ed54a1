"""Unit tests of the numpy-only parity comparison and NPZ sample handling."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.datasets import generate_inputs, load_npz, save_npz, validate_samples
from modelport.errors import FailedPrecondition, InvalidArgument
from modelport.job_records import ParityReport, TensorSpec
from modelport.parity import compare_outputs, enforce


def spec(name, datatype, shape):
    return TensorSpec(name=name, datatype=datatype, shape=tuple(shape))


def test_identical_outputs_pass_with_zero_diff_and_full_top1():
    ref = {"probs": np.array([[0.1, 0.9], [0.8, 0.2]], "float32"), "reg": np.array([[1.0], [2.0]], "float32")}
    rep = compare_outputs(ref, {k: v.copy() for k, v in ref.items()}, rtol=1e-3, atol=1e-4)
    assert rep.passed and rep.samples == 2 and rep.rtol == 1e-3 and rep.atol == 1e-4
    by = {o.name: o for o in rep.outputs}
    assert by["probs"].max_abs_diff == 0 and by["probs"].allclose and by["probs"].top1_agreement == 1.0
    assert by["reg"].top1_agreement == -1.0  # last dim 1: not classifier-like


def test_diff_over_tolerance_fails_and_reports_values():
    ref = {"y": np.array([[1.0, 2.0], [3.0, 4.0]])}
    cand = {"y": np.array([[1.0, 2.5], [3.0, 4.0]])}
    rep = compare_outputs(ref, cand, rtol=1e-3, atol=1e-4)
    o = rep.outputs[0]
    assert not rep.passed and not o.allclose
    assert o.max_abs_diff == pytest.approx(0.5) and o.max_rel_diff == pytest.approx(0.25)
    assert o.top1_agreement == 1.0  # argmax unchanged
    with pytest.raises(FailedPrecondition) as e:
        enforce(rep, allow_mismatch=False)
    assert "parity check failed for output(s) y" in e.value.message and "allow_mismatch" in e.value.message
    back = e.value.payload  # the report travels with the error (JobError.parity on the wire)
    assert isinstance(back, ParityReport) and back.outputs[0].max_abs_diff == pytest.approx(0.5)
    enforce(rep, allow_mismatch=True)  # no raise


def test_nan_introduced_is_flagged_and_fails():
    ref = {"y": np.array([[1.0, np.nan], [0.0, 1.0]])}
    cand = {"y": np.array([[np.inf, np.nan], [0.0, 1.0]])}
    o = compare_outputs(ref, cand).outputs[0]
    assert o.nan_or_inf and not o.allclose and o.max_abs_diff == float("inf")


def test_top1_agreement_fraction_and_positional_matching():
    ref = {"a": np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.3, 0.7]])}
    cand = {"other_name": np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])}
    o = compare_outputs(ref, cand, rtol=0, atol=1).outputs[0]
    assert o.name == "a" and o.top1_agreement == 0.75 and o.allclose


def test_shape_mismatch_with_different_size_fails():
    o = compare_outputs({"y": np.zeros((2, 3))}, {"y": np.zeros((2, 4))}).outputs[0]
    assert not o.allclose and o.max_abs_diff == float("inf")


def test_output_count_mismatch_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="output names and counts must match"):
        compare_outputs({"a": np.zeros(1), "b": np.zeros(1)}, {"c": np.zeros(1)})


def test_validate_samples_names_array_and_expected_shape(tmp_path):
    specs = [spec("image", "FP32", [-1, 4, 4, 3]), spec("ids", "INT32", [-1, 5])]
    p = tmp_path / "s.npz"
    save_npz({"image": np.zeros((2, 4, 4, 3), "float64"), "ids": np.ones((2, 5), "int64")}, p)
    ok = validate_samples(load_npz(p), specs)
    assert list(ok) == ["image", "ids"] and ok["image"].dtype == np.float32 and ok["ids"].dtype == np.int32

    with pytest.raises(InvalidArgument) as e:
        validate_samples({"image": np.zeros((2, 4, 4, 3), "float32")}, specs)
    assert "no array 'ids'" in e.value.message and "(?, 5)" in e.value.message
    with pytest.raises(InvalidArgument) as e:
        validate_samples({"image": np.zeros((2, 4, 4), "float32"), "ids": np.ones((2, 5), "int32")}, specs)
    assert "'image' has shape (2, 4, 4)" in e.value.message and "(?, 4, 4, 3)" in e.value.message
    with pytest.raises(InvalidArgument) as e:
        validate_samples({"image": np.zeros((2, 4, 4, 3), "float32"), "ids": np.ones((2, 5), "float32")}, specs)
    assert "'ids' has dtype float32" in e.value.message and "int32" in e.value.message
    with pytest.raises(InvalidArgument, match="same number of samples"):
        validate_samples({"image": np.zeros((2, 4, 4, 3), "float32"), "ids": np.ones((3, 5), "int32")}, specs)


def test_single_input_accepts_x_key():
    out = validate_samples({"x": np.zeros((3, 2), "float32")}, [spec("features", "FP32", [-1, 2])])
    assert list(out) == ["features"] and out["features"].shape == (3, 2)


def test_load_npz_rejects_garbage_and_pickles(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(InvalidArgument, match="not a readable NPZ"):
        load_npz(bad)
    pick = tmp_path / "pick.npz"
    np.savez(pick, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(InvalidArgument, match="pickled"):
        load_npz(pick)


def test_generate_inputs_is_deterministic_and_respects_int_ranges():
    specs = [spec("img", "FP32", [-1, 3, -1]), spec("tok", "INT32", [-1, 6]), spec("fixed", "FP32", [2, 2])]
    a = generate_inputs(specs, num_samples=5, seed=3, int_ranges={"tok": (0, 7)})
    b = generate_inputs(specs, num_samples=5, seed=3, int_ranges={"tok": (0, 7)})
    assert a["img"].shape == (5, 3, 4) and a["img"].dtype == np.float32
    assert a["tok"].dtype == np.int32 and a["tok"].min() >= 0 and a["tok"].max() < 7
    assert a["fixed"].shape == (2, 2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = generate_inputs(specs, num_samples=5, seed=4)
    assert not np.array_equal(a["img"], c["img"])


# --- quantized outputs ----------------------------------------------------------------------------

def _softmax_int8(rng, n=8, classes=10):
    """int8 softmax outputs as TFLite writes them (scale 1/256, zero point -128), peaked per sample."""
    logits = rng.normal(0, 2, (n, classes))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return np.clip(np.round(p * 256) - 128, -128, 127).astype(np.int8)


def test_quantized_output_is_judged_in_steps_and_passes_a_few_steps():
    from modelport.parity import Quantization, summarize

    rng = np.random.default_rng(0)
    ref = _softmax_int8(rng)
    cand = ref.astype(np.int16)
    cand[np.arange(8), np.argmax(ref, 1)] -= 6  # the case: 6 steps of 1/256 = 0.0234 on the top class
    cand = np.clip(cand, -128, 127).astype(np.int8)
    q = {"probs": Quantization(1 / 256, -128, "source output (int8)")}
    rep = compare_outputs({"probs": ref}, {"probs": cand}, quantization=q)
    o = rep.outputs[0]
    assert rep.passed and o.passed and o.judged_by == "quantized" and not o.allclose  # allclose alone fails it
    assert o.max_diff_steps == pytest.approx(6) and o.max_abs_diff == pytest.approx(6 / 256)
    assert o.mean_diff_steps == pytest.approx(0.6) and o.quant_zero_point == -128 and o.quant_scale == 1 / 256
    # one near-tie sample flips its top-1 (7 of 8 agree); its top-1 stays in the top 5, so it passes
    assert o.top1_agreement == 0.875 and o.top_k == 5 and o.topk_agreement == 1.0 and o.cosine > 0.99
    assert rep.quant_max_steps == 8 and rep.min_cosine == 0.99
    assert "quantized (scale 0.003906, zero point -128), max diff 6 steps" in summarize(rep)
    # Without the quantization parameters the same arrays are judged by rtol/atol and fail.
    assert not compare_outputs({"probs": ref}, {"probs": cand}).passed


def test_quantized_output_fails_when_broken():
    from modelport.parity import Quantization, QuantTolerances

    rng = np.random.default_rng(1)
    ref = _softmax_int8(rng)
    q = {"probs": Quantization(1 / 256, -128)}

    def judged(cand):
        return compare_outputs({"probs": ref}, {"probs": cand}, quantization=q).outputs[0]

    shifted = np.clip(ref.astype(np.int16) + 3, -128, 127).astype(np.int8)  # a zero point off by 3
    o = judged(shifted)
    assert not o.passed and o.max_diff_steps <= 8 and o.mean_diff_steps > 1
    rolled = np.roll(ref, 1, axis=1)  # a permuted weight row: classes swapped
    o = judged(rolled)
    assert not o.passed and o.top1_agreement < 0.5 and o.cosine < 0.99
    spike = ref.copy()
    spike[0, 0] = 127  # one element far off
    o = judged(spike)
    assert not o.passed and o.max_diff_steps > 8
    with pytest.raises(FailedPrecondition) as e:
        enforce(compare_outputs({"probs": ref}, {"probs": spike}, quantization=q), allow_mismatch=False)
    assert "quant_max_steps" in e.value.message
    # Tolerances are the caller's to loosen.
    loose = QuantTolerances(max_steps=300, mean_steps=300, min_cosine=-1, min_topk_agreement=0)
    assert compare_outputs({"probs": ref}, {"probs": spike}, quantization=q, quant_tolerances=loose).passed


def test_quant_tolerances_from_options_default_and_validate():
    from modelport.job_records import ParityOptions
    from modelport.parity import QuantTolerances

    assert QuantTolerances.from_options(ParityOptions()) == QuantTolerances()
    t = QuantTolerances.from_options(ParityOptions(quant_max_steps=2, min_cosine=0.5))
    assert t.max_steps == 2 and t.min_cosine == 0.5 and t.mean_steps == 1.0
    with pytest.raises(InvalidArgument, match="quantized parity tolerances out of range"):
        QuantTolerances.from_options(ParityOptions(min_topk_agreement=1.5))
