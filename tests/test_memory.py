"""modelport.memory: weight bytes read from model files, what the machine can give, the admission answer;
and parity's sliced comparison of large outputs (same figures as the whole-array one)."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from modelport import memory
from modelport.errors import ResourceExhausted


def test_available_bytes_is_positive_and_named():
    budget = memory.available_bytes()
    assert budget.available > 0
    assert budget.source  # MemAvailable or a cgroup limit


def test_configured_limit_caps_what_is_available(monkeypatch):
    monkeypatch.setenv(memory.LIMIT_ENV, str(10 << 20))
    budget = memory.available_bytes()
    assert budget.available == 10 << 20 and budget.limit == 10 << 20
    assert budget.source == f"{memory.LIMIT_ENV}=10485760"


def test_cgroup_limit_is_read_when_set():
    limit, usage, what = memory.cgroup_limit()
    if limit:  # inside a limited container: usage and a description come with it
        assert usage >= 0 and "cgroup" in what
    else:
        assert (usage, what) == (0, "")


def test_admit_refuses_with_both_figures_and_advice():
    est = memory.Estimate("converting this keras model to onnx", weight_bytes=3_000_000_000, factor=2.0,
                          overhead=500_000_000)
    budget = memory.MemoryBudget(available=4_000_000_000, source="cgroup v2 memory.max", limit=8_000_000_000)
    with pytest.raises(ResourceExhausted) as e:
        memory.admit(est, "try a bigger machine", budget)
    msg = e.value.message
    assert "needs about 6.50 GB" in msg and "3.00 GB of weights x 2" in msg
    assert "only 4.00 GB is available (cgroup v2 memory.max)" in msg and msg.endswith("try a bigger machine")
    assert e.value.details["needed_bytes"] == "6500000000" and e.value.details["available_bytes"] == "4000000000"
    assert memory.admit(est, "", memory.MemoryBudget(7_000_000_000, "MemAvailable")).available == 7_000_000_000
    assert memory.fmt_bytes(12_500_000) == "12.5 MB" and memory.fmt_bytes(1_330_000_000) == "1.33 GB"


def test_weight_bytes_of_keras_h5_savedmodel_and_onnx(tmp_path):
    import keras
    import onnx

    from modelport.conversion.large_export import keras_to_onnx_external

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(8)])
    expected = (64 * 32 + 32 + 32 * 8 + 8) * 4
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    assert memory.weight_bytes(tmp_path / "m.keras", "keras") == expected
    assert memory.weight_bytes(tmp_path / "m.h5", "h5") == expected

    model.export(str(tmp_path / "sm"), verbose=False)
    with tarfile.open(tmp_path / "sm.tar", "w") as tar:
        tar.add(tmp_path / "sm", arcname=".")
    shards = sum(p.stat().st_size for p in (tmp_path / "sm").rglob("variables.data-*"))
    assert shards >= expected
    assert memory.weight_bytes(tmp_path / "sm.tar", "savedmodel") == shards
    assert memory.weight_bytes(tmp_path / "sm", "savedmodel") == shards

    folder = tmp_path / "onnx"
    keras_to_onnx_external(model, folder)
    assert memory.weight_bytes(folder, "onnx") == expected
    proto = onnx.load_model(str(folder / "model.onnx"))  # the same model as one file
    onnx.save_model(proto, str(tmp_path / "one.onnx"))
    assert memory.weight_bytes(tmp_path / "one.onnx", "onnx") == expected
    assert memory.weight_bytes(tmp_path / "missing.keras", "keras") == 0


@pytest.mark.parametrize("shape", [(37, 50), (9, 7, 11)])
def test_parity_in_slices_equals_the_whole_comparison(shape, monkeypatch):
    from modelport import parity

    rng = np.random.default_rng(0)
    ref = rng.standard_normal(shape).astype("float32")
    cand = ref + rng.normal(0, 1e-4, ref.shape).astype("float32")
    cand[5, 3] = ref[5, 3] + 0.5  # one clear outlier, in one slice only
    whole = parity.compare_output("y", ref, cand, 1e-3, 1e-4)
    monkeypatch.setattr(parity, "CHUNK_ELEMENTS", 150)  # a few samples per slice
    sliced = parity.compare_output("y", ref, cand, 1e-3, 1e-4)
    for field in ("max_abs_diff", "max_rel_diff", "allclose", "nan_or_inf", "cosine", "passed", "judged_by",
                  "top_k"):
        assert getattr(sliced, field) == getattr(whole, field), field
    assert sliced.top1_agreement == pytest.approx(whole.top1_agreement)
    assert sliced.topk_agreement == pytest.approx(whole.topk_agreement)
    assert not sliced.passed and sliced.cosine < 1.0
    cand[7, 1] = np.nan
    assert parity.compare_output("y", ref, cand, 1e-3, 1e-4).nan_or_inf


def test_quantized_parity_in_slices_equals_the_whole_comparison(monkeypatch):
    from modelport import parity

    rng = np.random.default_rng(1)
    ref = rng.integers(-128, 128, (40, 10)).astype("int8")
    cand = np.clip(ref.astype(int) + rng.integers(-2, 3, ref.shape), -128, 127).astype("int8")
    q = parity.Quantization(scale=0.05, zero_point=3, source="test")
    whole = parity.compare_output("q", ref, cand, 1e-3, 1e-4, q)
    monkeypatch.setattr(parity, "CHUNK_ELEMENTS", 60)
    sliced = parity.compare_output("q", ref, cand, 1e-3, 1e-4, q)
    assert sliced.judged_by == whole.judged_by == "quantized"
    for field in ("max_abs_diff", "max_diff_steps", "cosine", "passed", "quant_scale", "quant_zero_point"):
        assert getattr(sliced, field) == pytest.approx(getattr(whole, field)), field
    assert sliced.mean_diff_steps == pytest.approx(whole.mean_diff_steps)
    assert sliced.topk_agreement == pytest.approx(whole.topk_agreement)
