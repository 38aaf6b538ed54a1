"""Exact graph rewrites applied to tf2onnx's output before it is saved: LayerNormalization fusion and
constant reshape targets (``static_reshapes``, below). The attention fusion is ``onnx_attention.fuse_attention``.

tf2onnx lowers a Keras 3 ``LayerNormalization`` (``tf.nn.moments`` + rsqrt) to eleven ONNX
nodes: two ``GlobalAveragePool`` for the mean and variance, ``Sub``/``Mul`` for the squared
difference, ``Add``/``Sqrt``/``Reciprocal`` for 1/sigma, and five ``Mul``/``Add``/``Neg`` that fold
gamma and beta in. onnxruntime's own LayerNorm fusion looks for ``ReduceMean``/``Pow``/``Div``
and does not recognise it, so the model keeps paying for eleven memory-bound kernels per norm
(and a transformer encoder has two norms per block). From opset 17 ONNX has
``LayerNormalization``; this module replaces the exact pattern with that one node, which
onnxruntime then also fuses with the residual ``Add`` before it (``SkipLayerNormalization``).

Only the exact pattern is rewritten (every intermediate used once, inside the pattern; gamma,
beta and epsilon constants; a rank-3 input so the pooled axes are the last one), so the result
computes the same function; the converter's parity check runs on the rewritten model as on
every other result.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

log = logging.getLogger("modelport.conversion.fusions")


def _opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


_SMALL_ELEMENTS = 4096  # constants shape inference reads (shapes, axes, scalars) are far smaller


def light_copy(model):
    """The model without its large initializers (each becomes a typed graph input): what shape inference
    needs, a small fraction of the bytes, whatever the weights' size or where their data lives."""
    import onnx

    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    g = light.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    declared = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and int(np.prod(t.dims)) <= _SMALL_ELEMENTS:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def _shapes(model, data_prop: bool = False) -> dict[str, tuple]:
    """Shape of every tensor that shape inference can tell (dims: int, or None when unknown);
    empty when inference fails. ``data_prop`` also follows shape arithmetic (Shape, Gather, Concat…)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(light_copy(model), data_prop=data_prop)
    except Exception:  # noqa: BLE001 - the pass then does nothing
        return {}
    out: dict[str, tuple] = {}
    g = inferred.graph
    for vi in [*g.value_info, *g.input, *g.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return out


class _Consts(dict):
    """Initializer values by name, each read from its TensorProto when first asked for (a model's weights
    are never all copied into numpy: matching only looks at a few small constants); None for one whose
    external data was not loaded."""

    def __init__(self, initializers):
        super().__init__()
        self._protos = {i.name: i for i in initializers}

    def __missing__(self, name: str):
        from onnx import numpy_helper

        if name not in self._protos:
            raise KeyError(name)
        try:
            value = numpy_helper.to_array(self._protos[name])
        except (OSError, ValueError):  # external data that was not loaded: not a usable constant here
            value = None
        self[name] = value
        return value

    def __contains__(self, name) -> bool:
        return super().__contains__(name) or name in self._protos

    def get(self, name, default=None):
        return self[name] if name in self else default


class _Graph:
    """Producer/consumer indexes over a GraphProto (read-only helpers for matching)."""

    def __init__(self, graph):
        self.graph = graph
        self.consumers: dict[str, list] = defaultdict(list)
        for node in graph.node:
            reads = list(node.input)
            for attr in node.attribute:  # If/Loop bodies may read outer tensors: the node consumes them
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    reads.extend(_used_names(sub, set()))
            for name in dict.fromkeys(reads):  # a node reading a tensor twice (x*x) consumes it once
                self.consumers[name].append(node)
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consts = _Consts(graph.initializer)
        self.outputs = {o.name for o in graph.output}

    def only_consumer(self, name: str, op_type: str):
        """The single consumer of ``name`` if it has exactly one, of ``op_type``, and is not a graph output."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op_type or name in self.outputs:
            return None
        return users[0]

    @staticmethod
    def other_input(node, name: str) -> str | None:
        """For a binary node with ``name`` as one input, the other input."""
        if len(node.input) != 2 or name not in node.input:
            return None
        return node.input[1] if node.input[0] == name else node.input[0]


def fuse_layer_norms(model, for_onnxruntime: bool = False) -> int:
    """Rewrite tf2onnx's Keras-LayerNormalization subgraphs into ``LayerNormalization`` nodes.

    Works in place on an ``onnx.ModelProto`` and returns how many norms were fused (0 for opset < 17
    or when nothing matches). ``for_onnxruntime`` also fuses below opset 17 (from 13), for a model only
    onnxruntime will run: it runs ``LayerNormalization`` at every opset (its own fusion emits it there).
    """
    from onnx import helper

    if _opset(model) < (13 if for_onnxruntime else 17):
        return 0
    shapes = _shapes(model)
    if not shapes:
        return 0
    g = _Graph(model.graph)
    nodes_in_order = list(model.graph.node)  # held once: the id()s below refer to these very objects
    fused = 0
    remove: set[int] = set()
    replacements: dict[int, object] = {}
    for mean in nodes_in_order:
        if mean.op_type != "GlobalAveragePool":
            continue
        match = _match_layer_norm(g, mean, shapes)
        if match is None:
            continue
        nodes, x, gamma, beta, eps, out = match
        if any(id(n) in remove for n in nodes):
            continue
        gamma, beta = (_flat_initializer(model, g, name) for name in (gamma, beta))
        ln = helper.make_node("LayerNormalization", [x, gamma, beta], [out], axis=-1, epsilon=float(eps),
                              name=f"{mean.name.rsplit('/moments', 1)[0]}/LayerNormalization")
        for n in nodes:
            remove.add(id(n))
        replacements[id(nodes[-1])] = ln
        fused += 1
    if fused:
        kept = []
        for node in nodes_in_order:
            if id(node) in replacements:
                kept.append(replacements[id(node)])
            elif id(node) not in remove:
                kept.append(node)
        del model.graph.node[:]
        model.graph.node.extend(kept)
        _drop_unused_initializers(model)
        log.info("fused %d LayerNormalization subgraph(s)", fused)
    return fused


def _used_names(graph, acc: set[str]) -> set[str]:
    """Every tensor name read by the graph's nodes, including nodes of subgraphs (If/Loop bodies
    may read outer-scope initializers)."""
    for node in graph.node:
        acc.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _used_names(sub, acc)
    acc.update(o.name for o in graph.output)
    return acc


def _drop_unused_initializers(model) -> None:
    used = _used_names(model.graph, set())
    keep = [i for i in model.graph.initializer if i.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def _flat_initializer(model, g: _Graph, name: str) -> str:
    """``name`` if the constant is 1-D, else a 1-D copy of it (added once) that LayerNormalization takes."""
    from onnx import numpy_helper

    value = g.consts[name]
    if value.ndim == 1:
        return name
    flat = f"{name}__1d"
    if flat not in g.consts:
        g.consts[flat] = value.reshape(-1)
        model.graph.initializer.append(numpy_helper.from_array(g.consts[flat], flat))
    return flat


def _match_layer_norm(g: _Graph, mean, shapes: dict[str, tuple]):
    """Nodes (final Add last), x, gamma, beta, epsilon and output name of one norm, or None."""
    x = mean.input[0]
    m = mean.output[0]
    shape = shapes.get(x)
    if shape is None or len(shape) != 3 or m in g.outputs:
        return None
    users = g.consumers.get(m, [])
    if sorted(u.op_type for u in users) != ["Neg", "Sub"]:
        return None
    neg = next(u for u in users if u.op_type == "Neg")
    sub = next(u for u in users if u.op_type == "Sub")
    if list(sub.input) != [x, m]:
        return None
    sq = g.only_consumer(sub.output[0], "Mul")
    if sq is None or list(sq.input) != [sub.output[0], sub.output[0]]:
        return None
    var = g.only_consumer(sq.output[0], "GlobalAveragePool")
    add_eps = var and g.only_consumer(var.output[0], "Add")
    if not add_eps:
        return None
    eps_name = g.other_input(add_eps, var.output[0])
    eps = g.consts.get(eps_name)
    if eps is None or eps.size != 1:
        return None
    sqrt = g.only_consumer(add_eps.output[0], "Sqrt")
    recip = sqrt and g.only_consumer(sqrt.output[0], "Reciprocal")
    scale_mul = recip and g.only_consumer(recip.output[0], "Mul")
    if not scale_mul:
        return None
    gamma = g.other_input(scale_mul, recip.output[0])
    s = scale_mul.output[0]
    muls = g.consumers.get(s, [])
    if s in g.outputs or len(muls) != 2 or any(u.op_type != "Mul" for u in muls):
        return None
    x_mul = next((u for u in muls if g.other_input(u, s) == x), None)
    mean_mul = next((u for u in muls if g.other_input(u, s) == neg.output[0]), None)
    if x_mul is None or mean_mul is None or x_mul is mean_mul:
        return None
    if g.only_consumer(neg.output[0], "Mul") is not mean_mul:
        return None
    add_beta = g.only_consumer(mean_mul.output[0], "Add")
    if add_beta is None:
        return None
    beta = g.other_input(add_beta, mean_mul.output[0])
    final = g.only_consumer(x_mul.output[0], "Add")
    if final is None or g.other_input(final, x_mul.output[0]) != add_beta.output[0]:
        return None
    if g.only_consumer(add_beta.output[0], "Add") is not final:
        return None
    d = shape[-1]
    for v in (g.consts.get(gamma), g.consts.get(beta)):
        # [D] or [1, 1, D]: one value per normalized feature.
        if v is None or d is None or v.size != d or v.shape[-1] != d:
            return None
    nodes = [mean, neg, sub, sq, var, add_eps, sqrt, recip, scale_mul, x_mul, mean_mul, add_beta, final]
    return nodes, x, gamma, beta, float(eps.reshape(())), final.output[0]


def static_reshapes(model) -> int:
    """Give ``Reshape`` nodes whose target shape is computed at run time a constant one, when it can be.

    Keras 3 lowers ``Flatten`` (and tf2onnx lowers ``Tensordot``) to a reshape whose target shape is
    rebuilt on every call from ``Shape`` → ``Gather``/``Slice`` → ``Concat`` → ``Cast``: half a dozen
    tiny kernels per reshape, which cost a small model ~15 % of its run time. When shape inference
    (with data propagation) knows every output dimension but at most one, the target is that constant
    (``-1`` for the unknown one: onnxruntime infers it from the element count, exactly as before). The
    shape arithmetic left unused is removed. Returns how many reshapes were rewritten.
    """
    from onnx import numpy_helper

    consts = {i.name for i in model.graph.initializer}
    candidates = [n for n in model.graph.node
                  if n.op_type == "Reshape" and n.domain in ("", "ai.onnx") and n.input[1] not in consts]
    if not candidates:
        return 0
    shapes = _shapes(model, data_prop=True)
    taken = consts | {o for n in model.graph.node for o in n.output}
    done = 0
    for node in candidates:
        out = shapes.get(node.output[0])
        if out is None or not out or sum(d is None for d in out) > 1 or any(d == 0 for d in out):
            continue
        name = f"{node.name or node.output[0]}__static_shape"
        while name in taken:
            name += "_"
        taken.add(name)
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([-1 if d is None else d for d in out], dtype=np.int64), name))
        node.input[1] = name
        done += 1
    if done:
        _drop_dead_nodes(model)
        _drop_unused_initializers(model)
        log.info("gave %d reshape(s) a constant target shape", done)
    return done


def _drop_dead_nodes(model) -> None:
    """Remove nodes none of whose outputs is read (by a node, a subgraph or the graph outputs)."""
    while True:
        used = _used_names(model.graph, set())
        keep = [n for n in model.graph.node if any(o in used for o in n.output if o)]
        if len(keep) == len(model.graph.node):
            return
        del model.graph.node[:]
        model.graph.node.extend(keep)
