"""Name the Keras layer and the op behind a failed TensorFlow -> ONNX conversion (issue 18).

tf2onnx and onnxruntime report failures with graph names ("functional_1/odd_layer_1/Lgamma",
"No Op registered for StatefulPartitionedCall"), which say little to the model's author. The ONNX
nodes tf2onnx writes keep TensorFlow's name scopes, and Keras 3 opens one scope per layer call (the
layer's name, with a ``_N`` suffix when the scope name repeats), so a node's name leads back to its
layer. The errors built here name the layer (and its class), the op, and what to try next.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# onnx's own schemas know these domains; com.microsoft ops come from onnxruntime's contrib set.
_CHECKED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
_KNOWN_FOREIGN_DOMAINS = ("com.microsoft",)
_SUFFIX = re.compile(r"_\d+$")


def layer_index(src: Any) -> dict[str, str]:
    """``{layer name: layer class}`` of a loaded Keras model (``src.model``) or a Keras model; empty for
    anything else (a SavedModel signature, an ONNX file)."""
    model = getattr(src, "model", src)
    flatten = getattr(model, "_flatten_layers", None)
    if not callable(flatten):
        return {}
    try:
        layers = list(flatten(include_self=False, recursive=True))
    except Exception:  # noqa: BLE001 - an unusual model: no layer names, node names only
        return {}
    return {str(layer.name): type(layer).__name__ for layer in layers if getattr(layer, "name", "")}


def layer_of(node_name: str, layers: dict[str, str]) -> str:
    """The deepest Keras layer whose scope the graph node ``node_name`` sits in ("" when none matches).

    A scope segment matches a layer by its name, or by its name once Keras' ``_N`` scope suffix is
    dropped (``dense_1_1`` is layer ``dense_1``'s scope).
    """
    found = ""
    for segment in node_name.split("/"):
        if segment in layers:
            found = segment
            continue
        stripped = _SUFFIX.sub("", segment)
        if stripped != segment and stripped in layers:
            found = stripped
    return found


def where(node_name: str, op_type: str, layers: dict[str, str]) -> str:
    """``op Lgamma in layer 'odd_layer' (OddLayer)``, or the node's scope when no layer matches."""
    layer = layer_of(node_name, layers)
    if layer:
        return f"op {op_type} in layer '{layer}' ({layers[layer]})"
    scope = node_name.rsplit("/", 1)[0] if "/" in node_name else node_name
    return f"op {op_type} (graph scope '{scope}')"


def unsupported_nodes(proto) -> list:
    """Nodes that no ONNX opset defines: TensorFlow ops tf2onnx left in the graph (it continues on error
    and writes them with the default domain), and ops of unknown domains."""
    from onnx import defs

    out = []
    for node in _all_nodes(proto.graph):
        if node.domain in _KNOWN_FOREIGN_DOMAINS:
            continue
        if node.domain not in _CHECKED_DOMAINS or not defs.has(node.op_type, node.domain or ""):
            out.append(node)
    return out


def _all_nodes(graph) -> Iterable:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def advice(opset: int) -> str:
    """What to try when an op does not convert or does not run."""
    others = "18" if int(opset) < 18 else "13"
    return (f"try another opset (--opset {others}; 13..18), or the SavedModel route (convert the model to "
            "savedmodel first, then that SavedModel to onnx), or replace the layer with standard Keras layers; "
            "a model with ops ONNX lacks can still go to tflite")


def unsupported_message(nodes: list, layers: dict[str, str], opset: int) -> str:
    """The FailedPrecondition text for ops tf2onnx could not convert."""
    seen: list[str] = []
    for node in nodes:
        text = where(node.name, node.op_type, layers)
        if text not in seen:
            seen.append(text)
    shown = "; ".join(seen[:5]) + (f"; and {len(seen) - 5} more" if len(seen) > 5 else "")
    return (f"tf2onnx could not convert {len(seen)} TensorFlow op(s) to ONNX at opset {opset}: {shown}. "
            f"ONNX has no equivalent for them in this converter; {advice(opset)}")


_NAMED = re.compile(r"(?:Name:\s*'|node\s+\(?\"?|In Node,\s*\(\")([^'\"),\s]+)")


def node_in_error(text: str, proto) -> Any:
    """The graph node an onnxruntime/onnx error names (by node name, or by a tensor it produces), or None."""
    if proto is None:
        return None
    by_name = {n.name: n for n in proto.graph.node if n.name}
    by_output = {o: n for n in proto.graph.node for o in n.output}
    for m in _NAMED.finditer(text):
        key = m.group(1)
        node = by_name.get(key) or by_output.get(key)
        if node is not None:
            return node
    # Fall back to any node or tensor name quoted in the text, the longest first (the most specific).
    for name in sorted((n for n in by_name if n in text), key=len, reverse=True):
        return by_name[name]
    for name in sorted((o for o in by_output if o and o in text), key=len, reverse=True):
        return by_output[name]
    # A graph input the model should not have (a captured tensor left as an input): its first reader.
    inputs = {i.name for i in proto.graph.input}
    for name in sorted((i for i in inputs if i and i in text), key=len, reverse=True):
        reader = next((n for n in proto.graph.node if name in n.input), None)
        if reader is not None:
            return reader
    return None


def conversion_message(error_line: str, layers: dict[str, str], opset: int) -> str:
    """The FailedPrecondition text for an exception inside tf2onnx: the layer its graph names point at."""
    names = re.findall(r"[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)+", error_line)
    layer = next((layer_of(n, layers) for n in names if layer_of(n, layers)), "")
    op = ""
    if names:
        op = _SUFFIX.sub("", names[0].split(":")[0].rsplit("/", 1)[-1])
    at = f" at layer '{layer}' ({layers[layer]})" + (f", node {op}" if op else "") if layer else ""
    return f"tf2onnx failed to convert the model{at}: {error_line[:300]}; {advice(opset)}"


def runtime_message(first_line: str, proto, layers: dict[str, str], opset: int) -> str:
    """The FailedPrecondition text for a converted model that onnxruntime cannot load or run."""
    node = node_in_error(first_line, proto)
    if node is None:
        return f"the converted model failed to run on the parity inputs: {first_line}; {advice(opset)}"
    return (f"the converted model failed to run on the parity inputs at {where(node.name, node.op_type, layers)}: "
            f"{_strip_graph_names(first_line)}; {advice(opset)}")


def _strip_graph_names(line: str) -> str:
    """onnxruntime's first line without its ``[ONNXRuntimeError] : N : CODE :`` prefix."""
    return re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", line).strip()[:300]
