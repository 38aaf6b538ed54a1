"""Execution-provider selection for onnxruntime sessions (shared by inference and optimizer).

``select_providers`` turns a user choice (``auto``, ``cpu``, ``cuda``, ``tensorrt``,
``openvino`` or an onnxruntime provider name) and the providers this onnxruntime build offers
into the ``providers`` list ``InferenceSession`` takes (each entry ``(name, options)``), plus
human-readable warnings for every fallback taken. Pure logic: the available list can be faked,
so the choice is unit-testable on a CPU-only machine. Provider option names follow
onnxruntime's documented CUDA / TensorRT / OpenVINO provider options.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"

# Short names users type -> onnxruntime provider names.
ALIASES: dict[str, str] = {
    "cpu": CPU,
    "cuda": CUDA,
    "gpu": CUDA,
    "tensorrt": TENSORRT,
    "trt": TENSORRT,
    "openvino": OPENVINO,
}
SHORT_NAMES: dict[str, str] = {CPU: "cpu", CUDA: "cuda", TENSORRT: "tensorrt", OPENVINO: "openvino"}

# `auto` preference, best first.
AUTO_ORDER: tuple[str, ...] = (TENSORRT, CUDA, OPENVINO, CPU)

GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass
class ProviderChoice:
    """The outcome of a selection: the list for ``InferenceSession`` and what was decided."""

    providers: list[tuple[str, dict[str, str]]]
    warnings: list[str] = field(default_factory=list)

    @property
    def primary(self) -> str:
        """The highest-priority provider (what the model mainly runs on)."""
        return self.providers[0][0]

    @property
    def names(self) -> list[str]:
        """Provider names in priority order."""
        return [name for name, _ in self.providers]


def available_providers() -> list[str]:
    """Providers the installed onnxruntime build offers (imported lazily)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def normalize(requested: str) -> str:
    """Map a user choice to an onnxruntime provider name ('' and 'auto' stay 'auto').

    Raises ValueError naming the accepted values when the choice is unknown.
    """
    r = (requested or "auto").strip()
    if r.lower() == "auto":
        return "auto"
    if r.lower() in ALIASES:
        return ALIASES[r.lower()]
    if r.endswith("ExecutionProvider"):
        return r
    raise ValueError(
        f"unknown execution provider {requested!r}; use one of auto, cpu, cuda, tensorrt, openvino "
        "or an onnxruntime provider name such as CUDAExecutionProvider"
    )


def provider_options(name: str, device_id: int = 0, *, trt_fp16: bool = False,
                     trt_cache_dir: str | None = None, openvino_device: str = "CPU") -> dict[str, str]:
    """onnxruntime provider options for one provider (string values, as ORT accepts them)."""
    if name == CUDA:
        return {
            "device_id": str(device_id),
            "arena_extend_strategy": "kNextPowerOfTwo",
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "do_copy_in_default_stream": "1",
        }
    if name == TENSORRT:
        opts = {
            "device_id": str(device_id),
            "trt_fp16_enable": "1" if trt_fp16 else "0",
            "trt_max_workspace_size": str(2 << 30),
        }
        if trt_cache_dir:
            opts["trt_engine_cache_enable"] = "1"
            opts["trt_engine_cache_path"] = trt_cache_dir
        return opts
    if name == OPENVINO:
        return {"device_type": openvino_device}
    return {}


def select_providers(requested: str, available: list[str] | None = None, device_id: int = 0, *,
                     trt_fp16: bool = False, trt_cache_dir: str | None = None) -> tuple[
                         list[tuple[str, dict[str, str]]], list[str]]:
    """Pick execution providers for a session.

    ``auto`` takes the best available of TensorRT -> CUDA -> OpenVINO -> CPU (TensorRT keeps
    CUDA behind it for the nodes it cannot take). An explicit choice that this build lacks
    falls back to CPU with a warning. CPU is always last, so every node has a home.
    Returns ``(providers_with_options, warnings)``.
    """
    choice = choose(requested, available, device_id, trt_fp16=trt_fp16, trt_cache_dir=trt_cache_dir)
    return choice.providers, choice.warnings


def choose(requested: str, available: list[str] | None = None, device_id: int = 0, *,
           trt_fp16: bool = False, trt_cache_dir: str | None = None) -> ProviderChoice:
    """Like ``select_providers`` but returns a ``ProviderChoice``."""
    avail = list(available) if available is not None else available_providers()
    want = normalize(requested)
    warnings: list[str] = []
    if want == "auto":
        order = [p for p in AUTO_ORDER if p in avail]
    elif want in avail:
        order = [want]
    else:
        warnings.append(
            f"{want} is not available in this onnxruntime build (available: {', '.join(avail) or 'none'}); "
            f"using {CPU}"
        )
        order = []
    if want == TENSORRT and TENSORRT in order and CUDA in avail:
        order.append(CUDA)
    if CPU not in order:
        order.append(CPU)
    # Deduplicate while keeping priority.
    seen: list[str] = []
    for p in order:
        if p not in seen:
            seen.append(p)
    providers = [
        (p, provider_options(p, device_id, trt_fp16=trt_fp16, trt_cache_dir=trt_cache_dir)) for p in seen
    ]
    return ProviderChoice(providers, warnings)


def cpu_only(choice: ProviderChoice) -> ProviderChoice:
    """The CPU fallback of a choice (used when a session fails to build on an accelerator)."""
    return ProviderChoice([(CPU, {})], list(choice.warnings))


def graph_optimization_level(level: str | int | None):
    """onnxruntime GraphOptimizationLevel for 'disable'|'basic'|'extended'|'all' (default all).

    Also accepts Triton's numeric graph level: -1 disabled, 0 default (all), 1 extended, 2+ all.
    """
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if level is None or level == "":
        return levels["all"]
    if isinstance(level, int):
        return levels["disable" if level < 0 else "all" if level == 0 or level >= 2 else "extended"]
    key = str(level).strip().lower()
    if key not in levels:
        raise ValueError(f"unknown graph optimization level {level!r}; use one of {', '.join(GRAPH_OPT_LEVELS)}")
    return levels[key]


def session_options(intra_op_threads: int = 0, inter_op_threads: int = 0,
                    graph_level: str | int | None = None, allow_spinning: bool = True,
                    stop_spinning_after_run: bool = False):
    """onnxruntime SessionOptions with thread counts (0 = ORT default) and optimization level.

    ``allow_spinning=False`` stops idle intra/inter-op threads from spin-waiting between runs
    (onnxruntime's ``session.*.allow_spinning``), which frees cores shared with other work.
    ``stop_spinning_after_run=True`` keeps the spinning inside a run (fast hand-offs between the
    operators' parallel sections) but stops it as soon as the last concurrent ``run`` returns
    (``session.force_spinning_stop``): what a server sharing its cores with gRPC wants.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    elif stop_spinning_after_run:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    if intra_op_threads > 0:
        so.intra_op_num_threads = int(intra_op_threads)
    if inter_op_threads > 0:
        so.inter_op_num_threads = int(inter_op_threads)
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.graph_optimization_level = graph_optimization_level(graph_level)
    return so


# onnxruntime graph fusions modelport turns off in every session it builds (serving, the optimizer's
# measurements, offline graph optimization). SkipLayerNormFusion: onnxruntime's CPU SkipLayerNormalization
# kernel is a scalar loop with a divide per element, 5.7-8.1x the time of Add + LayerNormalization on
# BERT-Mini/Small shapes (BENCHMARKS.md, "Optimizer: attention fusion"); once the attention fusion gives
# quant_pre_process full shapes, sessions of INT8 encoders would otherwise fuse it and run slower.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
