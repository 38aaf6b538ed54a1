"""Unit tests of the numpy-only parity comparison and NPZ sample handling."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.datasets import generate_inputs, load_npz, save_npz, validate_samples
from modelport.errors import FailedPrecondition, InvalidArgument
from modelport.parity import compare_outputs, enforce
from modelport.v1 import jobs_pb2


def spec(name, datatype, shape):
    return jobs_pb2.TensorSpec(name=name, datatype=datatype, shape=shape)


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
    back = jobs_pb2.ParityReport.FromString(e.value.payload)
    assert back.outputs[0].max_abs_diff == pytest.approx(0.5)
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
