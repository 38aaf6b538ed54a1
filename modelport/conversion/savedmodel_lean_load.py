"""Load a large SavedModel holding one copy of the weights its serving signature reads, and nothing else.

``tf.saved_model.load`` restores every variable the SavedModel's object graph holds. A Keras 3
``model.export(dir)`` SavedModel holds each weight twice: once as the Keras variable the model tracks (which
the signature reads) and once more in the export archive's ``_all_variables`` list (Keras'
``saved_model_export_archive``), each with its own value in the checkpoint: the variables data is 2x the
model's weights on disk, and a plain load holds both copies in memory.

Here the SavedModel is loaded with ``experimental_skip_checkpoint`` (its variables are created
uninitialized: no memory for their values), and only the variables the chosen signature captures are
restored, one at a time, each read from the checkpoint by its key (``RestoreV2``) and assigned. The keys
come from the checkpoint's own object graph, walked from the root in step with the loaded objects (the way
TensorFlow's restore matches them). Anything else the checkpoint restores (a lookup table's contents, other
saveables) makes the loader refuse (``LeanLoadUnsupported``); the caller then loads the plain way.
"""

from __future__ import annotations

import os
from typing import Any

_VARIABLE_VALUE = "VARIABLE_VALUE"


def default_signature_key(keys) -> str:
    """The signature a SavedModel is converted through: ``serving_default``, else the first by name."""
    return "serving_default" if "serving_default" in keys else sorted(keys)[0]


def variable_bytes(v) -> int:
    """Bytes of a TensorFlow variable's value (its shape must be fully defined)."""
    import numpy as np

    return int(np.prod(v.shape.as_list(), dtype=np.int64)) * v.dtype.size


class LeanLoadUnsupported(Exception):
    """The SavedModel needs TensorFlow's own restore (the caller loads it with tf.saved_model.load)."""


def _checkpoint_prefix(root: str) -> str:
    return os.path.join(root, "variables", "variables")


def _object_graph(prefix: str):
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    reader = tf.train.load_checkpoint(prefix)
    return trackable_object_graph_pb2.TrackableObjectGraph.FromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))


def _child(obj: Any, name: str) -> Any:
    lookup = getattr(obj, "_lookup_dependency", None)
    child = lookup(name) if callable(lookup) else None
    if child is None:
        children = getattr(obj, "_trackable_children", None)
        if callable(children):
            child = children().get(name)
    return child


def variable_keys(root_obj: Any, graph) -> dict[int, str]:
    """id(variable) -> its checkpoint key, for every variable reachable from ``root_obj`` along the checkpoint's
    object graph ``graph``. Raises LeanLoadUnsupported if a reachable object saves anything but a variable value."""
    keys: dict[int, str] = {}
    seen: set[int] = set()
    stack = [(0, root_obj)]
    while stack:
        node_id, obj = stack.pop()
        if node_id in seen or obj is None:
            continue
        seen.add(node_id)
        node = graph.nodes[node_id]
        for attr in node.attributes:
            if attr.name != _VARIABLE_VALUE or not hasattr(obj, "assign"):
                raise LeanLoadUnsupported(f"the checkpoint restores {attr.name!r} of a {type(obj).__name__}")
            keys[id(obj)] = attr.checkpoint_key
        for ref in node.children:
            stack.append((ref.node_id, _child(obj, ref.local_name)))
    return keys


def restore_signature_variables(root: str, loaded: Any, variables: list) -> int:
    """Assign each of ``variables`` (the signature's captures, uninitialized) its value from the checkpoint of
    the SavedModel at ``root``, one at a time; returns the bytes restored."""
    import tensorflow as tf

    prefix = _checkpoint_prefix(root)
    keys = variable_keys(loaded, _object_graph(prefix))
    missing = [v.name for v in variables if id(v) not in keys]
    if missing:
        raise LeanLoadUnsupported(f"{len(missing)} variable(s) the signature reads are not in the checkpoint's "
                                  f"object graph: {missing[:3]}")
    total = 0
    for v in variables:
        value = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[keys[id(v)]], shape_and_slices=[""],
                                     dtypes=[v.dtype])[0]
        if value.shape != v.shape:
            raise LeanLoadUnsupported(f"the checkpoint holds shape {value.shape} for {v.name}, the variable has "
                                      f"{v.shape}")
        v.assign(value)
        total += variable_bytes(v)
        del value
    return total


def load_savedmodel_lean(root: str, signature_key: str | None = None) -> tuple[Any, Any, str]:
    """(loaded object, signature, signature key) with only the signature's variables restored.

    ``signature_key`` None: ``default_signature_key``.
    Raises LeanLoadUnsupported when the model needs TensorFlow's full restore; other errors are the load's own.
    """
    import tensorflow as tf

    options = tf.saved_model.LoadOptions(experimental_skip_checkpoint=True)
    loaded = tf.saved_model.load(root, options=options)
    sigs = dict(loaded.signatures)
    if not sigs:
        raise LeanLoadUnsupported("no signature")
    key = signature_key or default_signature_key(sigs)
    sig = sigs[key]
    handles = {id(v.handle) for v in sig.variables}
    other = [t for t in sig.captured_inputs if t.dtype == tf.resource and id(t) not in handles]
    if other:
        raise LeanLoadUnsupported(f"the signature captures {len(other)} resource(s) that are not variables")
    restore_signature_variables(root, loaded, list(sig.variables))
    return loaded, sig, key


# saved_model.pb files past this size (a graph with its weights as constants) are not parsed for the estimate.
_MAX_PB_BYTES = 64 << 20


def signature_weight_bytes(root: str | os.PathLike, signature_key: str | None = None) -> int:
    """Bytes of the variables the signature (``default_signature_key``) captures, read from
    ``saved_model.pb``'s object graph without loading anything; 0 when that cannot be told. A Keras 3
    ``model.export`` SavedModel's variables data holds every weight twice; this counts what the lean load holds."""
    from pathlib import Path

    import numpy as np
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import dtypes

    pb = Path(root) / "saved_model.pb"
    try:
        if pb.stat().st_size > _MAX_PB_BYTES:
            return 0
        graph = saved_model_pb2.SavedModel.FromString(pb.read_bytes()).meta_graphs[0].object_graph_def
        sig_node = next(graph.nodes[c.node_id] for c in graph.nodes[0].children if c.local_name == "signatures")
        sigs = {c.local_name: graph.nodes[c.node_id] for c in sig_node.children}
        key = signature_key or default_signature_key(sigs)
        node = sigs[key]
        kind = node.WhichOneof("kind")
        names = [node.bare_concrete_function.concrete_function_name] if kind == "bare_concrete_function" \
            else list(node.function.concrete_functions) if kind == "function" else []
        ids = {i for name in names for i in graph.concrete_functions[name].bound_inputs}
        total = 0
        for i in ids:
            n = graph.nodes[i]
            if n.WhichOneof("kind") != "variable":
                continue
            dims = [d.size for d in n.variable.shape.dim]
            if n.variable.shape.unknown_rank or any(d < 0 for d in dims):
                return 0
            total += int(np.prod(dims, dtype=np.int64)) * dtypes.as_dtype(n.variable.dtype).size
        return total
    except Exception:  # noqa: BLE001 - no signature map, a malformed protobuf: the caller keeps its own figure
        return 0
