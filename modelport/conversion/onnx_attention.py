"""Attention fusion: Keras ``MultiHeadAttention`` as tf2onnx exports it → onnxruntime's contrib attention op.

tf2onnx lowers the two einsums of a Keras ``MultiHeadAttention`` (``aecd,abcd->acbe`` for the scores,
``acbe,aecd->abcd`` for the context) to chains of ``Unsqueeze``/``Transpose``/``Reshape``/``MatMul``/
``Squeeze`` whose target shapes are rebuilt at run time from ``Shape``/``Gather``/``Concat``: about forty
nodes per layer that onnxruntime's own attention fusion (which looks for the PyTorch/BERT shapes) does not
recognise. ``fuse_attention`` replaces each such layer by one ``com.microsoft.MultiHeadAttention`` node fed
by the layer's own projections (default), or a packed-QKV ``com.microsoft.Attention`` node.

How a layer is recognised (every check must pass, else the graph is left exactly as it was):

- a ``Softmax`` of a float32 rank-4 tensor whose input is the scores, optionally behind a mask: Keras 3's
  ``where(mask, scores, C)`` (lowered as ``Cast(M)*scores + C*Cast(Not M)``, ``M`` often
  ``And(ones_like(scores), mask)``) with ``C`` a large negative constant, or an additive bias (tf-keras);
- the scores depend on exactly two *projections* — ``[B, S, N, H]`` tensors made from a ``MatMul``/``Gemm``
  with a constant weight by reshapes and constant adds only — through layout ops, shape arithmetic, one
  contraction and scaling by constants;
- the Softmax output and one more projection (the values) reach the input of the output projection (a
  ``MatMul``/``Gemm``/``Einsum`` with a constant weight) the same way;
- those two *cones* compute ``scale * einsum("bsnh,btnh->bnst", q, k)`` (in some axis order, the Softmax
  over ``t``) and ``einsum("bnst,btnh->bsnh", p, v)`` (heads merged or not): this is checked by running the
  cones alone with onnxruntime on random inputs of the layer's shapes — twice, with different sizes, when
  some are dynamic — instead of matching tf2onnx's node-by-node lowering, which changes with static or
  dynamic shapes, opsets, tf2onnx versions and Keras versions;
- after the rewrite nothing outside the layer reads a tensor of it, except shapes: tf2onnx's reshapes
  around the layer read the shapes of tensors inside it when sizes are dynamic, and those are rebuilt as
  ``c * B^i * S^j * T^k`` from the projections' shapes, the formula found from the two runs. Anything else
  keeps the layer as it was (it would be computed twice).

Heads and head sizes come from the projections' shapes, the scale from the constants in the scores cone,
biases are passed to the op (packed with ``Concat`` nodes over the constants; onnxruntime folds them at
load). A ``where`` mask becomes ``F * Cast(Not M)`` added to the scaled scores (``attention_bias``; for
``Attention``, ``mask_index`` with ``mask_filter_value = F``) with ``F`` = -0.7 x float32 max: a masked key
gets weight 0 as with Keras's ``C`` (required <= -1e4), and in a row with every key masked ``score + F``
rounds to ``F`` everywhere, hence Keras's uniform weights. Initializer data is never read (only
``dims``, names and small inline constants such as shapes and scales), so models with external data work;
the converter's parity check runs on the rewritten model like on every other result.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("modelport.conversion.fusions")

MS_DOMAIN = "com.microsoft"
TARGETS = ("MultiHeadAttention", "Attention")

# Ops allowed inside the scores / context cones: data movement, shape arithmetic, the contraction
# (MatMul/Einsum) and scalar scaling. Whatever they compute is then checked numerically.
_LAYOUT_OPS = {"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Identity", "Flatten", "Expand"}
_SHAPE_OPS = {"Shape", "Gather", "Concat", "ReduceProd", "Max", "Min", "Cast", "Slice", "Constant", "Range",
              "Size", "Add", "Sub", "Div", "Mul", "Equal", "Where", "ConstantOfShape", "Neg", "Abs"}
_CONTRACT_OPS = {"MatMul", "Einsum"}
_CONE_OPS = _LAYOUT_OPS | _SHAPE_OPS | _CONTRACT_OPS
_MAX_CONE_NODES = 200
_MAX_CONST_ELEMENTS = 4096  # cone constants are shapes, axes and scales: small, stored inline
_FLOAT = 1  # TensorProto.FLOAT
# Added to masked scores. Keras's where() puts its C there instead; with C <= -1e4 a masked key's weight is 0
# either way, and a row with every key masked gets the same value everywhere (score + fill rounds to fill in
# float32 for any |score| < 1e31), hence Keras's uniform weights, whatever Keras's C.
_MASK_FILL = np.array(-0.7 * np.finfo(np.float32).max, np.float32)


@dataclass
class _Proj:
    """One Q/K/V projection: ``t``, the ``[B, S, N, H]`` tensor the attention reads, is
    ``reshape(x @ weight + bias_pre) + bias_post``."""

    t: str
    n: int
    h: int
    x: str | None  # the [B, S, D] input, when known
    weight: str | None  # the constant [D, N*H] weight, when it is one plain 2-D tensor
    mm: str | None  # x @ weight as a [B, S, N*H] tensor, when the graph has it
    bias_pre: str | None  # constant [N*H] bias added before the heads are split
    bias_post: str | None  # constant [N, H] bias (maybe with leading 1s) added after


@dataclass
class _Match:
    softmax: object
    q: _Proj
    k: _Proj
    v: _Proj
    scale: float
    ctx_out: str  # tensor replaced by the fused op's output
    ctx_rank: int  # 3: [B, S, N*Hv]; 4: [B, S, N, Hv]; 2: [B*S, N*Hv]
    bias_src: str | None  # mask / additive bias source (see _mask)
    bias_kind: str  # "none" | "where" | "add"
    core: list = field(default_factory=list)  # nodes that must die after the rewrite
    runs: list = field(default_factory=list)  # the check's runs: ({"B", "S", "T": size}, {tensor: value})
    perm: tuple = (0, 1, 2, 3)  # the scores (and mask) layout: [B, N, S, T].transpose(perm)


class _Index:
    """Producer / consumer indexes over the main graph, without reading initializer data."""

    def __init__(self, model):
        g = model.graph
        self.model = model
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in g.node:
            reads = list(n.input)
            for attr in n.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    reads.extend(_subgraph_reads(sub))
            for name in dict.fromkeys(reads):
                if name:
                    self.consumers[name].append(n)
        self.inits = {i.name: i for i in g.initializer}
        self.outputs = {o.name for o in g.output}
        self.inputs = {i.name for i in g.input}
        self._small: dict[str, np.ndarray | None] = {}
        self._folds: dict[str, bool] = {}

    def is_const(self, name: str) -> bool:
        if name in self.inits:
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type == "Constant" and p.domain in ("", "ai.onnx")

    def const_dims(self, name: str) -> tuple[int, ...] | None:
        """Shape of a constant from its ``dims`` (never its data)."""
        if name in self.inits:
            return tuple(int(d) for d in self.inits[name].dims)
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return tuple(int(d) for d in a.t.dims)
        return None

    def small_const(self, name: str) -> np.ndarray | None:
        """Value of a small constant stored inline (shapes, axes, scalars); None for anything else."""
        if name in self._small:
            return self._small[name]
        from onnx import helper, numpy_helper

        value = None
        tensor = self.inits.get(name)
        if tensor is None:
            p = self.producer.get(name)
            if p is not None and p.op_type == "Constant":
                for a in p.attribute:
                    if a.name == "value":
                        tensor = a.t
                    elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                        value = np.asarray(helper.get_attribute_value(a))
        if tensor is not None and tensor.data_location != 1 and int(np.prod(tensor.dims)) <= _MAX_CONST_ELEMENTS:
            try:
                value = numpy_helper.to_array(tensor)
            except Exception:  # noqa: BLE001 - unreadable here: treated as not a usable constant
                value = None
        self._small[name] = value
        return value

    def weight_const(self, name: str) -> bool:
        """Computed from constants only (an initializer, or e.g. a reshape of one to a shape computed from
        constants): what onnxruntime folds at load."""
        if name in self._folds:
            return self._folds[name]
        seen: set[str] = set()
        stack = [name]
        ok = True
        while stack and ok:
            t = stack.pop()
            if t in seen or not t or self.is_const(t):
                continue
            seen.add(t)
            p = self.producer.get(t)
            ok = p is not None and len(seen) <= 40 and not p.op_type.startswith("Random") and not any(
                a.HasField("g") or len(a.graphs) for a in p.attribute)
            if ok:
                stack.extend(p.input)
        self._folds[name] = ok
        return ok


def _subgraph_reads(graph) -> list[str]:
    out: list[str] = []
    for n in graph.node:
        out.extend(n.input)
        for attr in n.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                out.extend(_subgraph_reads(sub))
    out.extend(o.name for o in graph.output)
    return out


def _opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _symbolic_shapes(model) -> dict[str, tuple[int, tuple]]:
    """``{tensor: (elem_type, dims)}`` from ONNX shape inference with data propagation, dims being int,
    a symbol (str) or None. Runs on a copy whose large initializers are replaced by typed graph inputs, so
    neither external data nor the 2 GiB protobuf limit matter."""
    import onnx

    from modelport.conversion.onnx_fusions import light_copy

    try:
        inferred = onnx.shape_inference.infer_shapes(light_copy(model), data_prop=True)
    except Exception as e:  # noqa: BLE001 - no shapes: no fusion
        log.info("attention fusion skipped: shape inference failed (%s)", e)
        return {}
    out = {}
    ig = inferred.graph
    for vi in [*ig.value_info, *ig.input, *ig.output]:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            out[vi.name] = (t.elem_type, None)
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        out[vi.name] = (t.elem_type, dims)
    for t in model.graph.initializer:
        out.setdefault(t.name, (t.data_type, tuple(int(d) for d in t.dims)))
    return out


class _Fuser:
    def __init__(self, model, target: str):
        self.model = model
        self.target = target
        self.ix = _Index(model)
        self.shapes = _symbolic_shapes(model)
        self.order = {id(n): i for i, n in enumerate(model.graph.node)}
        self._verified: dict[bytes, dict[str, np.ndarray] | None] = {}
        self._proj: dict[str, _Proj | None] = {}
        self.why = ""

    # ---- projections -------------------------------------------------------------------------------
    def projection(self, t: str) -> _Proj | None:
        """``t`` as a Keras EinsumDense Q/K/V projection with its heads split out, or None."""
        if t not in self._proj:
            self._proj[t] = self._projection(t)
        return self._proj[t]

    def _projection(self, t: str) -> _Proj | None:
        ix = self.ix
        shape = self.shapes.get(t, (0, None))
        if shape[0] != _FLOAT or shape[1] is None or len(shape[1]) != 4:
            return None
        n, h = shape[1][2], shape[1][3]
        if not (isinstance(n, int) and isinstance(h, int) and n > 0 and h > 0):
            return None
        # back to a MatMul/Gemm with a constant weight through reshapes and constant (bias) adds only
        chain, cur = [], t
        while True:
            p = ix.producer.get(cur)
            if p is None or len(chain) > 8:
                return None
            if p.op_type in ("MatMul", "Gemm") and ix.weight_const(p.input[1]):
                m = p
                break
            if p.op_type in ("Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten"):
                chain.append(p)
                cur = p.input[0]
            elif p.op_type == "Add" and (ix.is_const(p.input[0]) or ix.is_const(p.input[1])):
                chain.append(p)
                cur = p.input[1] if ix.is_const(p.input[0]) else p.input[0]
            else:
                return None
        generic = _Proj(t=t, n=n, h=h, x=None, weight=None, mm=None, bias_pre=None, bias_post=None)
        # the common shape, reshape(x @ W [+ b_pre]) [+ b_post]: its pieces let the fused op take x @ W itself
        ops = [c.op_type for c in chain]
        if ops not in (["Reshape"], ["Add", "Reshape"], ["Reshape", "Add"], ["Add", "Reshape", "Add"]):
            return generic
        bias_post = bias_pre = None
        if ops[0] == "Add":
            b = next(x for x in chain[0].input if ix.is_const(x))
            bdims = ix.const_dims(b)
            if bdims is None or len(bdims) > 4 or (1,) * (4 - len(bdims)) + tuple(bdims) != (1, 1, n, h):
                return generic
            bias_post = b
        if ops[-1] == "Add":
            b = next(x for x in chain[-1].input if ix.is_const(x))
            bdims = ix.const_dims(b)
            if bdims is None or not bdims or bdims[-1] != n * h or int(np.prod(bdims)) != n * h:
                return generic
            bias_pre = b
        if m.op_type == "Gemm":
            if _attr(m, "transA", 0) or _attr(m, "alpha", 1.0) != 1.0:
                return generic
            if len(m.input) > 2 and m.input[2]:
                bdims = ix.const_dims(m.input[2])
                if bias_pre or _attr(m, "beta", 1.0) != 1.0 or bdims is None or tuple(bdims) != (n * h,):
                    return generic
                bias_pre = m.input[2]
        mshape = self.shapes.get(m.output[0], (0, None))[1]
        if mshape is None or len(mshape) not in (2, 3) or mshape[-1] != n * h:
            return generic
        x, mm = m.input[0], None
        split = chain[1] if ops[0] == "Add" else chain[0]  # the Reshape that splits the heads out
        if len(mshape) == 3:
            if not self.splits_heads(split, mshape[:2], n, h, zero_copies=True):
                return generic
            mm = m.output[0] if m.op_type == "MatMul" else None
        else:  # [B*S, N*H]: x was flattened from [B, S, D] by a Reshape
            flat_in = ix.producer.get(x)
            src = self.shapes.get(flat_in.input[0], (0, None))[1] if flat_in is not None and \
                flat_in.op_type == "Reshape" else None
            xs = self.shapes.get(x, (0, None))[1]
            x = flat_in.input[0] if src is not None and len(src) == 3 and xs is not None and len(xs) == 2 \
                and src[-1] is not None and src[-1] == xs[-1] else None
            if x is None or not self.splits_heads(split, src[:2], n, h, zero_copies=False):
                return generic
        wdims = ix.const_dims(m.input[1])
        transposed = m.op_type == "Gemm" and _attr(m, "transB", 0)
        weight = m.input[1] if wdims is not None and len(wdims) == 2 and wdims[1] == n * h and not transposed \
            else None
        return _Proj(t=t, n=n, h=h, x=x, weight=weight, mm=mm, bias_pre=bias_pre, bias_post=bias_post)

    def splits_heads(self, reshape, lead: tuple, n: int, h: int, zero_copies: bool) -> bool:
        """``reshape`` has a constant target ``[a, b, N, H]`` keeping the leading ``[B, S]`` (``lead``: their
        dims, int, symbol or None) as they are: each of ``a``, ``b`` is that dim, or 0 (copy, when the input
        has them) or -1 (the one left)."""
        target = self.ix.small_const(reshape.input[1]) if len(reshape.input) > 1 else None
        if target is None or target.shape != (4,) or tuple(int(v) for v in target[2:]) != (n, h) \
                or _attr(reshape, "allowzero", 0):
            return False
        a, b = (int(v) for v in target[:2])
        kept = [(v == 0 and zero_copies) or (isinstance(d, int) and v == d) for v, d in zip((a, b), lead, strict=True)]
        return all(kept) or (sorted(kept) == [False, True] and -1 in (a, b))

    # ---- cones ---------------------------------------------------------------------------------------
    def cone(self, out: str, is_boundary) -> tuple[list, list[str]] | None:
        """Nodes computing ``out`` back to boundary tensors (in graph order) and the boundaries reached."""
        ix = self.ix
        nodes: dict[int, object] = {}
        leaves: list[str] = []
        stack = [out]
        seen: set[str] = set()
        while stack:
            t = stack.pop()
            if not t or t in seen:
                continue
            seen.add(t)
            if t != out and is_boundary(t):
                leaves.append(t)
                continue
            if t in ix.inits:
                if ix.small_const(t) is None:
                    return None
                continue
            p = ix.producer.get(t)
            if p is None or p.op_type not in _CONE_OPS or p.domain not in ("", "ai.onnx"):
                return None
            if p.op_type == "Constant" and ix.small_const(t) is None:
                return None
            if p.op_type in _SHAPE_OPS and self.shapes.get(t, (0, None))[0] in (0, _FLOAT) and not (
                    p.op_type in ("Mul", "Div") and any(ix.is_const(i) for i in p.input)) and p.op_type not in (
                    "Gather", "Concat", "Slice", "Cast", "Constant"):
                return None  # arithmetic on the attention values themselves: only scaling by constants
            if id(p) not in nodes:
                nodes[id(p)] = p
                if len(nodes) > _MAX_CONE_NODES:
                    return None
                stack.extend(p.input)
        ordered = sorted(nodes.values(), key=lambda n: self.order[id(n)])
        contractions = [n for n in ordered if n.op_type in _CONTRACT_OPS]
        if len(contractions) != 1:
            return None
        return ordered, leaves

    def scale_of(self, nodes) -> float | None:
        """Product of the scalar float constants the cone multiplies (or divides) by."""
        scale = 1.0
        for n in nodes:
            if n.op_type not in ("Mul", "Div"):
                continue
            consts = [(i, self.ix.small_const(x)) for i, x in enumerate(n.input) if self.ix.is_const(x)]
            for i, v in consts:
                if v is None or v.dtype.kind != "f":
                    continue
                if v.size != 1:
                    return None
                f = float(v.reshape(()))
                if n.op_type == "Div":
                    if i != 1 or f == 0.0:
                        return None
                    f = 1.0 / f
                scale *= f
        return scale

    # ---- numeric check of a cone ------------------------------------------------------------------
    def run_cone(self, nodes, inputs: dict[str, np.ndarray], out: str) -> dict[str, np.ndarray] | None:
        """Run the cone's nodes alone on ``inputs``; every tensor they compute (``out`` included) by name."""
        import onnx
        from onnx import helper

        names: dict[str, str] = {}

        def canon(name: str) -> str:
            if not name:
                return ""
            if name not in names:
                names[name] = f"t{len(names)}"
            return names[name]

        for name in inputs:
            canon(name)
        sub_nodes, inits = [], []
        for n in nodes:
            m = onnx.NodeProto()
            m.CopyFrom(n)
            m.name = ""
            for i, x in enumerate(m.input):
                if x in self.ix.inits and x not in inputs and x not in names:
                    t = onnx.TensorProto()
                    t.CopyFrom(self.ix.inits[x])
                    t.name = canon(x)
                    inits.append(t)
                m.input[i] = canon(x)
            for i, x in enumerate(m.output):
                m.output[i] = canon(x)
            sub_nodes.append(m)
        produced = [o for n in nodes for o in n.output if o]
        extra = [o for o in produced if o != out and self.shapes.get(o, (0, None))[0]]
        outputs = [helper.make_tensor_value_info(canon(out), _FLOAT, None)] + [
            helper.make_tensor_value_info(canon(o), self.shapes[o][0], None) for o in extra]
        graph = helper.make_graph(
            sub_nodes, "cone",
            [helper.make_tensor_value_info(canon(k), _FLOAT, list(v.shape)) for k, v in inputs.items()],
            outputs, initializer=inits)
        sub = helper.make_model(graph, opset_imports=[i for i in self.model.opset_import
                                                      if i.domain in ("", "ai.onnx")])
        sub.ir_version = self.model.ir_version
        blob = sub.SerializeToString(deterministic=True)
        digest = hashlib.sha256(blob)
        for k in inputs:
            digest.update(inputs[k].tobytes())
        key = digest.digest()
        if key not in self._verified:  # identical layers share one run (cached by canonical names)
            self._verified[key] = self._run_sub(blob, {canon(k): v for k, v in inputs.items()},
                                                [canon(o) for o in (out, *extra)])
        cached = self._verified[key]
        return None if cached is None else {o: cached[canon(o)] for o in (out, *extra)}

    @staticmethod
    def _run_sub(blob: bytes, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray] | None:
        import onnxruntime as ort

        try:
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.log_severity_level = 3
            sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
            values = dict(zip(outputs, sess.run(outputs, feeds), strict=True))
            for name in outputs[1:]:  # of the float tensors inside, only the shapes are used: keep no data
                if values[name].dtype.kind == "f":
                    values[name] = np.broadcast_to(np.zeros((), values[name].dtype), values[name].shape)
            return values
        except Exception as e:  # noqa: BLE001 - a cone that does not run is not a match
            log.debug("attention cone did not run: %s", e)
            return None

    def dims_for(self, q: _Proj, k: _Proj) -> list[tuple[int, int, int]] | None:
        """(B, S, T) test sizes: the static ones, and two different picks for the dynamic ones."""
        qd, kd = self.shapes[q.t][1], self.shapes[k.t][1]
        same_seq = q.x is not None and q.x == k.x
        picks = []
        for b0, s0, t0 in ((2, 5, 7), (3, 11, 13)):
            def pick(dims_list, default):
                statics = {d for d in dims_list if isinstance(d, int) and d > 0}
                if len(statics) > 1:
                    return None
                return statics.pop() if statics else default

            b = pick([qd[0], kd[0]], b0)
            s = pick([qd[1], kd[1]] if same_seq else [qd[1]], s0)
            t = s if same_seq else pick([kd[1]], t0)
            if b is None or s is None or t is None:
                return None
            picks.append((b, s, t))
        return picks if picks[0] != picks[1] else picks[:1]

    # ---- one Softmax ---------------------------------------------------------------------------------
    def match(self, sm) -> _Match | None:
        """The attention layer around Softmax ``sm``, or None (``self.why`` then says what did not fit)."""
        ix = self.ix
        s_in, p_out = sm.input[0], sm.output[0]
        st = self.shapes.get(s_in, (0, None))
        if st[0] != _FLOAT or st[1] is None or len(st[1]) != 4:
            return self._no("the Softmax input is not a float32 tensor of rank 4")
        axis = _attr(sm, "axis", -1 if _opset(self.model) >= 13 else 1)
        if axis not in range(-4, 4) or (_opset(self.model) < 13 and axis not in (-1, 3)):
            return self._no(f"the Softmax is over axis {axis}")  # (before opset 13 it flattens from there)
        axis %= 4
        if p_out in ix.outputs:
            return self._no("the attention probabilities are a model output")

        mask = self.mask(s_in)
        if mask is None:
            return self._no("the Softmax input is neither the scores nor the scores with a mask or bias")
        scores, bias_src, bias_kind, mask_nodes = mask

        sc = self.cone(scores, lambda t: self.projection(t) is not None)
        if sc is None:
            return self._no("the scores are not one contraction of projections through layout ops")
        s_nodes, s_leaves = sc
        s_leaves = list(dict.fromkeys(s_leaves))
        if len(s_leaves) not in (1, 2):
            return self._no(f"the scores read {len(s_leaves)} projections")
        scale = self.scale_of(s_nodes)
        if scale is None:
            return self._no("the scores are scaled by something other than scalar constants")

        ctx = self.context_out(p_out)
        if ctx is None:
            return self._no("no output projection (MatMul/Einsum with a constant weight) after the Softmax")
        ctx_out, _ = ctx
        cc = self.cone(ctx_out, lambda t: t == p_out or self.projection(t) is not None)
        if cc is None:
            return self._no("the context is not one contraction of the probabilities and a projection")
        c_nodes, c_leaves = cc
        v_leaves = [t for t in dict.fromkeys(c_leaves) if t != p_out]
        if p_out not in c_leaves or len(v_leaves) != 1:
            return self._no("the context does not read the probabilities and exactly one projection")
        v = self.projection(v_leaves[0])

        # which leaf is the query: try both orders (one order for self-attention with q == k tensors)
        orders = [(s_leaves[0], s_leaves[-1])]
        if len(s_leaves) == 2:
            orders.append((s_leaves[1], s_leaves[0]))
        for qt, kt in orders:
            q, k = self.projection(qt), self.projection(kt)
            if q.n != k.n or q.h != k.h or v.n != q.n:
                continue
            checked = self.verify(q, k, v, s_nodes, scores, c_nodes, ctx_out, p_out, scale, axis)
            if checked is None:
                continue
            core = [*s_nodes, *c_nodes, sm, *mask_nodes]
            return _Match(softmax=sm, q=q, k=k, v=v, scale=scale, ctx_out=ctx_out, ctx_rank=checked[0],
                          bias_src=bias_src, bias_kind=bias_kind, core=core,
                          runs=checked[1], perm=checked[2])
        return self._no("run on random inputs, the cones do not compute scale * Q K^T and P V")

    def _no(self, why: str) -> None:
        self.why = why
        return None

    def verify(self, q, k, v, s_nodes, scores, c_nodes, ctx_out, p_out, scale, axis: int
               ) -> tuple[int, list, tuple] | None:
        """Run both cones on random inputs; when both are exact, the rank of the context output, the runs
        (sizes and every cone tensor, from which shapes the rest of the graph reads can be rebuilt) and the
        layout of the scores: ``perm`` with scores = ``[B, N, S, T]``.transpose(perm), the Softmax over T."""
        picks = self.dims_for(q, k)
        if picks is None:
            return None
        vd = self.shapes[v.t][1]
        rank = perm = None
        runs = []
        rng = np.random.default_rng(0)
        for b, s, t in picks:
            if isinstance(vd[1], int) and vd[1] != t:
                return None
            qa = rng.standard_normal((b, s, q.n, q.h)).astype(np.float32)
            ka = rng.standard_normal((b, t, k.n, k.h)).astype(np.float32)
            feeds = {q.t: qa} if q.t == k.t else {q.t: qa, k.t: ka}
            if q.t == k.t:
                if s != t:
                    return None
                ka = qa
            s_run = self.run_cone(s_nodes, feeds, scores)
            got = None if s_run is None else s_run[scores]
            want = scale * np.einsum("bsnh,btnh->bnst", qa.astype(np.float64), ka.astype(np.float64))
            if got is None or got.ndim != 4:
                return None
            # tf2onnx may keep the scores transposed (and the Softmax over another axis): find the layout
            layouts = [pm for pm in itertools.permutations(range(4)) if pm[axis] == 3 and perm in (None, pm)
                       and want.transpose(pm).shape == got.shape]
            perm = next((pm for pm in layouts if np.allclose(got, want.transpose(pm), rtol=1e-4, atol=1e-4)), None)
            if perm is None:
                return None
            pa = rng.random((b, q.n, s, t)).astype(np.float32).transpose(perm).copy()
            va = rng.standard_normal((b, t, v.n, v.h)).astype(np.float32)
            c_run = self.run_cone(c_nodes, {p_out: pa, v.t: va}, ctx_out)
            if c_run is None:
                return None
            got = c_run[ctx_out]
            want = np.einsum("bnst,btnh->bsnh", pa.transpose(np.argsort(perm)).astype(np.float64),
                             va.astype(np.float64))
            runs.append(({"B": b, "S": s, "T": t}, {**s_run, **c_run, p_out: pa}))
            if got.ndim in (2, 3):  # heads merged, maybe batch and sequence too
                want = want.reshape((b, s, v.n * v.h) if got.ndim == 3 else (b * s, v.n * v.h))
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
                return None
            if rank not in (None, got.ndim):
                return None
            rank = got.ndim
        return rank, runs, perm

    def context_out(self, p_out: str) -> tuple[str, object] | None:
        """The tensor read by the output projection (a MatMul/Einsum with a constant weight) downstream of
        the Softmax output, found by walking forward through cone ops."""
        ix = self.ix
        frontier = [p_out]
        seen = {p_out}
        steps = 0
        while frontier:
            t = frontier.pop(0)
            for c in ix.consumers.get(t, []):
                if c.op_type in ("MatMul", "Gemm", "Einsum") and c.input[0] == t and len(c.input) > 1 \
                        and ix.weight_const(c.input[1]) and t != p_out:
                    return t, c
                if c.op_type not in _CONE_OPS:
                    continue
                for o in c.output:
                    if o and o not in seen:
                        seen.add(o)
                        frontier.append(o)
            steps += 1
            if steps > _MAX_CONE_NODES:
                return None
        return None

    def mask(self, s_in: str):
        """``(scores, bias_src, kind, nodes)`` for the Softmax input: no mask, the Keras ``where`` mask or an
        additive bias; None when it is none of these."""
        ix = self.ix
        p = ix.producer.get(s_in)
        if p is None or p.op_type != "Add":
            return s_in, None, "none", []
        a, b = p.input
        # where(M, S, C) lowered as Cast(M) * S + C * Cast(Not(M))
        for left, right in ((a, b), (b, a)):
            lm, rm = ix.producer.get(left), ix.producer.get(right)
            if lm is None or rm is None or lm.op_type != "Mul" or rm.op_type != "Mul":
                continue
            c_name = next((x for x in rm.input if ix.is_const(x)), None)
            c = ix.small_const(c_name) if c_name else None
            if c is None or c.size != 1 or float(c.reshape(())) > -1e4:
                continue
            not_cast = ix.producer.get(rm.input[1] if rm.input[0] == c_name else rm.input[0])
            if not_cast is None or not_cast.op_type != "Cast" or _attr(not_cast, "to") != _FLOAT:
                continue
            not_node = ix.producer.get(not_cast.input[0])
            if not_node is None or not_node.op_type != "Not":
                continue
            m = not_node.input[0]
            for scores, cast in ((lm.input[1], lm.input[0]), (lm.input[0], lm.input[1])):
                cast_node = ix.producer.get(cast)
                if cast_node is not None and cast_node.op_type == "Cast" and cast_node.input[0] == m \
                        and _attr(cast_node, "to") == _FLOAT:
                    m_eff = self.strip_all_true(m)
                    nodes = [p, lm, rm, not_cast, not_node, cast_node]
                    return scores, m_eff, "where", nodes
        # additive bias (tf-keras style masks): whichever side is not the scores is the bias; which one
        # is the scores is settled by the cone check.
        for scores, bias in ((a, b), (b, a)):
            if self.projection_reachable(scores) and not self.projection_reachable(bias):
                return scores, bias, "add", [p]
        return None

    def strip_all_true(self, m: str) -> str:
        """``And(ones_like(x), M)`` → ``M``: Keras broadcasts the mask to the scores' shape this way; the fused op
        broadcasts the bias itself, and keeping ``ones_like(scores)`` would keep the scores alive."""
        ix = self.ix
        p = ix.producer.get(m)
        if p is None or p.op_type != "And":
            return m
        for ones, other in ((p.input[0], p.input[1]), (p.input[1], p.input[0])):
            e = ix.producer.get(ones)
            if e is not None and e.op_type == "Expand":
                v = ix.small_const(e.input[0])
                if v is not None and v.size == 1 and bool(v.reshape(())):
                    return other
        return m

    def projection_reachable(self, t: str, limit: int = 400) -> bool:
        stack, seen = [t], set()
        while stack and len(seen) < limit:
            x = stack.pop()
            if x in seen or not x:
                continue
            seen.add(x)
            if self.projection(x) is not None:
                return True
            p = self.ix.producer.get(x)
            if p is not None:
                stack.extend(p.input)
        return False


class _Names:
    def __init__(self, model):
        self.taken = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.initializer} \
            | {i.name for i in model.graph.input}

    def __call__(self, base: str) -> str:
        name = base
        i = 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name


def _build(model, fz: _Fuser, m: _Match, target: str, names: _Names) -> list | None:
    """New nodes computing ``m.ctx_out`` with one contrib attention op, or None when ``target`` cannot."""
    from onnx import helper, numpy_helper

    q, k, v = m.q, m.k, m.v
    prefix = m.softmax.name.rsplit("/", 1)[0] if "/" in m.softmax.name else (m.softmax.name or "attention")
    new: list = []

    consts: dict[tuple, str] = {}

    def const(name: str, value: np.ndarray) -> str:
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in consts:
            consts[key] = names(f"{prefix}/{name}")
            model.graph.initializer.append(numpy_helper.from_array(value, consts[key]))
        return consts[key]

    def node(op: str, inputs: list[str], tag: str, **attrs) -> str:
        out = names(f"{prefix}/{tag}")
        new.append(helper.make_node(op, inputs, [out], name=names(f"{prefix}/{tag}_node"), **attrs))
        return out

    def i64(*values: int) -> str:
        return const("shape_" + "_".join(str(x).replace("-", "m") for x in values), np.array(values, np.int64))

    def packed_bias() -> str | None:
        """The q, k and v biases as one [q_hidden + k_hidden + v_hidden] vector ("" when none has one; zeros
        for one without), as nodes on the constants: onnxruntime folds them at load, no data is read here."""
        if not any(p.bias_pre or p.bias_post for p in (q, k, v)):
            return ""
        parts = []
        for p, tag in ((q, "q"), (k, "k"), (v, "v")):
            if p.bias_pre and p.bias_post:
                return None
            b = p.bias_pre or p.bias_post
            parts.append(node("Reshape", [b, i64(-1)], f"{tag}_bias_1d") if b
                         else const(f"{tag}_zero_bias", np.zeros(p.n * p.h, np.float32)))
        return node("Concat", parts, "qkv_bias", axis=0)

    def seq_lens() -> list[str]:
        return [node("Slice", [node("Shape", [p.t], f"{tag}_shape"), i64(1), i64(2)], f"{tag}_len")
                for p, tag in ((q, "q"), (k, "k"))]

    attrs: dict = {"num_heads": q.n, "scale": float(m.scale)}
    out = m.ctx_out if m.ctx_rank == 3 else names(f"{prefix}/attention_out")
    mask_src = m.bias_src
    mask_shape = fz.shapes.get(m.bias_src, (0, None))[1] if m.bias_src else None
    if mask_src and m.perm != (0, 1, 2, 3):  # the mask is in the scores' layout: back to [B, N, S, T]
        if mask_shape is None or len(mask_shape) != 4:
            return None
        inv = [int(i) for i in np.argsort(m.perm)]
        mask_src = node("Transpose", [mask_src], "mask_bnst", perm=inv)
        mask_shape = tuple(mask_shape[i] for i in inv)
    if mask_shape is not None and (len(mask_shape) != 4 or mask_shape[1] not in (1, q.n)):
        return None
    # does the mask / bias already have the query and key lengths in its last two dims?
    full = mask_shape is not None and mask_shape[2] is not None and mask_shape[2] == fz.shapes[q.t][1][1] \
        and mask_shape[3] is not None and mask_shape[3] == fz.shapes[k.t][1][1]

    if target == "Attention":
        # packed QKV projection; the mask as mask_index [B, S, T] (QAttention, which int8-dynamic makes of
        # this op, reads mask_index but not attention_bias)
        if not (q.x and q.x == k.x == v.x and q.weight and k.weight and v.weight) or m.bias_kind == "add":
            return None
        mask_index = ""
        if m.bias_kind == "where":
            if mask_shape[1] != 1:
                return None
            mask = mask_src
            # a symbolic batch dim equals the scores' batch (Keras broadcast it against them; were it 1 at run
            # time while the batch is not, onnxruntime refuses the mask's shape: an error, never a wrong answer)
            if not (full and (isinstance(mask_shape[0], str) or mask_shape[0] == fz.shapes[q.t][1][0])):
                batch = node("Slice", [node("Shape", [q.t], "q_shape_b"), i64(0), i64(1)], "batch")
                target_shape = node("Concat", [batch, i64(1), *seq_lens()], "mask_shape", axis=0)
                mask = node("Expand", [mask, target_shape], "mask_expanded")
            squeezed = node("Squeeze", [mask, i64(1)], "mask_bst")
            mask_index = node("Cast", [squeezed], "mask_index", to=6)  # INT32
            attrs["mask_filter_value"] = float(_MASK_FILL)
        weight = node("Concat", [q.weight, k.weight, v.weight], "qkv_weight", axis=1)
        bias = packed_bias()
        if bias is None:
            return None
        if not bias:  # QAttention needs a bias: zeros
            bias = const("qkv_zero_bias", np.zeros(q.n * q.h * 2 + v.n * v.h, np.float32))
        if v.h != q.h:
            attrs["qkv_hidden_sizes"] = [q.n * q.h, k.n * k.h, v.n * v.h]
        inputs = [q.x, weight, bias, mask_index]
        op = "Attention"
    else:
        bias_in = ""
        if m.bias_kind == "add":
            bias_in = mask_src
        elif m.bias_kind == "where":
            bias_in = node("Mul", [node("Cast", [node("Not", [mask_src], "mask_not")], "mask_float", to=_FLOAT),
                                   const("mask_fill", _MASK_FILL)], "mask_bias")
        if bias_in and not full:  # broadcast to [B|1, N|1, S, T]
            shape = node("Concat", [i64(1, 1), *seq_lens()], "bias_shape", axis=0)
            bias_in = node("Expand", [bias_in, shape], "bias_expanded")
        bias = packed_bias() if all(p.mm for p in (q, k, v)) else None
        if bias is None:  # no [B, S, N*H] projection outputs to use: merge the heads of what the layer read
            qkv = [node("Reshape", [p.t, i64(0, 0, p.n * p.h)], f"{tag}_merged") for p, tag in
                   ((q, "q"), (k, "k"), (v, "v"))]
            bias = ""
        else:
            qkv = [q.mm, k.mm, v.mm]
        inputs = [*qkv, bias, "", bias_in]
        op = "MultiHeadAttention"
    while inputs and inputs[-1] == "":
        inputs.pop()
    new.append(helper.make_node(op, inputs, [out], domain=MS_DOMAIN, name=names(f"{prefix}/{op}"), **attrs))
    if m.ctx_rank != 3:  # the layer's own layout of the context: heads split, or batch and sequence merged
        shape = i64(0, 0, v.n, v.h) if m.ctx_rank == 4 else i64(-1, v.n * v.h)
        new.append(helper.make_node("Reshape", [out, shape], [m.ctx_out], name=names(f"{prefix}/context_layout")))
    return new


def _live_nodes(model, nodes) -> set[int]:
    """ids of the nodes some graph output depends on (nodes in topological order)."""
    needed = {o.name for o in model.graph.output}
    live: set[int] = set()
    for n in reversed(nodes):
        if any(o in needed for o in n.output if o):
            live.add(id(n))
            needed.update(i for i in n.input if i)
            for attr in n.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    needed.update(_subgraph_reads(sub))
    return live


def fuse_attention(model, target: str = "MultiHeadAttention") -> int:
    """Rewrite Keras MultiHeadAttention layers (as tf2onnx exports them) into one contrib attention op each.

    Works in place on any ``onnx.ModelProto`` (initializer data is never read: external data is fine) and
    returns how many layers were fused. ``target`` is ``"MultiHeadAttention"`` (default: any Q/K/V, also
    cross-attention) or ``"Attention"`` (self-attention with packed QKV weights; other layers fall back to
    MultiHeadAttention). Layers that do not match exactly are left unchanged.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown attention target {target!r}; use one of {', '.join(TARGETS)}")
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax" and n.domain in ("", "ai.onnx")]
    if not softmaxes or _opset(model) < 11:
        return 0
    # cheap gate before shape inference: attention multiplies two activations twice (Q K^T, then P V); a
    # classifier's Softmax head or a CNN has no such product
    consts = {i.name for i in model.graph.initializer}
    products = sum(1 for n in model.graph.node if n.op_type in _CONTRACT_OPS and len(n.input) >= 2
                   and not any(i in consts for i in n.input))
    if products < 2:
        return 0
    try:
        import onnxruntime  # noqa: F401 - the cones are checked with it
    except ImportError:
        log.info("attention fusion skipped: onnxruntime is not installed")
        return 0
    fz = _Fuser(model, target)
    if not fz.shapes:
        return 0
    matches = []
    for sm in softmaxes:
        m = fz.match(sm)
        if m is None:
            log.debug("attention fusion: not at %s: %s", sm.name or sm.output[0], fz.why)
        else:
            matches.append(m)
    if not matches:
        return 0
    original = list(model.graph.node)
    init_count = len(model.graph.initializer)
    names = _Names(model)
    plans: list[tuple[_Match, dict[int, list]]] = []
    for m in matches:
        built = _build(model, fz, m, target, names)
        if built is None and target == "Attention":
            built = _build(model, fz, m, "MultiHeadAttention", names)
        if built is not None:
            plans.append((m, {id(fz.ix.producer[m.ctx_out]): built}))
    # Apply, then keep only the rewrites whose old layer dies: where the rest of the graph still reads the
    # shape of a tensor inside it (tf2onnx's reshapes around it do), that shape is rebuilt from the
    # projections' shapes; a layer whose tensors are read otherwise is left as it was.
    rebuilt: set[int] = set()
    while plans:
        nodes = _apply(original, plans)
        live = _live_nodes(model, nodes)
        alive = [(m, r) for m, r in plans if any(id(n) in live for n in m.core)]
        if not alive:
            break
        for m, r in alive:
            extra = None if id(m) in rebuilt else _rebuild_shapes(model, fz, m, nodes, live, names)
            rebuilt.add(id(m))
            if extra is None:
                plans = [(pm, pr) for pm, pr in plans if pm is not m]
            else:
                r.update(extra)
    if not plans:
        del model.graph.initializer[init_count:]
        return 0
    nodes = _apply(original, plans)
    live = _live_nodes(model, nodes)
    del model.graph.node[:]
    model.graph.node.extend(n for n in nodes if id(n) in live)
    # ONNX shape inference does not know the contrib ops: record what their outputs are, so tools that rely on
    # it (the quantizer's pre-processing) still type everything downstream
    known = {vi.name for vi in model.graph.value_info}
    for m, _ in plans:
        if m.ctx_out not in known and m.ctx_out not in fz.ix.outputs:
            elem, dims = fz.shapes.get(m.ctx_out, (_FLOAT, None))
            model.graph.value_info.append(__import__("onnx").helper.make_tensor_value_info(
                m.ctx_out, elem or _FLOAT, None if dims is None else list(dims)))
    used = set(_subgraph_reads(model.graph))
    keep = [i for i in model.graph.initializer if i.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    if not any(i.domain == MS_DOMAIN for i in model.opset_import):
        model.opset_import.append(__import__("onnx").helper.make_opsetid(MS_DOMAIN, 1))
    kinds = sorted({n.op_type for _, r in plans for b in r.values() for n in b if n.domain == MS_DOMAIN})
    log.info("fused %d attention layer(s) into %s", len(plans), "/".join(kinds))
    return len(plans)


def _apply(original, plans) -> list:
    """Node list with each plan's replacements in place of the nodes they replace (order kept topological)."""
    replace = {k: b for _, r in plans for k, b in r.items()}
    out = []
    for n in original:
        if id(n) in replace:
            out.extend(replace[id(n)])
        else:
            out.append(n)
    return out


_SIZE_TERMS = [(), ("B",), ("S",), ("T",), ("B", "S"), ("B", "T"), ("S", "T"), ("B", "S", "T")]


def _fit_sizes(values: list[int], sizes: list[dict]) -> tuple[int, tuple] | None:
    """``(c, terms)`` with ``value == c * prod(size[t] for t in terms)`` in every run, simplest first."""
    for terms in _SIZE_TERMS:
        cs = set()
        for v, sz in zip(values, sizes, strict=True):
            d = int(np.prod([sz[t] for t in terms])) if terms else 1
            if v % d:
                break
            cs.add(v // d)
        else:
            if len(cs) == 1:
                return cs.pop(), terms
    return None


def _rebuild_shapes(model, fz: _Fuser, m: _Match, nodes, live: set[int], names: _Names) -> dict[int, list] | None:
    """Replacements that stop live nodes outside the layer from reading into it, or None when some read is not
    of a shape: ``Shape`` of a layer tensor, or a small int64 tensor the layer computes from shapes, is rebuilt
    as ``c * B^a * S^b * T^c`` per element (B, S, T read from the projections' shapes), the formula found
    from the check's runs (two sizes when any is dynamic)."""
    from onnx import helper, numpy_helper

    if len(m.runs) < 2 and any(not isinstance(d, int) for d in (*fz.shapes[m.q.t][1][:2], fz.shapes[m.k.t][1][1])):
        return None
    core_ids = {id(n) for n in m.core}
    core_out = {o for n in m.core for o in n.output if o}
    escapes: dict[str, list] = {}  # layer tensor -> live readers outside the layer
    for n in nodes:
        if id(n) in live and id(n) not in core_ids:
            for i in n.input:
                if i in core_out and i != m.ctx_out:
                    escapes.setdefault(i, []).append(n)
    prefix = (m.softmax.name or "attention").rsplit("/", 1)[0]
    new_inits = []
    extra: dict[int, list] = {}
    size_src: dict[str, str] = {}
    head: list = []

    def i64(value) -> str:
        name = names(f"{prefix}/rebuilt_const")
        new_inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
        return name

    def size(term: str) -> str:
        if term not in size_src:
            p, lo = {"B": (m.q, 0), "S": (m.q, 1), "T": (m.k, 1)}[term]
            shp = names(f"{prefix}/{term}_shape")
            size_src[term] = names(f"{prefix}/{term}")
            head.extend([helper.make_node("Shape", [p.t], [shp], name=names(f"{prefix}/{term}Shape")),
                         helper.make_node("Slice", [shp, i64([lo]), i64([lo + 1])], [size_src[term]],
                                          name=names(f"{prefix}/{term}Size"))])
        return size_src[term]

    def vector(values_per_run: list[np.ndarray], out: str, scalar: bool) -> list | None:
        """Nodes computing the int64 vector whose value in each run is given, into ``out``."""
        built, parts = [], []
        sizes = [sz for sz, _ in m.runs]
        for j in range(values_per_run[0].size):
            fit = _fit_sizes([int(v.reshape(-1)[j]) for v in values_per_run], sizes)
            if fit is None:
                return None
            c, terms = fit
            part = i64([c]) if not terms else None
            for t in terms:
                part = size(t) if part is None else _mul(built, part, size(t))
            if terms and c != 1:
                part = _mul(built, part, i64([c]))
            parts.append(part)
        if scalar:
            built.append(helper.make_node("Squeeze", [parts[0]], [out], name=names(f"{prefix}/rebuilt")))
        else:
            built.append(helper.make_node("Concat", parts, [out], axis=0, name=names(f"{prefix}/rebuilt")))
        return built

    def _mul(built, a, b) -> str:
        o = names(f"{prefix}/rebuilt_mul")
        built.append(helper.make_node("Mul", [a, b], [o], name=names(f"{prefix}/rebuilt_mul_node")))
        return o

    for tensor, readers in escapes.items():
        values = [run.get(tensor) for _, run in m.runs]
        if any(v is None for v in values):
            return None
        if values[0].dtype == np.int64 and values[0].ndim <= 1 and all(v.shape == values[0].shape for v in values):
            built = vector(values, tensor, scalar=values[0].ndim == 0)
            producer = fz.ix.producer[tensor]
            if built is None or len([o for o in producer.output if o]) != 1:
                return None
            extra[id(producer)] = built
            continue
        for r in readers:  # a float tensor of the layer: only its shape may be read
            if r.op_type != "Shape" or r.domain not in ("", "ai.onnx"):
                return None
            start, end = _attr(r, "start", 0), _attr(r, "end", None)
            shapes = [np.array(v.shape[start:end], np.int64) for v in values]
            built = vector(shapes, r.output[0], scalar=False)
            if built is None:
                return None
            extra[id(r)] = built
    if not extra:
        return None
    # the size reads go first, in front of the earliest replaced node (the projections come before all)
    first = min(extra, key=lambda k: next(i for i, n in enumerate(nodes) if id(n) == k))
    extra[first] = head + extra[first]
    model.graph.initializer.extend(new_inits)
    return extra
