"""Memory admission of Optimize jobs: what each technique needs, from the model's weight bytes, against
what this machine (cgroup limit, MemAvailable, ``memory_limit_bytes``) can give, decided before any of it
runs.

- In the service (``check_request``), before a worker is started: a request that names techniques which
  cannot fit, or a model whose baseline alone cannot be loaded and measured, is refused at once with
  RESOURCE_EXHAUSTED naming the bytes needed and available and what to try.
- In the worker (``admit_plan``), once the plan is known: under ``auto`` each technique that cannot fit is
  moved to the plan's skipped list with that same sentence, so it shows in the candidate table instead of
  the worker being killed by the kernel halfway through.

The factors are peak memory added to the worker per byte of weights, measured through the optimizer service on
0.73-2.34 GB transformers with external data (``benchmarks/bench_large_techniques.py``); the Keras and TFLite
ones are bounds from what the technique holds. No grpc, no TensorFlow.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from modelport import memory
from modelport.errors import ResourceExhausted
from modelport.techniques import KERAS_TECHNIQUES, TFLITE_TECHNIQUES

OVERHEAD_BYTES = 512 << 20
"""What a job adds whatever the model: onnxruntime, numpy, the datasets and measurement buffers."""

BASELINE_FACTOR = 1.75
"""The baseline session of an input model inside one protobuf (parsed whole, then handed over; prepacked weights and
the eval batch's activations): 1.56x at the high-water mark on the 0.73 GB transformer saved in one file."""
EXTERNAL_BASELINE_FACTOR = 1.25
"""The same for a model with external data: onnxruntime maps the weights, but prepacks the MatMul weights into copies
of its own and keeps the eval batch's activations: 1.21x on the 0.73 GB transformer (the 0.25 this was, from the
resident size right after loading, left the baseline's runs out)."""
KERAS_BASELINE_FACTOR = 4.0
"""A Keras input: loaded, rebuilt in tf-keras for the Keras techniques and exported to ONNX first."""

# Measured for issue 13 through the optimizer service (benchmarks/bench_large_techniques.py, section "Large models:
# every optimizer technique"): the job's whole peak, the baseline's session held while each candidate is built and
# then measured beside it, on the converter's transformer LMs with external data (d 2048, FFN 8192, vocab 32000;
# 1 block 0.73 GB, 4 blocks 1.33 GB, 9 blocks 2.34 GB). Per weight byte over the worker, minus the baseline's 1.25
# and OVERHEAD_BYTES: graph 1.11 / 0.94 / 0.86, fp16 - / 1.58 / 1.37, int8-static - / 2.75 / 2.96, int8-dynamic
# 2.1 / 1.61 / 1.29. Each factor is the largest of those plus a margin. The candidate's own session and its
# measurement are in these figures: the factors before counted only the build, in a fresh process, and every job
# through the service passed its estimate (graph 2.74x of the weights against 2.15x estimated at 1.33 GB).
FACTORS = {
    "int8-dynamic": 2.5,  # external data from 256 MiB (no quant_pre_process): measured 1.29-2.1x (above)
    "graph": 1.5,  # onnx load + rewrites + onnxruntime's offline pass, then the candidate's session: 0.86-1.11x
    "fp16": 2.5,  # the float32 model whole, its float16 copy and the serialization, then its session: 1.37-1.58x
    "int8-static": 3.5,  # the model, its calibration-augmented copy and that copy's session: 2.75-2.96x
    **{t: 8.0 for t in KERAS_TECHNIQUES + TFLITE_TECHNIQUES},  # TensorFlow fine-tunes / TFLite converter
}
DEFAULT_FACTOR = 4.0
PREPROCESSED_INT8_DYNAMIC_FACTOR = 5.5
"""int8-dynamic below 256 MiB, where quant_pre_process (symbolic shape inference, an onnxruntime pass, ONNX shape
inference: each a full load and write) runs first: 5.5x peak of the optimizer's tree measured on 0.73 GB."""


def factor(technique: str, weights: int) -> float:
    """Peak memory of building and measuring ``technique``'s candidate, per weight byte."""
    from optimizer_svc.onnx_techniques import PREPROCESS_MAX_BYTES

    if technique == "int8-dynamic" and weights < PREPROCESS_MAX_BYTES:
        return PREPROCESSED_INT8_DYNAMIC_FACTOR
    return FACTORS.get(technique, DEFAULT_FACTOR)


def model_weight_bytes(path: Path, fmt: str) -> int:
    """Weight bytes of the model to optimize, read cheaply (no model parse in the service process): an ONNX
    file's size, the members of an ONNX folder archive (model.onnx + its data), a Keras file's weights."""
    path = Path(path)
    if fmt == "keras":
        with open(path, "rb") as f:
            hdf5 = f.read(8) == b"\x89HDF\r\n\x1a\n"
        return memory.weight_bytes(path, "h5" if hdf5 else "keras")
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        from modelport.archive import is_tar

        if is_tar(path):
            with tarfile.open(path, "r:") as tar:
                return sum(m.size for m in tar.getmembers() if m.isfile())
        return path.stat().st_size
    except (OSError, tarfile.TarError):
        return 0


def _baseline_factor(fmt: str, external: bool) -> float:
    if fmt == "keras":
        return KERAS_BASELINE_FACTOR
    return EXTERNAL_BASELINE_FACTOR if external else BASELINE_FACTOR


def estimate(technique: str, weights: int, external: bool = False, fmt: str = "onnx") -> memory.Estimate:
    """Memory one technique's candidate needs (building and measuring it), with the baseline's session held."""
    return memory.Estimate(f"{technique} on this model", weights,
                           _baseline_factor(fmt, external) + factor(technique, weights), OVERHEAD_BYTES)


def baseline_estimate(fmt: str, weights: int, external: bool = False) -> memory.Estimate:
    return memory.Estimate(f"loading and measuring this {fmt} model", weights, _baseline_factor(fmt, external),
                           OVERHEAD_BYTES)


def _sizes(path: Path, fmt: str) -> tuple[int, bool]:
    """(weight bytes, whether the weights are external data) of the model artifact at ``path``."""
    from modelport.archive import is_tar

    try:
        external = fmt == "onnx" and is_tar(path)
    except OSError:
        external = False
    return model_weight_bytes(path, fmt), external


def _file_sizes(path: Path, fmt: str) -> tuple[int, bool]:
    """The service-side figures: the stored file's size stands for its weight bytes (an uncompressed tar of an
    ONNX folder, an ONNX file, a Keras zip/HDF5 file are their weights plus little), whether it is a tar from its
    first header block. Nothing is listed or parsed in the service process (the worker's ``admit_plan`` reads the
    exact figures)."""
    from modelport.archive import is_tar

    path = Path(path)
    try:
        if path.is_dir():  # an archive the sniffer unpacked
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()), fmt == "onnx"
        return path.stat().st_size, fmt == "onnx" and is_tar(path)
    except OSError:
        return 0, False


def _advice(budget: memory.MemoryBudget, *parts: str) -> str:
    """What to try: the technique-specific hints, more memory, and the configured cap when it decided."""
    cap = (f"or raise the optimizer's memory_limit_bytes ({memory.LIMIT_ENV}) if it was set too low"
           if budget.source.startswith(memory.LIMIT_ENV) else "")
    return ", ".join(p for p in (*parts, "run it where more memory is free (another machine, a higher container "
                                          "memory limit, or fewer concurrent jobs)", cap) if p)


def admit_baseline(fmt: str, weights: int, budget: memory.MemoryBudget, external: bool = False) -> None:
    """RESOURCE_EXHAUSTED when even the input model cannot be loaded and measured."""
    hint = ("convert it to ONNX first (Converter.Convert streams the weights to external data) and optimize "
            "the ONNX result" if fmt == "keras" else "")
    memory.admit(baseline_estimate(fmt, weights, external), _advice(budget, hint), budget)


def check_request(techniques: list[str], fmt: str, path: Path, auto: bool,
                  budget: memory.MemoryBudget | None = None) -> None:
    """The service's check of the model artifact at ``path``, before a worker starts: the baseline must fit,
    and so must every technique the request names (under ``auto`` the worker skips what does not fit)."""
    if fmt == "generation":
        return
    weights, external = _file_sizes(path, fmt)
    if weights <= 0:
        return
    budget = budget or memory.available_bytes()
    admit_baseline(fmt, weights, budget, external)
    if auto:
        return
    for t in techniques:
        memory.admit(estimate(t, weights, external, fmt), _advice(budget, f"drop {t} from the request or ask for 'auto' (which "
                                                           "skips the techniques that cannot fit)"), budget)


def admit_plan(plan, fmt: str, path: Path, budget: memory.MemoryBudget | None = None) -> dict[str, str]:
    """The worker's check of a plan (``technique_options.Plan``) for the model artifact at ``path``, in place: under ``auto`` a technique that
    cannot fit moves to ``plan.skipped`` with the reason; named ones raise RESOURCE_EXHAUSTED. Returns the
    figures for the baseline's details (weight bytes, available bytes and where that figure comes from)."""
    if fmt == "generation":
        return {}
    weights, external = _sizes(path, fmt)
    if weights <= 0:
        return {}
    budget = budget or memory.available_bytes()
    admit_baseline(fmt, weights, budget, external)
    for t in list(plan.run):
        try:
            memory.admit(estimate(t, weights, external, fmt), _advice(budget, f"drop {t} from the request"), budget)
        except ResourceExhausted as e:
            if not plan.auto:
                raise
            plan.run.remove(t)
            plan.skipped.append((t, f"skipped: {e.message.split('; ')[0]}"))
    return {"weight_bytes": str(weights), "memory_available_bytes": str(budget.available),
            "memory_available_source": budget.source}
