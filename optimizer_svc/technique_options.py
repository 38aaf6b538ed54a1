"""The optimizer's vocabulary: technique names, which input each applies to, and their options.

One list of names is shared by the proto, the CLI and the reports. ``plan`` turns a request's
technique list (or ``auto``) into the techniques to run and the ones skipped with a note;
``parse_options`` validates ``OptimizeRequest.options`` against the documented keys and
defaults. Pure Python (no grpc, no TensorFlow) so the servicer can reject a bad request before
any worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelport.errors import InvalidArgument
from modelport.techniques import ALL_TECHNIQUES, AUTO, LLM_TECHNIQUES, ONNX_TECHNIQUES

# Techniques that need a labeled (or, for distill, at least an input-only) training set.
NEEDS_TRAIN = {"prune", "prune-2:4", "cluster", "qat"}
# Techniques that need representative inputs (calibration, else train, else eval inputs).
NEEDS_CALIBRATION = {"int8-static", "tflite-int8"}

# option key -> (default, description). Values arrive as strings in OptimizeRequest.options.
OPTIONS: dict[str, tuple[str, str]] = {
    "graph.level": ("extended", "offline ORT graph optimization level: basic, extended or all (all is machine-specific)"),
    "int8-dynamic.per_channel": ("false", "per-channel weight scales for dynamic INT8"),
    "int8-dynamic.quick_stop": ("1.5", "under auto a Conv-heavy graph's dynamic INT8 (ConvInteger) is first timed "
                                       "over a few runs; at this latency ratio to the baseline or above it is not "
                                       "measured further (0 = always stop after the probe, 1000 = always measure)"),
    "int8-static.method": ("auto", "calibration method: auto (searched), minmax, entropy or percentile"),
    "int8-static.per_channel": ("auto", "per-channel weight scales for static INT8: auto (searched), true or false"),
    "int8-static.types": ("auto", "activation/weight types of static INT8: auto (searched), u8s8 or s8s8"),
    "int8-static.format": ("auto", "static INT8 graph format: auto (searched), qdq or qoperator"),
    "int8-static.samples": ("128", "calibration samples used"),
    "train.epochs": ("3", "fine-tuning epochs for prune/cluster/qat/distill"),
    "train.batch_size": ("32", "fine-tuning batch size"),
    "train.learning_rate": ("0.001", "fine-tuning learning rate (Adam)"),
    "prune.sparsity": ("0.8", "target fraction of zero weights in prunable kernels"),
    "prune.frequency": ("0", "pruning step frequency; 0 = about ten updates over the schedule"),
    "cluster.clusters": ("16", "number of weight clusters per kernel"),
    "cluster.init": ("kmeans++", "centroid initialization: kmeans++, linear, density or random"),
    "distill.temperature": ("4", "softmax temperature of the distillation loss"),
    "distill.alpha": ("0.1", "weight of the hard-label loss (1 - alpha goes to the teacher's soft targets)"),
    "distill.width": ("0.5", "width multiplier of the automatically built student (units/filters)"),
    "distill.epochs": ("10", "student training epochs"),
    "int8-weight-only.block_size": ("32", "weights per quantization block along K (a power of two >= 16)"),
    "int4-weight-only.block_size": ("32", "weights per quantization block along K (a power of two >= 16)"),
    "int4-weight-only.symmetric": ("true", "symmetric blocks (a scale only) or asymmetric (scale and zero point)"),
    "int8-weight-only.accuracy_level": ("4", "MatMulNBits compute: 4 = int8 activations (fast on CPU), 1 = float32"),
    "int4-weight-only.accuracy_level": ("4", "MatMulNBits compute: 4 = int8 activations (fast on CPU), 1 = float32"),
    "generate.tokens": ("32", "tokens generated per prompt when a generation model is measured"),
    "generate.prompts": ("4", "held-out prompts (random token ids, fixed seed) a generation model is measured on"),
    "measure.warmup": ("5", "untimed runs before latency is measured"),
    "measure.repeats": ("50", "timed runs per candidate"),
    "measure.batch_size": ("1", "batch size of the latency measurement"),
    "auto.min_gain": ("0.03", "a candidate must beat the baseline by this fraction of the goal metric to win"),
}

_CHOICES = {
    "graph.level": ("basic", "extended", "all"),
    "int8-static.method": ("auto", "minmax", "entropy", "percentile"),
    "int8-static.per_channel": ("auto", "true", "false"),
    "int8-static.types": ("auto", "u8s8", "s8s8"),
    "int8-static.format": ("auto", "qdq", "qoperator"),
    "cluster.init": ("kmeans++", "linear", "density", "random"),
}
_BOOLS = {"int8-dynamic.per_channel", "int4-weight-only.symmetric"}
_INTS = {"int8-weight-only.block_size", "int4-weight-only.block_size", "int8-weight-only.accuracy_level",
         "int4-weight-only.accuracy_level", "generate.tokens", "generate.prompts",
         "int8-static.samples", "train.epochs", "train.batch_size", "prune.frequency", "cluster.clusters",
         "distill.epochs", "measure.warmup", "measure.repeats", "measure.batch_size"}
_RANGES = {
    "prune.sparsity": (0.0, 0.99),
    "distill.alpha": (0.0, 1.0),
    "distill.width": (0.05, 1.0),
    "distill.temperature": (0.1, 100.0),
    "train.learning_rate": (1e-7, 1.0),
    "auto.min_gain": (0.0, 0.9),
    "int8-dynamic.quick_stop": (0.0, 1000.0),
}


@dataclass(frozen=True)
class Plan:
    """What an Optimize request will do."""

    run: list[str]
    skipped: list[tuple[str, str]]  # (technique, why)
    auto: bool


def parse_options(raw: dict[str, str]) -> dict[str, object]:
    """Typed options with defaults filled in; InvalidArgument names an unknown key or bad value."""
    unknown = sorted(set(raw) - set(OPTIONS))
    if unknown:
        raise InvalidArgument(
            f"unknown optimizer option(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(OPTIONS))}"
        )
    out: dict[str, object] = {}
    for key, (default, _) in OPTIONS.items():
        value = str(raw.get(key, default)).strip()
        try:
            if key in _CHOICES:
                v = value.lower()
                if v not in _CHOICES[key]:
                    raise ValueError(f"use one of {', '.join(_CHOICES[key])}")
                out[key] = v
            elif key in _BOOLS:
                v = value.lower()
                if v not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError("use true or false")
                out[key] = v in ("true", "1", "yes")
            elif key in _INTS:
                iv = int(value)
                if iv < (0 if key in ("prune.frequency", "measure.warmup") else 1):
                    raise ValueError("must be a positive integer")
                if key == "cluster.clusters" and iv < 2:
                    raise ValueError("needs at least 2 clusters")
                out[key] = iv
            else:
                fv = float(value)
                lo, hi = _RANGES[key]
                if not lo <= fv <= hi:
                    raise ValueError(f"must be between {lo:g} and {hi:g}")
                out[key] = fv
        except ValueError as e:
            msg = str(e) if not str(e).startswith("invalid literal") else "not a number"
            raise InvalidArgument(f"option {key}={value!r} is invalid: {msg} ({OPTIONS[key][1]})") from None
    return out


def applicable(technique: str, input_format: str) -> str | None:
    """None when ``technique`` applies to a model of ``input_format`` (onnx|keras|generation), else why not."""
    if (technique in LLM_TECHNIQUES) != (input_format == "generation"):
        return (f"{technique} applies to generation models (a causal LM exported with its KV-cache step: model.onnx + "
                f"generation.json); use {', '.join(LLM_TECHNIQUES)} for those" if input_format != "generation" else
                f"{technique} does not apply to a generation model; use {', '.join(LLM_TECHNIQUES)}")
    if technique in ONNX_TECHNIQUES or technique in LLM_TECHNIQUES:
        return None  # a Keras input is converted to ONNX first
    if input_format != "keras":
        return (f"{technique} needs the Keras model (.keras/.h5): TFMOT and the TFLite converter work on "
                "Keras models, not ONNX; optimize the Keras model, or use graph, fp16, int8-dynamic, int8-static")
    return None


def plan(techniques: list[str], input_format: str, *, has_train: bool, has_inputs: bool,
         has_student: bool = False) -> Plan:
    """Validate names and applicability; under ``auto`` inapplicable techniques become skipped notes.

    ``has_train``: a training set (with labels) was given; ``has_inputs``: any dataset with inputs
    (calibration, train or eval) was given.
    """
    names = [t.strip().lower() for t in techniques if t.strip()]
    if not names:
        raise InvalidArgument(f"no technique given; pass 'auto' or some of: {', '.join(ALL_TECHNIQUES)}")
    auto = AUTO in names
    if auto and len(names) > 1:
        raise InvalidArgument("'auto' cannot be combined with named techniques; pass either auto or a list")
    bad = [n for n in names if n not in ALL_TECHNIQUES and n != AUTO]
    if bad:
        raise InvalidArgument(
            f"unknown technique(s) {', '.join(repr(b) for b in bad)}; valid names: {', '.join(ALL_TECHNIQUES)} or auto"
        )
    everything = LLM_TECHNIQUES if input_format == "generation" else [t for t in ALL_TECHNIQUES
                                                                      if t not in LLM_TECHNIQUES]
    wanted = list(everything) if auto else list(dict.fromkeys(names))
    run: list[str] = []
    skipped: list[tuple[str, str]] = []
    for t in wanted:
        why = applicable(t, input_format)
        if why is None and t in NEEDS_TRAIN and not has_train:
            why = f"{t} fine-tunes the model and needs train_data (NPZ with inputs and 'y' labels)"
        if why is None and t == "distill" and not has_inputs:
            why = "distill trains a student on inputs: give train_data, calibration_data or eval_data"
        if why is None and t in NEEDS_CALIBRATION and not has_inputs:
            why = f"{t} needs representative inputs: pass calibration_data (or train_data/eval_data)"
        if why is None:
            run.append(t)
        elif auto:
            skipped.append((t, why))
        else:
            raise InvalidArgument(why)
    return Plan(run, skipped, auto)
