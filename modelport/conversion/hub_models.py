"""Keras Hub (``keras_hub``) models in the converter: what their loading errors mean, and valid samples.

A ``.keras`` file stores each class by module path (``keras_hub.src.models.gpt2.gpt2_backbone``);
Keras imports that module while loading. When the package is missing the file is fine and the
environment is not: ``missing_package_error`` turns Keras' "parent module ... cannot be imported"
into FAILED_PRECONDITION naming the package to install. ``input_ranges`` gives the integer ranges
parity samples are drawn from (token ids below the vocabulary size, segment ids below the number
of segments, a 0/1 padding mask, masked LM positions inside the sequence), since keras_hub's
embeddings are not plain ``Embedding`` layers. ``input_names`` gives an image model's unnamed input
(Keras calls it ``keras_tensor_<n>``, a counter that changes from one load to the next) the stable
name keras_hub's own image models use: ``images``.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

from modelport.errors import FailedPrecondition

# Top-level module -> the distribution that provides it, where the names differ.
_DISTRIBUTIONS = {
    "keras_hub": "keras-hub",
    "keras_nlp": "keras-nlp",
    "keras_cv": "keras-cv",
    "keras_rs": "keras-rs",
    "tensorflow_text": "tensorflow-text",
    "tensorflow_hub": "tensorflow-hub",
    "tensorflow_addons": "tensorflow-addons",
    "tensorflow_probability": "tensorflow-probability",
    "tf_keras": "tf-keras",
    "sklearn": "scikit-learn",
}
# Packages the converter and optimizer extras carry (pyproject.toml), with the pinned version.
_EXTRAS = {"keras-hub": "keras-hub==0.32.0"}

_AUTO_INPUT = re.compile(r"(keras_tensor|input_layer|input)(_\d+)?$")
_PARENT_MODULE = re.compile(r"parent module ([A-Za-z_][\w.]*) cannot be imported")
_NO_MODULE = re.compile(r"No module named '([A-Za-z_][\w.]*)'")


def distribution_for(module: str) -> str:
    """The pip distribution name for an importable module path (its top-level package)."""
    top = module.split(".")[0]
    return _DISTRIBUTIONS.get(top, top.replace("_", "-"))


def missing_package_error(text: str) -> FailedPrecondition | None:
    """FAILED_PRECONDITION for a load error caused by a module the environment cannot import, else None.

    Two cases: the package is not installed at all (install it), or it is installed but lacks the
    module (an older or newer release than the one that saved the model: upgrade or pin it).
    """
    match = _PARENT_MODULE.search(text) or _NO_MODULE.search(text)
    if not match:
        return None
    module = match.group(1)
    top = module.split(".")[0]
    dist = distribution_for(module)
    pin = _EXTRAS.get(dist, dist)
    try:
        installed = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        installed = False
    details = {"reason": "missing_package", "package": dist, "module": module}
    if not installed:
        extra = (" (the converter and optimizer extras carry it: pip install 'modelport[converter,optimizer]')"
                 if dist in _EXTRAS else "")
        return FailedPrecondition(
            f"the model needs the Python package {dist!r} (module {module}), which is not installed in the "
            f"converter's environment; the file itself is fine. Install it where the converter runs: "
            f"pip install '{pin}'{extra}, then retry",
            details=details,
        )
    version = _installed_version(dist)
    return FailedPrecondition(
        f"the model needs {module}, which the installed {dist}{' ' + version if version else ''} does not "
        f"provide (the model was saved with another release of {dist}); install the release it was saved "
        f"with (pip install '{dist}==<version>') where the converter runs, then retry",
        details={**details, "installed_version": version},
    )


def _installed_version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def is_keras_hub_model(model: Any) -> bool:
    return any(c.__module__.startswith("keras_hub.") for c in type(model).__mro__)


def _backbone(model: Any) -> Any:
    return getattr(model, "backbone", None) or model


def input_ranges(model: Any) -> dict[str, tuple[int, int]]:
    """Integer input ranges ``[low, high)`` for a keras_hub model's named inputs ({} for other models)."""
    if not is_keras_hub_model(model):
        return {}
    backbone = _backbone(model)
    ranges: dict[str, tuple[int, int]] = {"padding_mask": (0, 2)}
    vocabulary = getattr(backbone, "vocabulary_size", None)
    if vocabulary:
        ranges["token_ids"] = (0, int(vocabulary))
    segments = getattr(backbone, "num_segments", None) or getattr(backbone, "type_vocabulary_size", None)
    ranges["segment_ids"] = (0, int(segments) if segments else 1)
    # A masked LM's mask_positions index the sequence: below its length (generated samples make a
    # dynamic sequence DEFAULT_DYNAMIC_DIM long).
    ranges["mask_positions"] = (0, _sequence_length(model))
    return ranges


def named_input_ranges(shapes: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    """Ranges for inputs named like keras_hub's, in a graph without its Keras model (an ONNX export):
    ``padding_mask`` 0/1 and ``mask_positions`` inside the sequence (``token_ids``' length, or the
    DEFAULT_DYNAMIC_DIM a dynamic one is generated with). {} unless the inputs include ``token_ids``."""
    from modelport.datasets import DEFAULT_DYNAMIC_DIM

    if "token_ids" not in shapes:
        return {}
    dims = list(shapes["token_ids"])
    seq = dims[1] if len(dims) > 1 and dims[1] and dims[1] > 0 else DEFAULT_DYNAMIC_DIM
    ranges = {"padding_mask": (0, 2), "mask_positions": (0, int(seq))}
    return {k: v for k, v in ranges.items() if k in shapes}


def _sequence_length(model: Any) -> int:
    from modelport.datasets import DEFAULT_DYNAMIC_DIM

    try:
        shape = next(t.shape for t in model.inputs if str(t.name).split(":")[0] == "token_ids")
        return int(shape[1]) if len(shape) > 1 and shape[1] is not None else DEFAULT_DYNAMIC_DIM
    except (AttributeError, ValueError, StopIteration, TypeError):
        return DEFAULT_DYNAMIC_DIM


def input_names(model: Any, names: list[str], shapes: list[tuple]) -> list[str]:
    """A keras_hub image model's one unnamed image input (rank 4) is ``images``; other names are kept."""
    if len(names) != 1 or len(shapes[0]) != 4 or not _AUTO_INPUT.match(names[0]) or not is_keras_hub_model(model):
        return names
    return ["images"]


def output_names(model: Any, names: list[str]) -> list[str]:
    """A causal or masked LM's single output is its logits (Keras names it after the embedding layer); a
    text backbone's single output (GPT-2, Llama, ...: the last hidden states, named after the final norm
    layer) is ``sequence_output``, the name keras_hub's BERT-style backbones give the same tensor."""
    if len(names) != 1 or not is_keras_hub_model(model):
        return names
    task = {c.__name__ for c in type(model).__mro__}
    if task & {"CausalLM", "MaskedLM", "Seq2SeqLM"}:
        return ["logits"]
    if "Backbone" in task and "token_ids" in _input_names(model):
        return ["sequence_output"]
    return names


# Outputs of keras_hub text backbones: features (hidden states), not class scores. The optimizer judges a
# candidate on them by how closely each feature vector keeps its direction (optimizer_svc.measure), since the
# "top-1 class" of a hidden-state vector means nothing.
FEATURE_OUTPUTS = frozenset({"sequence_output", "pooled_output"})


def feature_outputs(names: list[str]) -> list[bool]:
    """Which of a graph's outputs (by name, in order) are keras_hub backbone features."""
    return [n in FEATURE_OUTPUTS for n in names]


def _input_names(model: Any) -> set[str]:
    try:
        return {str(t.name).split(":")[0] for t in model.inputs}
    except (AttributeError, TypeError, ValueError):
        return set()
