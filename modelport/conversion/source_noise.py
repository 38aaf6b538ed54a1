"""Parity judged against the source's own float32 noise (Keras sources).

A deep network with random or badly scaled weights can amplify float32 rounding until the *source itself*
does not reproduce its own output: two float32 evaluations of the same Keras model that differ only in the
order of their sums (TensorFlow eager vs XLA, oneDNN vs Eigen) disagree as much as the converted model does.
EfficientNetV2L with random weights at 32 px is such a model: its logits reach 5e4, and TensorFlow's float32
run is off its float64 run by 85% of that (top-1 agreement 0 of 8) — no float32 converter can match it within
rtol 1e-3.

When a conversion fails the tolerances, ``rejudge`` runs the source once more in float64 (the same layers and
weights under a float64 dtype policy) as the exact reference. An output whose source float32 result is itself
outside the tolerances of that reference — the requested ones and the defaults (rtol 1e-3, atol 1e-4): tighter
tolerances asked for explicitly never make a stable source count as unstable — (the source is numerically
unstable on these inputs) passes when the
converted result is no farther from the float64 reference than ``NOISE_FACTOR`` times the source's own float32
result is; it is then ``judged_by="source noise"`` and the figures are reported (``ModelInfo.details`` key
``DETAIL_KEY``, and the parity summary). A stable source never takes this path: its outputs are judged by the
tolerances alone. A source that cannot be rebuilt in float64 (custom layers, more than ``MAX_WEIGHT_BYTES`` of
weights, less than 4x its weights + 1 GiB of memory available) keeps the plain verdict.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from modelport.job_records import ParityReport
from modelport.parity import JUDGED_BY_SOURCE_NOISE

log = logging.getLogger(__name__)

NOISE_FACTOR = 4.0
"""How much farther than the source's own float32 result the converted one may be from the float64 reference
(two float32 evaluations in different orders are equally far from it, give or take the spread of rounding)."""
MAX_WEIGHT_BYTES = 2 << 30
"""Largest source (float32 weight bytes) rebuilt in float64: the twin holds twice the weights."""
DETAIL_KEY = "parity_source_noise"
JUDGED_BY = JUDGED_BY_SOURCE_NOISE


def _float64_config(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _float64_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float64_config(v) for v in obj]
    return "float64" if obj == "float32" else obj


def float64_twin(model: Any) -> Any:
    """The Keras model rebuilt from its config with every float32 dtype (layers, inputs) as float64 and its
    weights copied; raises if the model cannot be rebuilt from its config."""
    twin = type(model).from_config(_float64_config(model.get_config()))
    weights = [np.asarray(w) for w in model.get_weights()]
    twin.set_weights([w.astype(np.float64) if w.dtype == np.float32 else w for w in weights])
    return twin


def float64_outputs(src: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a loaded ``KerasModel`` source as its float64 twin on ``inputs`` (float32 inputs cast up); the
    source object is reused for its runner and is unusable for anything else afterwards."""
    from modelport.conversion.onnx_export import keras_tf_function

    twin = float64_twin(src.model)
    src.model = src.trackable = twin
    src._dynamic = keras_tf_function(twin, 0)
    wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in inputs.items()}
    return src.run(wide)


def rejudge(report: ParityReport, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            exact: dict[str, np.ndarray], rtol: float, atol: float) -> str:
    """Judge the failed float outputs of ``report`` against ``exact`` (the source in float64): updates the
    report in place and returns one line of figures (empty when no output is unstable in the source)."""
    from modelport.parity import DEFAULT_ATOL, DEFAULT_RTOL, _align

    notes = []
    cand_by_ref = dict(_align(reference, candidate))
    for o in report.outputs:
        if o.passed or o.judged_by != "allclose" or o.name not in exact or o.name not in cand_by_ref:
            continue
        r32 = np.asarray(reference[o.name], np.float64)
        r64 = np.asarray(exact[o.name], np.float64)
        c = np.asarray(candidate[cand_by_ref[o.name]], np.float64).reshape(r32.shape)
        if r64.shape != r32.shape or r32.dtype.kind != "f" or not np.all(np.isfinite(r64)):
            continue
        if np.allclose(r32, r64, rtol=max(rtol, DEFAULT_RTOL), atol=max(atol, DEFAULT_ATOL)):
            continue  # the source is stable on this output: the tolerances alone judge it
        src_err = float(np.max(np.abs(r32 - r64)))
        cand_err = float(np.max(np.abs(c - r64))) if np.all(np.isfinite(c)) else float("inf")
        scale = float(np.max(np.abs(r64))) or 1.0
        ok = cand_err <= NOISE_FACTOR * src_err
        agree = ""
        if r64.ndim == 2 and r64.shape[-1] > 1:
            agree = (f", top-1 agreement with float64: source {np.mean(r32.argmax(-1) == r64.argmax(-1)):.0%}, "
                     f"converted {np.mean(c.argmax(-1) == r64.argmax(-1)):.0%}")
        notes.append(f"{o.name}: the source's own float32 output is off its float64 run by max abs {src_err:.3g} "
                     f"({src_err / scale:.1%} of the output's scale {scale:.3g}), the converted model by "
                     f"{cand_err:.3g}{agree}" + ("" if ok else f" (more than {NOISE_FACTOR:g}x the source's)"))
        if ok:
            o.passed = True
            o.judged_by = JUDGED_BY
    report.passed = bool(report.outputs) and all(o.passed for o in report.outputs)
    if not notes:
        return ""
    return ("the source model is numerically unstable on these inputs (float32 rounding amplified; random or "
            "untrained weights do this): " + "; ".join(notes))


def measure_and_rejudge(load_source, weight_bytes: int, report: ParityReport, inputs: dict[str, np.ndarray],
                        reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                        rtol: float, atol: float) -> str:
    """``rejudge`` with the float64 reference computed from a freshly loaded source (``load_source()``);
    returns "" (report untouched) when the source cannot be rebuilt in float64."""
    if weight_bytes > MAX_WEIGHT_BYTES:
        return ""
    from modelport.memory import available_bytes

    if available_bytes().available < 4 * weight_bytes + (1 << 30):  # float32 reload + float64 twin + copies
        log.info("no float64 re-run of the source for parity: not enough memory available")
        return ""
    src = None
    try:
        src = load_source()
        exact = float64_outputs(src, inputs)
    except Exception as e:  # noqa: BLE001 - optional evidence: the plain verdict stands without it
        log.info("float64 re-run of the source for parity not possible: %s", e)
        return ""
    finally:
        if src is not None:
            src.release()
    return rejudge(report, reference, candidate, exact, rtol, atol)


__all__ = ["NOISE_FACTOR", "MAX_WEIGHT_BYTES", "DETAIL_KEY", "JUDGED_BY", "float64_twin", "float64_outputs",
           "rejudge", "measure_and_rejudge"]
