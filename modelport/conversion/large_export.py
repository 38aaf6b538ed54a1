"""Keras 3 -> ONNX with the weights as data, not graph: bounded memory and no 2 GiB limit.

The classic route (``onnx_export.function_to_onnx``) freezes the model's variables into graph
constants, and every constant then travels through TensorFlow's freezing and grappler, tf2onnx's
graph and its optimizers: 18x the weight bytes and more at peak (FACTS.md, Large models), and a
GraphDef cannot pass protobuf's 2 GiB. Here the model is traced as a pure function of its weights
(Keras 3 ``Model.stateless_call``), so the graph tf2onnx converts holds no weights at all. The
weight inputs of the ONNX graph it returns become initializers written to one external data file
(``model.onnx.data``), one tensor at a time, read from the live Keras variables without a copy: no
second full copy of the weights exists at any point (grappler's fake feeds, which would be one, are
avoided too: see ``_tf2onnx``).

What tf2onnx folds when weights are constants (a kernel transposed or reshaped, BatchNormalization
arithmetic) is folded here too: every node whose inputs are all weights or constants is evaluated
once while the tensors stream, and replaced by its result. The layer-norm fusion and constant reshape
targets (``onnx_fusions``) then run as on the classic route. For the models measured the graph has the
classic route's op types node for node, except Conv + BatchNormalization, which tf2onnx merges into the
kernel and onnxruntime merges the same way at session load (tests/test_large_export.py).

The same tracing fixes two classes of classic-route failures at the root (issue 18): tensors the
graph captures (a ``Normalization`` layer's mean and variance) are bound as constants instead of being
left as graph inputs, and nested functions (the XLA-marked function Keras makes of a grouped
convolution, as in ConvNeXt) are inlined before tf2onnx sees them.

Covered: Keras 3 models (``.keras`` and ``.h5`` files, which the converter loads with Keras 3), traced with
``stateless_call``; recurrent layers' weights stay graph constants there (tf2onnx's LSTM/GRU rewriters
need them so). SavedModel signatures, whose variables are captured resources: after inlining, each
variable read (``ReadVariableOp``, ``ResourceGather``) is rewired to a weight placeholder
(``_variables_to_placeholders``); a signature that uses a variable any other way (a loop carrying it)
fails there, and a small one falls back to the classic route. Not covered: in-memory tf-keras objects
(the optimizer's TFMOT models, small), which keep the classic route.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.conversion.onnx_attention import fuse_attention
from modelport.conversion.onnx_export import (
    CUSTOM_OP_HANDLERS,
    _call_structure,
    _clean_name,
    _unique,
    input_signature,
    keras_output_names,
    name_batch_dims,
)
from modelport.conversion.onnx_fusions import _used_names, fuse_layer_norms, static_reshapes
from modelport.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("modelport.conversion.large")


class Unsupported(FailedPrecondition):
    """The model uses something the weights-as-inputs route cannot bind (the classic route may)."""

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
# Weights up to this size are held in the graph while it is rewritten (gamma/beta of a norm, biases):
# the fusions read their values. Larger ones stay on the Keras side until they are streamed out.
INLINE_BYTES = 256 << 10
INLINE_BUDGET = 64 << 20  # at most this much of the weights inline at once
EXTERNAL_MIN_BYTES = 1024  # tensors from this size go to the data file (onnx's own default threshold)
ALIGN_FROM = 1 << 20  # tensors from this size start on a 64 KiB boundary, so onnxruntime can map them
ALIGNMENT = 64 << 10
SYNC_EVERY = 256 << 20  # fsync and drop written pages from the cache every so many bytes
_PENDING = "__modelport_pending__"
_WEIGHT_PREFIX = "modelport_weight_"


# ---- tracing --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightInput:
    """One weight the traced function takes as an argument."""

    arg_name: str  # the signature name tf2onnx sees
    name: str  # the initializer name in the ONNX graph (the variable's path)
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class WeightsTrace:
    """A ``tf.function`` of ``(*model_inputs, *weights)`` returning ``{output_name: tensor}``."""

    fn: Any
    signature: list
    n_inputs: int
    weights: list[WeightInput]
    output_names: list[str]
    # A SavedModel signature reads its variables as captured resources: they become weight inputs by graph
    # surgery (``_variables_to_placeholders``), and join ``weights`` then.
    variables: list | None = None

    @property
    def weight_bytes(self) -> int:
        return sum(w.nbytes for w in self.weights)


def supports_weights_as_inputs(model: Any) -> bool:
    """True for a built Keras 3 model (it has ``stateless_call``); tf-keras models do not."""
    return callable(getattr(model, "stateless_call", None)) and bool(getattr(model, "built", False)) \
        and hasattr(model, "trainable_variables")


def _has_training_arg(model: Any) -> bool:
    flag = getattr(model, "_call_has_training_arg", None)
    if flag is not None:
        return bool(flag)
    import inspect

    try:
        return "training" in inspect.signature(model.call).parameters
    except (TypeError, ValueError):
        return False


def _variable_array(v: Any) -> np.ndarray:
    """A Keras variable's value as numpy without a copy (a view of TensorFlow's buffer; v.numpy() copies)."""
    value = v.value
    if hasattr(value, "read_value"):
        value = value.read_value()
    return np.asarray(value)


def _frozen_variable_ids(model: Any) -> set[int]:
    """Variables that stay graph constants: those of recurrent layers, whose tf2onnx rewriters (LSTM,
    GRU, RNN loops) only match constant weights. They are frozen the classic way; recurrent weights are
    a small share of the models this route is for."""
    try:
        layers = list(model._flatten_layers(include_self=False, recursive=True))
    except Exception:  # noqa: BLE001 - older API: no sublayers known, nothing frozen
        return set()
    ids: set[int] = set()
    for layer in layers:
        if any(c.__name__ == "RNN" for c in type(layer).__mro__):
            ids.update(id(v) for v in layer.weights)
    return ids


def keras_weights_trace(model: Any, fixed_batch_size: int = 0) -> WeightsTrace:
    """Trace a Keras 3 model as a function of its inputs and all its variables.

    Input names and output names are those of ``onnx_export.keras_tf_function`` (the classic route),
    so both routes give the same ONNX interface.
    """
    import tensorflow as tf

    if not supports_weights_as_inputs(model):
        raise InvalidArgument(f"the {type(model).__name__} model is not a built Keras 3 model; weights-as-inputs "
                              "export needs Model.stateless_call")
    infos, signature = input_signature(model, fixed_batch_size)

    trainable = list(model.trainable_variables)
    non_trainable = list(model.non_trainable_variables)
    variables = trainable + non_trainable
    frozen = _frozen_variable_ids(model)
    taken = {i.name for i in infos}
    names = _unique([_clean_name(getattr(v, "path", "") or v.name, f"weight_{k}") for k, v in enumerate(variables)])
    weights = []
    slots: list[int | None] = []  # per variable: its position among the weight arguments, None = frozen
    for k, (v, name) in enumerate(zip(variables, names, strict=True)):
        if id(v) in frozen:
            slots.append(None)
            continue
        arg = f"{_WEIGHT_PREFIX}{k}"
        while arg in taken:
            arg += "_"
        taken.add(arg)
        dtype = np.dtype(tf.as_dtype(v.dtype).as_numpy_dtype)
        slots.append(len(weights))
        weights.append(WeightInput(arg, name, tuple(int(d) for d in v.shape), dtype, (lambda v=v: _variable_array(v))))
        signature.append(tf.TensorSpec(tuple(int(d) for d in v.shape), tf.as_dtype(v.dtype), name=arg))

    frozen_values = {k: np.array(_variable_array(v)) for k, (v, slot) in enumerate(zip(variables, slots, strict=True))
                     if slot is None}
    n_in, n_tr = len(infos), len(trainable)
    kwargs = {"training": False} if _has_training_arg(model) else {}
    out_names: list[str] = []

    def call(*args):
        xs, ws = list(args[:n_in]), list(args[n_in:])
        # A frozen variable becomes a Const node of the traced graph, as the classic route would make it.
        values = [tf.constant(frozen_values[k]) if slot is None else ws[slot] for k, slot in enumerate(slots)]
        y, _ = model.stateless_call(values[:n_tr], values[n_tr:], _call_structure(model, xs, infos), **kwargs)
        if isinstance(y, dict):
            names_ = [_clean_name(k, f"output_{i}") for i, k in enumerate(y.keys())]
            flat = list(y.values())
        else:
            flat = tf.nest.flatten(y)
            names_ = keras_output_names(model, len(flat))
        out_names[:] = names_
        return {name: tf.identity(t, name=name) for name, t in zip(names_, flat, strict=True)}

    fn = tf.function(call, input_signature=signature)
    fn.get_concrete_function()  # trace once now: output names are known from here on
    return WeightsTrace(fn, signature, n_in, weights, list(out_names))


def savedmodel_weights_trace(fn: Any, signature: list, output_names: list[str], variables: list) -> WeightsTrace:
    """The trace of a SavedModel signature (``fn``, its input ``signature``): its variables are captured
    and become weight inputs at conversion (see ``_variables_to_placeholders``)."""
    return WeightsTrace(fn, list(signature), len(signature), [], list(output_names), variables=list(variables))


# ---- the ONNX side ----------------------------------------------------------------------------

class DataFileWriter:
    """Appends tensors to one external data file; fsyncs (and drops written pages) as it goes."""

    def __init__(self, folder: Path, location: str = DATA_FILE):
        self.location = location
        self.path = folder / location
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self.offset = 0
        self._unsynced = 0
        self.tensors = 0

    def write(self, tensor, array: np.ndarray) -> None:
        """Write ``array``'s bytes for ``tensor`` (a TensorProto, made external in place)."""
        from onnx import TensorProto

        array = _contiguous(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        n = array.nbytes
        if n >= ALIGN_FROM and self.offset % ALIGNMENT:
            pad = ALIGNMENT - self.offset % ALIGNMENT
            self._f.write(b"\0" * pad)
            self.offset += pad
        if n:
            self._f.write(memoryview(array.reshape(-1)).cast("B"))
        tensor.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            tensor.ClearField(field)
        del tensor.external_data[:]
        for key, value in (("location", self.location), ("offset", str(self.offset)), ("length", str(n))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = TensorProto.EXTERNAL
        self.offset += n
        self.tensors += 1
        self._unsynced += n
        if self._unsynced >= SYNC_EVERY:
            self.sync()

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        if hasattr(os, "posix_fadvise"):  # written pages need not stay in the page cache (cgroup memory)
            os.posix_fadvise(self._f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        self._unsynced = 0

    def close(self) -> None:
        if not self._f.closed:
            self.sync()
            self._f.close()


def _contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` in C order, keeping its rank (np.ascontiguousarray turns a scalar into shape (1,))."""
    array = np.asarray(array)
    return array if array.flags.c_contiguous else array.copy(order="C")


def _np_dtype_to_onnx(dtype: np.dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _is_pending(tensor) -> bool:
    from onnx import TensorProto

    return tensor.data_location == TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == _PENDING for e in tensor.external_data)


def _stub(name: str, shape, dtype: np.dtype):
    """An initializer with dims and type but no data yet (its value comes from the weight source)."""
    from onnx import TensorProto

    t = TensorProto(name=name, dims=list(shape), data_type=_np_dtype_to_onnx(dtype))
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", _PENDING
    return t


def _tensor(name: str, array: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(_contiguous(array), name)


# Ops evaluated on weights when all their inputs are weights or constants. Ops that can produce far
# more data than they read (Expand, Tile, ConstantOfShape, Range) stay in the graph, as do random ops.
_FOLDABLE = {
    "Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Concat", "Slice", "Gather",
    "Split", "Shape", "Size", "Add", "Sub", "Mul", "Div", "Neg", "Sqrt", "Reciprocal", "Exp", "Log", "Pow",
    "Abs", "Relu", "Sigmoid", "Tanh", "Clip", "Min", "Max", "ReduceMean", "ReduceSum", "ReduceProd", "ReduceMax",
    "ReduceMin", "MatMul", "Equal", "Less", "Greater", "Not", "And", "Or", "Where", "Constant", "Erf", "Floor",
    "Ceil", "Round", "Sign", "Softplus", "Einsum", "Gemm", "DequantizeLinear",
}


def _eval_node(node, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
    """Outputs of one ONNX node on numpy inputs (numpy for the layout ops, onnx.reference otherwise)."""
    from onnx import helper

    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x = inputs[0] if inputs else None
    if op == "Identity":
        return [x]
    if op == "Transpose":
        perm = attrs.get("perm") or list(range(x.ndim))[::-1]
        return [_contiguous(np.transpose(x, perm))]
    if op == "Reshape" and not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else int(d) for i, d in enumerate(inputs[1].tolist())]
        return [x.reshape(shape)]
    if op in ("Add", "Sub", "Mul") and x.dtype == inputs[1].dtype:
        f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op]
        return [f(x, inputs[1])]
    from onnx.reference import ReferenceEvaluator

    feeds = {name: value for name, value in zip(node.input, inputs, strict=True) if name}
    clean = helper.make_node(op, [n if n else "" for n in node.input], list(node.output), domain=node.domain or None,
                             **attrs)
    return list(ReferenceEvaluator(clean).run(None, feeds))


class _Values:
    """Values of the graph's constants while folding: inline initializers, pending weights (read from
    their source on demand), and folded results kept until their last folded consumer ran."""

    def __init__(self, inits: dict, sources: dict[str, Callable[[], np.ndarray]]):
        self.inits = inits
        self.sources = sources
        self.cache: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        if name in self.cache:
            return self.cache[name]
        t = self.inits[name]
        if _is_pending(t):
            return self.sources[name]()
        return numpy_helper.to_array(t)


def fold_weight_subgraph(model, sources: dict[str, Callable[[], np.ndarray]], writer: DataFileWriter | None) -> int:
    """Evaluate every node that reads only initializers/constants, replace it by its results (large
    ones streamed to ``writer``; all inline without one), drop what is left unused. Returns how many
    nodes were folded."""
    from onnx import TensorProto

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    const = set(inits)
    folded = []
    for node in g.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _FOLDABLE:
            continue
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            continue
        if all((not i) or i in const for i in node.input):
            folded.append(node)
            const.update(o for o in node.output if o)
    if not folded:
        return 0
    folded_ids = {id(n) for n in folded}
    # How often each constant is still needed by a folded node, and which results the graph keeps.
    refs: dict[str, int] = {}
    for node in folded:
        for i in node.input:
            if i:
                refs[i] = refs.get(i, 0) + 1
    kept = {o.name for o in g.output}
    for node in g.node:
        if id(node) not in folded_ids:
            kept.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs may read outer constants
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    kept.update(_used_names(sub, set()))
    values = _Values(inits, sources)
    new_inits = []
    inline_bytes = 0
    for node in folded:
        args = [values.get(i) if i else None for i in node.input]
        try:
            outs = _eval_node(node, args)
        except Exception as e:  # noqa: BLE001 - name the node; the classic route may still work
            raise FailedPrecondition(
                f"could not fold the weight-only node {node.name or node.op_type} ({node.op_type}) while exporting "
                f"with external weights: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None
        del args
        for name, value in zip(node.output, outs, strict=False):
            if not name:
                continue
            value = np.asarray(value)
            if name in kept:
                small = value.nbytes < INLINE_BYTES or value.dtype == object or writer is None
                t = _tensor(name, value) if small else None
                if t is None:
                    t = TensorProto(name=name, dims=list(value.shape), data_type=_np_dtype_to_onnx(value.dtype))
                    writer.write(t, value)
                else:
                    inline_bytes += value.nbytes
                new_inits.append(t)
            if refs.get(name):
                values.cache[name] = value
        for i in node.input:
            if i and i in refs:
                refs[i] -= 1
                if refs[i] == 0:
                    values.cache.pop(i, None)
    keep_nodes = [n for n in g.node if id(n) not in folded_ids]
    del g.node[:]
    g.node.extend(keep_nodes)
    g.initializer.extend(new_inits)
    used = set(kept)
    survivors = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(survivors)
    log.info("folded %d weight-only node(s) into constants", len(folded))
    return len(folded)


def _rename(graph, mapping: dict[str, str]) -> None:
    if not mapping:
        return
    for node in graph.node:
        for i, n in enumerate(node.input):
            if n in mapping:
                node.input[i] = mapping[n]
    for vi in graph.output:
        if vi.name in mapping:
            vi.name = mapping[vi.name]


def _bind_weights(model, weights: list[WeightInput], captured: dict[str, Callable[[], np.ndarray]],
                  captured_meta: dict[str, tuple]) -> dict[str, Callable[[], np.ndarray]]:
    """Turn the weight (and captured-constant) graph inputs into initializers: small ones inline, the
    rest pending stubs. Returns initializer name -> value source for the pending ones."""
    g = model.graph
    by_arg = {w.arg_name: w for w in weights}
    mapping: dict[str, str] = {}
    sources: dict[str, Callable[[], np.ndarray]] = {}
    new_inits = []
    keep_inputs = []
    inline_total = 0
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for vi in g.input:
        arg = vi.name.split(":")[0]
        if arg in by_arg:
            w = by_arg[arg]
            name, shape, dtype, read = w.name, w.shape, w.dtype, w.read
        elif vi.name in captured or arg in captured:
            key = vi.name if vi.name in captured else arg
            name = _clean_name(arg, "captured")
            shape, dtype = captured_meta[key]
            read = captured[key]
        else:
            keep_inputs.append(vi)
            continue
        if vi.name not in used:
            continue  # a variable the inference graph never reads (optimizer step, RNG seed)
        mapping[vi.name] = name
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if nbytes <= INLINE_BYTES and inline_total + nbytes <= INLINE_BUDGET:
            new_inits.append(_tensor(name, np.asarray(read()).reshape(shape)))
            inline_total += nbytes
        else:
            new_inits.append(_stub(name, shape, dtype))
            sources[name] = read
    del g.input[:]
    g.input.extend(keep_inputs)
    _rename(g, mapping)
    g.initializer.extend(new_inits)
    return sources


def _finalize(model, sources: dict[str, Callable[[], np.ndarray]], writer: DataFileWriter | None) -> None:
    """Write every pending weight (and every inline tensor from 1 KiB) to the data file, or inline
    all of them when ``writer`` is None (a single-file model)."""
    from onnx import numpy_helper

    for i, t in enumerate(model.graph.initializer):
        if _is_pending(t):
            value = np.asarray(sources[t.name]()).reshape(tuple(t.dims))
            if writer is None:
                model.graph.initializer[i].CopyFrom(_tensor(t.name, value))
            else:
                writer.write(t, value)
            del value
        elif writer is not None and t.data_location != t.EXTERNAL and t.data_type != t.STRING:
            value = numpy_helper.to_array(t)
            # Small integer tensors are shapes and axes: onnxruntime's shape inference reads them inline only.
            shape_like = value.dtype.kind in "iu" and value.nbytes < 1024
            if value.nbytes >= EXTERNAL_MIN_BYTES and not shape_like:
                writer.write(t, value)


def _tf2onnx(trace: WeightsTrace, opset: int):
    """tf2onnx's ``from_function`` on the traced graph, minus what costs memory per weight byte.

    ``from_function`` freezes (nothing to freeze here: no variable is captured), inlines functions and runs
    grappler; grappler gives every Placeholder of fully known shape a fake feed tensor of that shape, filled
    in memory: one full copy of the weights. The weight placeholders are shown to grappler without a shape
    and get their shapes back before tf2onnx converts the graph.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
    from tensorflow.python.framework import convert_to_constants
    from tensorflow.python.grappler import tf_optimizer
    from tensorflow.python.training.saver import export_meta_graph
    from tf2onnx import tf_loader
    from tf2onnx.convert import _convert_common, tensor_names_from_structed

    cf = trace.fn.get_concrete_function()
    captures = list(zip(cf.inputs[len(trace.signature):], cf.captured_inputs, strict=True))
    resources = {ph.name.split(":")[0]: handle for ph, handle in captures if handle.dtype == tf.resource}
    if resources and trace.variables is None:
        raise Unsupported(
            f"the traced model reads {len(resources)} variable(s) that are not among its weights (a layer keeps "
            "state outside Keras' variable tracking); the weights-as-inputs export cannot bind them")
    input_names = [t.name for t in cf.inputs]
    output_names = [t.name for t in cf.outputs]
    hidden = {t.name.split(":")[0] for t in cf.inputs[trace.n_inputs:]}  # weights and captured constants

    graph_def = convert_to_constants.disable_lower_using_switch_merge(cf.graph.as_graph_def())
    _allow_inlining(graph_def)
    shapes = _hide_shapes(graph_def, hidden)
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.min_graph_nodes = -1
    rewrite.optimizers.append("function")
    rewrite.function_optimization = rewriter_config_pb2.RewriterConfig.AGGRESSIVE
    with tf.Graph().as_default():  # meta graphs exist in graph mode only
        meta = export_meta_graph(graph_def=graph_def)
        fetch = meta_graph_pb2.CollectionDef()
        fetch.node_list.value.extend(input_names + output_names)
        meta.collection_def["train_op"].CopyFrom(fetch)
        graph_def = tf_optimizer.OptimizeGraph(config, meta)
        graph_def = tf_loader.fix_freezing_errors_part2(graph_def)
        if resources:
            added = _variables_to_placeholders(graph_def, resources, trace)
            input_names = [n for n in input_names if n.split(":")[0] not in resources] + \
                [f"{w.arg_name}:0" for w in added]
            shapes.update(_hide_shapes(graph_def, {w.arg_name for w in added}))
        graph_def = tf_loader.tf_optimize(input_names, output_names, graph_def)
    for node in graph_def.node:
        if node.name in shapes:
            node.attr["shape"].shape.CopyFrom(shapes[node.name].as_proto())
    with tf.device("/cpu:0"):
        kwargs = dict(continue_on_error=True, opset=opset, input_names=input_names, output_names=output_names,
                      tensors_to_rename=tensor_names_from_structed(cf, input_names, output_names))
        try:
            model = _convert_uncopied(graph_def, cf.name, **kwargs)
        except Exception as e:  # noqa: BLE001 - an optimizer failed mid-way: redo it tf2onnx's guarded way
            log.info("tf2onnx optimizers without copies failed (%s); converting again with copies", e)
            model, _ = _convert_common(graph_def, name=cf.name, custom_op_handlers=dict(CUSTOM_OP_HANDLERS),
                                       **kwargs)
    return model


def _convert_uncopied(graph_def, name: str, **kwargs):
    """tf2onnx's ``_convert_common`` without its safety copies: it deep-copies the whole graph before each
    of its ~24 optimizer passes, to restore it should a pass fail. That copying was 37% of this route's
    conversion time on DenseNet-121 (the weight-input graph keeps BatchNormalization's arithmetic until it
    is folded here, so tf2onnx's graph has more nodes than on the classic route). A pass that fails here
    raises, and the caller converts again the guarded way."""
    import tensorflow as tf
    from tf2onnx import optimizer
    from tf2onnx.tfonnx import process_tf_graph

    with tf.Graph().as_default() as tf_graph:
        tf.import_graph_def(graph_def, name="")
        g = process_tf_graph(tf_graph, custom_op_handlers=dict(CUSTOM_OP_HANDLERS), **kwargs)
        g = optimizer.optimize_graph(g, catch_errors=False)
        return g.make_model(f"converted from {name}")


def _hide_shapes(graph_def, names: set[str]) -> dict:
    """Give the named Placeholders an unknown shape (grappler then makes no fake feed for them); returns
    their real shapes, to be put back before tf2onnx converts the graph."""
    import tensorflow as tf

    shapes = {}
    for node in graph_def.node:
        if node.op == "Placeholder" and node.name in names:
            shapes[node.name] = tf.TensorShape(node.attr["shape"].shape)
            node.attr["shape"].shape.CopyFrom(tf.TensorShape(None).as_proto())
            node.attr.pop("_output_shapes", None)
    return shapes


def _variables_to_placeholders(graph_def, resources: dict, trace: WeightsTrace) -> list[WeightInput]:
    """Turn the variables an (inlined) graph reads into weight placeholders, in place.

    Each captured variable handle (a resource Placeholder) gets one value Placeholder; its ``ReadVariableOp``
    readers become Identities of it and its ``ResourceGather`` readers (embedding lookups) become GatherV2.
    Any other use (a loop carrying the variable, an assignment) is refused: the classic route freezes those.
    """
    import tensorflow as tf

    by_handle = {id(v.handle): v for v in trace.variables}
    taken = {n.name for n in graph_def.node}
    names = {}
    added: list[WeightInput] = []
    used_names: set[str] = {w.name for w in trace.weights}
    for ph, handle in resources.items():
        var = by_handle.get(id(handle))
        if var is None:
            raise Unsupported(
                "the SavedModel signature reads a resource that is not one of its variables (a lookup table or "
                "other state); the weights-as-inputs export cannot bind it")
        arg = f"{ph}_value"
        while arg in taken:
            arg += "_"
        taken.add(arg)
        names[ph] = arg
        dtype = tf.as_dtype(var.dtype)
        shape = tuple(int(d) for d in var.shape)
        node = graph_def.node.add(name=arg, op="Placeholder")
        node.attr["dtype"].type = dtype.as_datatype_enum
        node.attr["shape"].shape.CopyFrom(tf.TensorShape(shape).as_proto())
        name = _clean_name(var.name.split(":")[0], "weight")
        while name in used_names:
            name += "_"
        used_names.add(name)
        added.append(WeightInput(arg, name, shape, np.dtype(dtype.as_numpy_dtype),
                                 (lambda var=var: np.asarray(var.read_value()))))
    # Inlined function calls pass a handle on through Identity nodes: each is an alias of its variable.
    alias = {ph: ph for ph in resources}
    changed = True
    while changed:
        changed = False
        for node in graph_def.node:
            if node.op == "Identity" and node.name not in alias and node.input \
                    and node.input[0].split(":")[0] in alias:
                alias[node.name] = alias[node.input[0].split(":")[0]]
                changed = True
    axis = None
    keep = []
    for node in list(graph_def.node):
        if node.name in alias:  # the handles and their aliases go; their readers read the placeholders
            continue
        data_inputs = [i for i in node.input if not i.startswith("^")]
        controls = [i for i in node.input if i.startswith("^") and i[1:] not in alias]
        handles = [alias[i.split(":")[0]] for i in data_inputs if i.split(":")[0] in alias]
        if not handles:
            if len(controls) != len(node.input) - len(data_inputs):
                del node.input[:]
                node.input.extend(data_inputs + controls)
            keep.append(node)
            continue
        if node.op == "ReadVariableOp":
            dtype = node.attr["dtype"].type
            node.op = "Identity"
            node.attr.clear()
            node.attr["T"].type = dtype
            del node.input[:]
            node.input.extend([names[handles[0]], *controls])
        elif node.op == "ResourceGather" and node.attr["batch_dims"].i == 0 \
                and data_inputs[0].split(":")[0] in alias:
            if axis is None:
                axis = type(node)(name=_fresh("modelport_gather_axis", taken), op="Const")
                axis.attr["dtype"].type = tf.int32.as_datatype_enum
                axis.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(0, tf.int32))
                keep.append(axis)
            params, indices = names[handles[0]], data_inputs[1]
            dtype, tindices = node.attr["dtype"].type, node.attr["Tindices"].type
            node.op = "GatherV2"
            node.attr.clear()
            node.attr["Tparams"].type, node.attr["Tindices"].type = dtype, tindices
            node.attr["Taxis"].type = tf.int32.as_datatype_enum
            node.attr["batch_dims"].i = 0
            del node.input[:]
            node.input.extend([params, indices, axis.name, *controls])
        else:
            raise Unsupported(
                f"the SavedModel signature uses a variable in a {node.op} node ({node.name}); the weights-as-inputs "
                "export handles variable reads and embedding lookups only")
        keep.append(node)
    del graph_def.node[:]
    graph_def.node.extend(keep)
    trace.weights.extend(added)
    return added


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


# Attributes that keep grappler from inlining a function call: an alternative implementation
# ("api_implements", removed by convert_variables_to_constants_v2 too) and the XLA markers Keras puts on
# the nested function of a grouped convolution (ConvNeXt's depthwise 7x7), which tf2onnx then cannot
# convert ("No Op registered for PartitionedCall").
_NO_INLINE_ATTRS = ("api_implements", "_noinline", "_XlaMustCompile", "_XlaCompile")


def _allow_inlining(graph_def) -> None:
    """Strip what stops grappler's function inliner, on every call and every library function."""
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        for key in _NO_INLINE_ATTRS:
            function.attr.pop(key, None)
        nodes.extend(function.node_def)
    for node in nodes:
        if node.op in ("PartitionedCall", "StatefulPartitionedCall"):
            for key in _NO_INLINE_ATTRS:
                node.attr.pop(key, None)


def _captured_constants(trace: WeightsTrace):
    """Non-variable tensors the traced graph captured (e.g. a Normalization layer's mean): tf2onnx
    would leave them as graph inputs; they are constants of the model, bound like weights."""
    import tensorflow as tf

    cf = trace.fn.get_concrete_function()
    placeholders = cf.inputs[len(trace.signature):]
    values: dict[str, Callable[[], np.ndarray]] = {}
    meta: dict[str, tuple] = {}
    resources = 0
    for ph, value in zip(placeholders, cf.captured_inputs, strict=False):
        if ph.dtype == tf.resource:
            resources += 1
            continue
        name = ph.name
        shape = tuple(int(d) for d in value.shape)
        values[name] = values[name.split(":")[0]] = (lambda value=value: np.asarray(value.numpy()))
        meta[name] = meta[name.split(":")[0]] = (shape, np.dtype(value.dtype.as_numpy_dtype))
    if resources:
        log.info("%d captured variable(s) outside the model's weights are frozen into the graph", resources)
    return values, meta


def export_weights_as_inputs(trace: WeightsTrace, out_dir: str | os.PathLike, opset: int = 17,
                             external: bool = True) -> Path:
    """Convert a traced model to ONNX in ``out_dir``; returns the path of ``model.onnx``.

    With ``external`` every tensor from 1 KiB goes to ``model.onnx.data`` beside it (streamed, one
    tensor at a time); without, one self-contained file (for models well under 2 GiB).
    """
    if not 13 <= int(opset) <= 18:
        raise InvalidArgument(f"ONNX opset {opset} is not supported: choose 13..18 (default 17)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    captured, captured_meta = _captured_constants(trace)
    model = _tf2onnx(trace, int(opset))
    sources = _bind_weights(model, trace.weights, captured, captured_meta)
    name_batch_dims(model)
    writer = DataFileWriter(out_dir) if external else None
    try:
        fold_weight_subgraph(model, sources, writer)
        fuse_layer_norms(model)
        static_reshapes(model)
        fuse_attention(model)  # the same rewrites as the classic route (onnx_export.function_to_onnx)
        _finalize(model, sources, writer)
    finally:
        if writer is not None:
            writer.close()
    if writer is not None and writer.tensors == 0:
        (out_dir / DATA_FILE).unlink(missing_ok=True)
    path = out_dir / MODEL_FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def keras_to_onnx_external(model: Any, out_dir: str | os.PathLike, opset: int = 17, fixed_batch_size: int = 0,
                           external: bool = True) -> Path:
    """An in-memory Keras 3 model to ``out_dir/model.onnx`` (+ ``model.onnx.data``); see module doc."""
    return export_weights_as_inputs(keras_weights_trace(model, fixed_batch_size), out_dir, opset, external)


# ---- route choice ---------------------------------------------------------------------------------

ROUTE_ENV = "MODELPORT_ONNX_EXPORT"
"""``auto`` (default): weights as inputs for Keras 3 models, the classic route otherwise;
``weights``: weights as inputs or fail; ``classic``: tf2onnx with frozen weights always."""
EXTERNAL_DATA_ENV = "MODELPORT_ONNX_EXTERNAL_DATA_BYTES"
"""Weight bytes from which the ONNX result is a folder (model.onnx + model.onnx.data) rather than one
file. Default 256 MiB: a single file is held whole in memory once more to be written, and cannot pass 2 GiB."""
DEFAULT_EXTERNAL_DATA_BYTES = 256 << 20
CLASSIC_FALLBACK_MAX_BYTES = 128 << 20  # the classic route needs ~18x the weights: a fallback only below this
PROTOBUF_LIMIT = 2 << 30

ROUTE_WEIGHTS = "weights"
ROUTE_CLASSIC = "classic"


@dataclass(frozen=True)
class ExportPlan:
    """How a TensorFlow-backed model goes to ONNX: the route, and one file or a folder."""

    route: str
    external: bool
    forced: bool
    weight_bytes: int


def external_data_threshold() -> int:
    raw = os.environ.get(EXTERNAL_DATA_ENV, "").strip()
    try:
        return int(float(raw)) if raw else DEFAULT_EXTERNAL_DATA_BYTES
    except ValueError:
        raise InvalidArgument(f"{EXTERNAL_DATA_ENV}={raw!r} is not a number of bytes") from None


KIND_KERAS3 = "Keras 3 model"
KIND_SAVEDMODEL = "SavedModel signature"


def source_kind(src: Any) -> str:
    """What a loaded TensorFlow-backed source is, for ``plan_export``: a Keras 3 model, a SavedModel
    signature, or the class name of anything else (a tf-keras model)."""
    model = getattr(src, "model", None)
    if model is not None and supports_weights_as_inputs(model):
        return KIND_KERAS3
    if getattr(src, "format", "") == "savedmodel" and getattr(src, "sig", None) is not None:
        return KIND_SAVEDMODEL
    return type(model if model is not None else src).__name__


def plan_export(kind: str, weight_bytes: int) -> ExportPlan:
    """The route for a source of ``kind`` (``source_kind``) with ``weight_bytes`` of weights."""
    choice = os.environ.get(ROUTE_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", ROUTE_WEIGHTS, ROUTE_CLASSIC):
        raise InvalidArgument(f"{ROUTE_ENV}={choice!r}: choose auto, weights or classic")
    external = weight_bytes >= external_data_threshold()
    able = kind in (KIND_KERAS3, KIND_SAVEDMODEL)
    if choice == ROUTE_CLASSIC or (choice == "auto" and not able):
        if weight_bytes >= PROTOBUF_LIMIT:
            raise FailedPrecondition(
                f"the model has {weight_bytes / 1e9:.2f} GB of weights; the classic tf2onnx route cannot pass "
                "protobuf's 2 GiB limit; Keras 3 models (.keras, .h5) and SavedModels take the external-weights "
                f"route ({ROUTE_ENV}=auto)")
        return ExportPlan(ROUTE_CLASSIC, False, choice == ROUTE_CLASSIC, weight_bytes)
    if not able:
        raise FailedPrecondition(
            f"{ROUTE_ENV}=weights needs a Keras 3 model (.keras or .h5) or a SavedModel; this source is a {kind}")
    return ExportPlan(ROUTE_WEIGHTS, external, choice == ROUTE_WEIGHTS, weight_bytes)
