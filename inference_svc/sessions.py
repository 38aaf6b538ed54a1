"""onnxruntime sessions of the inference service: build one on the chosen provider, describe its tensors.

``build_session`` creates an ``InferenceSession`` on the execution provider ``LoadOptions`` asks for,
falling back to CPU (with a warning) when that provider cannot take the model; ``tensor_specs``
describes its inputs/outputs in KServe terms; ``make_runner`` and ``warmup_inputs`` are what the
scheduler runs. Never imports grpc or TensorFlow.
"""

from __future__ import annotations

import warnings as _warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelport import providers as eps
from modelport.dtypes import ORT_TO_KSERVE, to_numpy_dtype
from modelport.errors import InvalidArgument


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, KServe datatype, full shape (-1 = any)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        """'name (DATATYPE [dims])' for error messages."""
        return f"{self.name} ({self.datatype} {list(self.shape)})"


@dataclass
class LoadOptions:
    """Everything that decides how a model version is loaded and scheduled."""

    execution_provider: str = "auto"
    device_id: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization_level: str = "all"
    max_batch_size: int | None = None
    """None = taken from config.pbtxt, else derived from the model (default_max_batch_size)."""
    dynamic_batching: bool | None = None
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0
    instances: int = 0
    warmup: bool = True
    allow_spinning: bool = True


def _dims(shape) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def build_session(path: Path, opts: LoadOptions, available: list[str] | None = None):
    """Create an InferenceSession on the chosen providers; fall back to CPU if that fails."""
    import onnxruntime as ort

    choice = eps.choose(opts.execution_provider, available, opts.device_id)
    so = eps.session_options(opts.intra_op_threads, opts.inter_op_threads, opts.graph_optimization_level,
                             opts.allow_spinning, stop_spinning_after_run=True)
    warnings = list(choice.warnings)
    try:
        with _warnings.catch_warnings():  # onnxruntime's own "provider not available" warning; we report ours
            _warnings.simplefilter("ignore", UserWarning)
            sess = ort.InferenceSession(str(path), sess_options=so, providers=choice.providers,
                                        disabled_optimizers=list(eps.DISABLED_OPTIMIZERS))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        if choice.primary == eps.CPU:
            raise InvalidArgument(
                f"onnxruntime cannot load {path.name}: {exc}; check that the file is a valid ONNX model "
                "whose opset and operators this onnxruntime supports",
                {"path": str(path)},
            ) from None
        warnings.append(f"{choice.primary} failed to load the model ({exc}); using {eps.CPU}")
        try:
            sess = ort.InferenceSession(str(path), sess_options=so, providers=[eps.CPU],
                                        disabled_optimizers=list(eps.DISABLED_OPTIMIZERS))
        except Exception as exc2:  # noqa: BLE001
            raise InvalidArgument(f"onnxruntime cannot load {path.name} on any provider: {exc2}",
                                  {"path": str(path)}) from None
    used = sess.get_providers()[0]
    if used != choice.primary and not any(used in w for w in warnings):
        warnings.append(f"{choice.primary} was selected but onnxruntime runs the model on {used}")
    return sess, warnings


def tensor_specs(args) -> list[TensorSpec]:
    return [TensorSpec(a.name, ORT_TO_KSERVE.get(a.type, "FP32"), _dims(a.shape)) for a in args]


def make_runner(session):
    every_output = [o.name for o in session.get_outputs()]  # once: get_outputs() builds its list on every call
    # On CPU, onnxruntime's own C++ run: the Python ``InferenceSession.run`` around it checks the feed names
    # against the model's inputs (the manager has checked them) and a graph-capture setting, and retries on
    # another provider after an execution provider failure (a GPU matter): 2-3 us of a 10 us MLP run.
    inner = getattr(session, "_sess", None)
    run_c = inner.run if inner is not None and session.get_providers() == ["CPUExecutionProvider"] else None

    def run(inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        names = outputs or every_output
        values = run_c(names, inputs, None) if run_c is not None else session.run(names, inputs)
        return dict(zip(names, values, strict=True))

    return run


ARENA_SHRINK = ("memory.enable_memory_arena_shrinkage", "cpu:0")
"""onnxruntime run option: at the end of the run, the CPU arena returns its free regions (all but the first
one it allocated) to the OS."""


def release_arena(session, feeds: dict[str, np.ndarray]) -> None:
    """One run of ``feeds`` that leaves ``session``'s CPU arena at what that run needs.

    onnxruntime's CPU arena keeps the largest working set any run has needed: after the load-time probe of a
    batch of 8 (``tuning.plan_execution``) a served model held that batch's activations for good. Measured on
    a 0.73 GB transformer LM (d 2048, vocab 32000, seq 128), bare session, batch 1 then 8 then 1: INT8 0.61 GB
    resident after the batch of 8, 0.22 GB after this run; FP32 0.95 GB, 0.56 GB (BENCHMARKS.md, Large
    models). Later runs grow the arena again only as far as the batches actually served need.
    """
    import onnxruntime as ort

    ro = ort.RunOptions()
    ro.add_run_config_entry(*ARENA_SHRINK)
    session.run(None, feeds, ro)


def warmup_inputs(inputs: list[TensorSpec], batch: int) -> dict[str, np.ndarray]:
    feeds = {}
    for t in inputs:
        shape = [batch if (i == 0 and d < 0) else (1 if d < 0 else d) for i, d in enumerate(t.shape)]
        if t.datatype == "BYTES":
            arr = np.full(shape, "", dtype=object)
        else:
            arr = np.zeros(shape, dtype=to_numpy_dtype(t.datatype))
        feeds[t.name] = arr
    return feeds
