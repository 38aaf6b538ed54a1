"""Carry a user's Keras 3 model over to tf-keras, which TFMOT needs (docs/FACTS.md).

tf-keras cannot load a Keras 3 ``.keras``/``.h5`` file (class modules, ``batch_shape``, DTypePolicy
dicts and the new ``inbound_nodes`` format differ). The bridge therefore runs in two processes:

1. ``export_portable`` in a Keras 3 process (``python -m optimizer_svc.keras_bridge SRC OUT``):
   loads the model with Keras 3 itself, writes ``config.json`` translated to the tf-keras
   (Keras 2) config format and ``weights.npz`` holding every layer's weights keyed by layer name.
2. ``load_tf_keras`` in the tf-keras process: rebuilds the model from that config and sets each
   layer's weights by name, so no weight-file layout is guessed.

A model that uses layers tf-keras does not have fails with InvalidArgument naming the layer.
This module never imports grpc.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from modelport.errors import InvalidArgument

CONFIG = "config.json"
WEIGHTS = "weights.npz"
BASELINE_ONNX = "baseline.onnx"
KERAS3_CLASS = "keras3_class"  # config.json key: the Keras 3 class of the model (it may be a Functional subclass)


# ---- config translation (pure Python, unit-tested) -------------------------------------------
def _plain(obj: Any) -> Any:
    """Keras 3 serialized objects -> Keras 2 style ``{"class_name", "config"}`` (modules dropped)."""
    if isinstance(obj, dict):
        if obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and "config" in obj:
            return obj["config"].get("name", "float32")
        out = {k: _plain(v) for k, v in obj.items()
               if k not in ("module", "registered_name", "build_config", "compile_config", "shared_object_id")}
        return out
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _history(t: Any) -> list | None:
    if isinstance(t, dict) and t.get("class_name") == "__keras_tensor__":
        name, node, idx = t["config"]["keras_history"]
        return [name, node, idx, {}]
    return None


# Names of the extra positional tensor arguments of layers that take several (tf-keras wants kwargs).
_POSITIONAL = {"MultiHeadAttention": ("query", "value", "key"), "Attention": ("inputs",),
               "AdditiveAttention": ("inputs",)}


def _node(node: dict, cls: str = "") -> list:
    """One Keras 3 inbound node ``{"args": [...], "kwargs": {...}}`` -> Keras 2 ``[[name, n, i, kw], ...]``.

    Tensors passed as extra positional arguments (``MultiHeadAttention(q, v)``) or as keyword
    arguments become tf-keras's ``{"value": [name, node, index]}`` keyword entries on the first tensor.
    """
    args = node.get("args", [])
    kwargs = {}
    for k, v in (node.get("kwargs") or {}).items():
        h = _history(v)
        kwargs[k] = h[:3] if h else _plain(v)
    tensors: list = []
    extra: list = []
    for a in args:
        if isinstance(a, list):
            tensors.extend(h for h in (_history(x) for x in a) if h)
        else:
            h = _history(a)
            if h:
                (extra if tensors and cls in _POSITIONAL else tensors).append(h)
    names = _POSITIONAL.get(cls, ())
    for i, h in enumerate(extra, start=1):
        if i < len(names):
            kwargs[names[i]] = h[:3]
    if kwargs and tensors:
        tensors[0][3] = kwargs
    return tensors


def _io_list(v: list) -> list:
    return [v] if v and isinstance(v[0], str) else v


def _layer_config(layer: dict) -> dict:
    cls = layer["class_name"]
    cfg = _plain(layer["config"])
    if cls == "InputLayer":
        if "batch_shape" in cfg:
            cfg["batch_input_shape"] = cfg.pop("batch_shape")
        cfg.pop("optional", None)
    if cls == "MultiHeadAttention":  # tf-keras pops these in from_config; None = build on first call
        for key in ("query_shape", "key_shape", "value_shape"):
            cfg.setdefault(key, None)
    if cls in ("Sequential", "Functional", "Model"):
        return _model_config(layer)
    return {"class_name": cls, "config": cfg}


def _model_config(model: dict) -> dict:
    cls = model["class_name"]
    cfg = model["config"]
    layers = []
    for layer in cfg.get("layers", []):
        out = _layer_config(layer)
        if cls != "Sequential":
            out["name"] = layer.get("name", out["config"].get("name"))
            out["inbound_nodes"] = [_node(n, layer["class_name"]) for n in layer.get("inbound_nodes", [])]
        layers.append(out)
    new_cfg = {k: _plain(v) for k, v in cfg.items() if k not in ("layers", "build_input_shape")}
    new_cfg["layers"] = layers
    if cls != "Sequential":
        new_cfg["input_layers"] = _io_list(cfg.get("input_layers", []))
        new_cfg["output_layers"] = _io_list(cfg.get("output_layers", []))
        cls = "Functional"
    return {"class_name": cls, "config": new_cfg}


def translate_config(keras3_config: dict) -> dict:
    """A Keras 3 model config (``model.get_config()`` wrapped with class_name) -> tf-keras config."""
    return _model_config(keras3_config)


# ---- step 1: Keras 3 process ----------------------------------------------------------------
def export_portable(src: str, out_dir: str, trust_remote_code: bool = False) -> None:
    """Load ``src`` with Keras 3; write the tf-keras config, per-layer weights and ``baseline.onnx``.

    The ONNX file is the converter's conversion of the Keras 3 model itself (shared
    ``keras_model_to_onnx``): the optimizer's baseline, usable even when tf-keras cannot rebuild
    the model (then only the ONNX techniques run).
    """
    import keras
    import numpy as np

    from modelport.conversion.onnx_export import keras_model_to_onnx

    model = keras.models.load_model(src, compile=False, safe_mode=not trust_remote_code)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(json.dumps(portable_config(model)))
    arrays = {}
    for layer in _walk(model):
        for i, w in enumerate(layer.get_weights()):
            arrays[f"{layer.name}/{i}"] = np.asarray(w)
    np.savez(out / WEIGHTS, **arrays)
    keras_model_to_onnx(model, out / BASELINE_ONNX)


def portable_config(model) -> dict:
    """A Keras 3 model's tf-keras config, with its Keras 3 class (named when tf-keras cannot rebuild it)."""
    full = {"class_name": model.__class__.__name__, "config": model.get_config()}
    if full["class_name"] not in ("Sequential", "Functional"):
        full["class_name"] = "Functional"
    return {**translate_config(full), KERAS3_CLASS: model.__class__.__name__}


def _walk(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers") and layer.layers:
            yield from _walk(layer)


def _die_with_parent() -> None:
    """Linux: the bridge process gets SIGKILL when the worker dies (job cancelled or timed out)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_export(src: str, out_dir: str, timeout: float = 600, trust_remote_code: bool = False) -> None:
    """Run ``export_portable`` in a fresh Keras 3 interpreter (this process may be tf-keras)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = [sys.executable, "-m", "optimizer_svc.keras_bridge", src, out_dir] + (["--trust"] if trust_remote_code else [])
    proc = subprocess.run(args, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=_die_with_parent)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise InvalidArgument(
            f"could not load the Keras model with Keras 3: {tail[0][:400]}; "
            "save it with model.save('model.keras') from Keras 3 or tf-keras"
        )


# ---- step 2: tf-keras process ---------------------------------------------------------------
def not_a_layer_graph(cfg: dict) -> str | None:
    """Why a translated config cannot be rebuilt as a graph of layers, else None.

    A Functional subclass that serializes its constructor arguments instead of its layers (every keras_hub
    model: ``ResNetImageClassifier(backbone=..., num_classes=...)``) translates to a Functional with no layers;
    tf-keras would rebuild that as an empty model and TFLite would fail on it with "Could not translate MLIR
    to FlatBuffer" (and TFMOT would fine-tune nothing)."""
    if cfg.get("class_name") == "Sequential" or cfg.get("config", {}).get("layers"):
        return None
    cls = cfg.get(KERAS3_CLASS) or cfg.get("class_name") or "model"
    return (f"tf-keras (needed by TFMOT and the TFLite techniques) cannot rebuild this {cls}: its Keras 3 config "
            "holds its constructor arguments, not a graph of layers (a keras_hub model, or a Functional subclass with "
            "its own get_config); only graph, fp16, int8-dynamic and int8-static apply to it")


def load_tf_keras(portable_dir: str):
    """Rebuild the model in tf-keras from ``export_portable``'s output (needs TF_USE_LEGACY_KERAS=1)."""
    d = Path(portable_dir)
    cfg = json.loads((d / CONFIG).read_text())
    problem = not_a_layer_graph(cfg)
    if problem:
        raise InvalidArgument(problem)
    cfg.pop(KERAS3_CLASS, None)

    import numpy as np
    import tf_keras

    missing = sorted({c for c in _class_names(cfg) if not hasattr(tf_keras.layers, c)
                      and c not in ("Functional", "Sequential", "Model")})
    if missing:
        raise InvalidArgument(
            f"tf-keras (needed by TFMOT and the TFLite techniques) has no layer {', '.join(missing)}, so it cannot "
            "rebuild this model; only graph, fp16, int8-dynamic and int8-static apply to it"
        )
    model = None
    for _ in range(20):  # Keras 3 adds keyword arguments tf-keras lacks; drop them one by one
        try:
            model = tf_keras.models.model_from_json(json.dumps(cfg))
            break
        except (TypeError, ValueError, KeyError) as e:
            key = _unknown_kwarg(str(e))
            if key is None:
                raise InvalidArgument(
                    f"tf-keras (needed by TFMOT for prune/cluster/qat/distill) cannot rebuild this model: "
                    f"{str(e)[:300]}; use built-in Keras layers, or optimize the ONNX conversion with "
                    "graph/fp16/int8 techniques"
                ) from None
            cfg = _drop_key(cfg, key)
    if model is None:
        raise InvalidArgument("tf-keras cannot rebuild this model (too many Keras 3-only arguments)")
    with np.load(d / WEIGHTS) as z:
        weights = {k: z[k] for k in z.files}
    for layer in _walk(model):
        n = len(layer.get_weights())
        if n:
            layer.set_weights([weights[f"{layer.name}/{i}"] for i in range(n)])
    return model


_KWARG_RES = (
    re.compile(r"unexpected keyword argument '(\w+)'"),
    re.compile(r"Unrecognized keyword arguments: \['(\w+)'"),
    re.compile(r"Keyword argument not understood:'?,?\s*'(\w+)'"),
)


def _unknown_kwarg(msg: str) -> str | None:
    for rx in _KWARG_RES:
        m = rx.search(msg)
        if m:
            return m.group(1)
    return None


def _class_names(cfg: dict):
    for layer in cfg.get("config", {}).get("layers", []):
        yield layer.get("class_name", "")
        if isinstance(layer.get("config"), dict) and "layers" in layer["config"]:
            yield from _class_names(layer)


def _drop_key(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_key(v, key) for k, v in obj.items() if k != key}
    if isinstance(obj, list):
        return [_drop_key(v, key) for v in obj]
    return obj


def load_any_tf_keras(src: str, work_dir: str, trust_remote_code: bool = False):
    """A tf-keras model from a Keras 3 or tf-keras ``.keras``/``.h5`` file."""
    import tf_keras

    from modelport.model_code import check_model_code

    check_model_code(src, "keras", trust_remote_code)

    try:
        return tf_keras.models.load_model(src, compile=False)
    except Exception:  # noqa: BLE001 - Keras 3 files are the common case; bridge them
        pass
    run_export(src, work_dir, trust_remote_code=trust_remote_code)
    return load_tf_keras(work_dir)


if __name__ == "__main__":
    export_portable(sys.argv[1], sys.argv[2], trust_remote_code="--trust" in sys.argv[3:])
