"""Keras (Keras 3 or tf-keras) in-memory model -> ONNX through ``tf.function`` + tf2onnx.

``tf2onnx.convert.from_keras`` fails on Keras 3 Sequential models and on TFMOT-stripped
tf-keras models, so every model goes through ``from_function`` with an explicit input
signature built from the model's own inputs. Input names and output names are kept, the batch
dimension stays dynamic unless a fixed size is requested. Works in processes with and without
``TF_USE_LEGACY_KERAS=1``: only the model object's own attributes are used, never ``import keras``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.conversion import hub_models
from modelport.conversion.onnx_attention import fuse_attention
from modelport.conversion.onnx_fusions import fuse_layer_norms, static_reshapes
from modelport.errors import InvalidArgument

_NAME_OK = re.compile(r"[^A-Za-z0-9_.\-/]")


@dataclass(frozen=True)
class KerasTensorInfo:
    """Name, dtype (numpy name, e.g. "float32") and shape (None = dynamic) of one model tensor."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


def _clean_name(name: str, fallback: str) -> str:
    name = _NAME_OK.sub("_", str(name or "")).strip("_") or fallback
    if not re.match(r"[A-Za-z0-9.]", name[0]):
        name = "t" + name
    return name


def _dtype_name(dtype: Any) -> str:
    import tensorflow as tf

    return tf.as_dtype(dtype or "float32").name


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            n = f"{n}_{seen[n]}"
        else:
            seen[n] = 0
        out.append(n)
    return out


def _is_tf_keras(model: Any) -> bool:
    prefixes = ("tf_keras", "keras.src.engine", "tensorflow.python.keras")
    return any(c.__module__.startswith(prefixes) for c in type(model).__mro__)


def keras_input_infos(model: Any) -> list[KerasTensorInfo]:
    """The model's inputs in call order (functional, sequential, or a built subclassed model)."""
    inputs = None
    try:
        inputs = list(model.inputs) if getattr(model, "inputs", None) else None
    except (AttributeError, ValueError):
        inputs = None
    if inputs:
        names = None
        if _is_tf_keras(model) and getattr(model, "input_names", None):
            names = list(model.input_names)
        infos = []
        for i, t in enumerate(inputs):
            raw = names[i] if names else getattr(t, "name", "") or f"input_{i}"
            raw = str(raw).split(":")[0]
            shape = tuple(None if d is None else int(d) for d in t.shape)
            infos.append(KerasTensorInfo(_clean_name(raw, f"input_{i}"), _dtype_name(t.dtype), shape))
        # a keras_hub image model's unnamed input is "images"
        names_u = _unique(hub_models.input_names(model, [i.name for i in infos], [i.shape for i in infos]))
        return [KerasTensorInfo(n, i.dtype, i.shape) for n, i in zip(names_u, infos, strict=False)]
    # tf-keras subclassed model: the save spec records what it was called with.
    save_spec = getattr(model, "save_spec", None)
    if callable(save_spec) and _is_tf_keras(model):
        spec = save_spec(dynamic_batch=True)
        if spec:
            import tensorflow as tf

            flat = [s for s in tf.nest.flatten(spec[0]) if isinstance(s, tf.TensorSpec)]
            return [KerasTensorInfo(_clean_name(s.name, f"input_{i}"), s.dtype.name,
                                    tuple(s.shape.as_list())) for i, s in enumerate(flat)]
    # Keras 3 subclassed model: the shapes of the first call, batch made dynamic.
    shapes = getattr(model, "_build_shapes_dict", None)
    if shapes:
        dtype = _dtype_name(getattr(model, "input_dtype", None) or "float32")
        infos = []
        for i, (key, shape) in enumerate(shapes.items()):
            name = "input" if len(shapes) == 1 else key.removesuffix("_shape")
            dims = (None, *[None if d is None else int(d) for d in list(shape)[1:]])
            infos.append(KerasTensorInfo(_clean_name(name, f"input_{i}"), dtype, dims))
        return infos
    raise InvalidArgument(
        f"cannot tell the inputs of the {type(model).__name__} model: it was never built or called; "
        "call it once on sample data (or give it keras.Input layers) before converting"
    )


def keras_output_names(model: Any, count: int) -> list[str]:
    """Names of the model's outputs: output layer names where known, else ``output_<i>``."""
    names: list[str] = []
    if _is_tf_keras(model) and getattr(model, "output_names", None):
        names = [str(n) for n in model.output_names]
    else:
        try:
            outs = list(model.outputs) if getattr(model, "outputs", None) else []
        except (AttributeError, ValueError):
            outs = []
        for t in outs:
            hist = getattr(t, "_keras_history", None)
            op = getattr(hist, "operation", None) if hist is not None else None
            names.append(getattr(op, "name", "") or "")
        if outs and getattr(model, "output_names", None):
            names = [str(n) for n in model.output_names]
    if len(names) != count or not all(names):
        names = [f"output_{i}" for i in range(count)]
    names = hub_models.output_names(model, names)  # a keras_hub LM's output is "logits"
    return _unique([_clean_name(n, f"output_{i}") for i, n in enumerate(names)])


def _call_structure(model: Any, args: list, infos: list[KerasTensorInfo]):
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        # ``args`` follow ``model.inputs`` (Keras flattens a dict by sorted key), not the dict's own
        # order: match each key to its input tensor, so "token_ids" never feeds "padding_mask".
        try:
            position = {id(t): i for i, t in enumerate(model.inputs)}
        except (AttributeError, ValueError):
            position = {}
        if position and all(id(t) in position for t in struct.values()):
            return {key: args[position[id(t)]] for key, t in struct.items()}
        return dict(zip(sorted(struct), args, strict=False))
    if isinstance(struct, (list, tuple)) and len(struct) == len(args):
        return list(args)  # a functional model built with a list of inputs wants a list, even of one
    if len(args) == 1:
        return args[0]
    return list(args)


def input_signature(model: Any, fixed_batch_size: int = 0) -> tuple[list[KerasTensorInfo], list]:
    """The model's inputs and the ``tf.TensorSpec`` signature of a trace (batch dynamic unless fixed)."""
    import tensorflow as tf

    if fixed_batch_size < 0:
        raise InvalidArgument(f"fixed_batch_size must be >= 0 (0 keeps the batch dynamic), got {fixed_batch_size}")
    infos = keras_input_infos(model)
    signature = []
    for info in infos:
        shape = list(info.shape)
        if shape:
            shape[0] = fixed_batch_size or None
        signature.append(tf.TensorSpec(shape, tf.as_dtype(info.dtype), name=info.name))
    return infos, signature


def keras_tf_function(model: Any, fixed_batch_size: int = 0):
    """A ``tf.function`` calling the model in inference mode, returning ``{output_name: tensor}``.

    Returns ``(function, input_signature, output_names)``.
    """
    import tensorflow as tf

    infos, signature = input_signature(model, fixed_batch_size)

    # Probe once symbolically to learn how many outputs there are.
    probe = tf.function(lambda *a: model(_call_structure(model, list(a), infos), training=False))
    structured = probe.get_concrete_function(*signature).structured_outputs
    if isinstance(structured, dict):
        out_names = [_clean_name(k, f"output_{i}") for i, k in enumerate(structured.keys())]
        flat_count = len(structured)
    else:
        flat_count = len(tf.nest.flatten(structured))
        out_names = keras_output_names(model, flat_count)

    def call(*args):
        y = model(_call_structure(model, list(args), infos), training=False)
        flat = list(y.values()) if isinstance(y, dict) else tf.nest.flatten(y)
        return {name: tf.identity(t, name=name) for name, t in zip(out_names, flat, strict=False)}

    return tf.function(call, input_signature=signature), signature, out_names


def keras_model_to_onnx(model: Any, out_path: str | Path, opset: int = 17, fixed_batch_size: int = 0) -> None:
    """Convert an in-memory Keras 3 or tf-keras model to an ONNX file at ``out_path``.

    Sequential, Functional and (built) subclassed models with one or several inputs/outputs.
    Input names are the model's input names, output names its output layer names; the batch
    dimension stays dynamic unless ``fixed_batch_size`` > 0. Raises InvalidArgument for an
    opset outside 13..18.
    """
    if not 13 <= int(opset) <= 18:
        raise InvalidArgument(f"ONNX opset {opset} is not supported: choose 13..18 (default 17)")

    fn, signature, _ = keras_tf_function(model, fixed_batch_size)
    function_to_onnx(fn, signature, out_path, opset)


def function_to_onnx(fn: Any, signature: list, out_path: str | Path, opset: int = 17) -> None:
    """Convert a ``tf.function`` (with ``signature``) returning a dict of named outputs to ONNX."""
    import tensorflow as tf
    import tf2onnx

    with tf.device("/cpu:0"):
        model_proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=int(opset),
                                                       custom_op_handlers=CUSTOM_OP_HANDLERS)
    name_batch_dims(model_proto)
    fuse_layer_norms(model_proto)
    static_reshapes(model_proto)
    fuse_attention(model_proto)
    save_onnx(model_proto, Path(out_path))


def _erfc_handler(ctx, node, name, args):
    """tf2onnx has no Erfc (Keras 3 exact GELU uses it): rewrite as ``1 - Erf(x)``."""
    import numpy as np
    from tf2onnx import utils

    node.type = "Erf"
    node.domain = ""
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype=dtype))
    neg = ctx.insert_new_node_on_output("Neg", node.output[0], name=utils.make_name(f"{name}_neg"))
    ctx.insert_new_node_on_output("Add", neg.output[0], inputs=[neg.output[0], one.output[0]],
                                  name=utils.make_name(f"{name}_add"))


# Extra TF op handlers passed to every tf2onnx conversion (old-style {op: (func, args)} API).
CUSTOM_OP_HANDLERS = {"Erfc": (_erfc_handler, [])}


def name_batch_dims(model_proto, name: str = "batch") -> None:
    """Give the leading dynamic dimension of every graph input/output one readable name."""
    graph = model_proto.graph
    for vi in list(graph.input) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = name


def save_onnx(model_proto, out_path: Path) -> None:
    """Write an ONNX ModelProto atomically (temp file + rename)."""
    import os

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(model_proto.SerializeToString())
    os.replace(tmp, out_path)
