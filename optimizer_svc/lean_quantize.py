"""onnxruntime's dynamic quantizer without its whole-model copy: int8-dynamic at ~1.5x the weights, not ~3x.

``quantize_dynamic`` (onnxruntime 1.32) loads the model with its weights, then ``ONNXQuantizer.__init__``
refreshes the graph's value_info after rewriting Gemm into MatMul by
``save_and_reload_model_with_shape_infer``: a ``copy.deepcopy`` of the whole model, written to a temporary
folder with its external data and loaded back, while the original is still alive. On a model of 2.15 GB of
weights that step alone takes the quantizer from 2.2 to 6.6 GB (measured: ``BENCHMARKS.md``, Large models).

``refreshed_value_info(model)`` does what that step is for without the weights: ONNX shape inference runs
on a skeleton of the model whose large initializers keep only their name, type and dims (shapes are all
shape inference reads from them; small tensors, e.g. Reshape targets, are kept whole so constant shapes
still propagate), and the inferred value_info and output types are written into ``model`` itself, which
is returned. ``lean_value_info_refresh()`` swaps it in for the duration of one quantization.

The int8 model is the same either way (``tests/test_optimizer_int8.py`` compares them byte for byte).
No grpc, no TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger("modelport.optimizer.quantize")

KEEP_WHOLE_BYTES = 1 << 20
"""Initializers up to this size stay whole in the skeleton (shape-carrying constants are far smaller)."""


def _nbytes(t) -> int:
    import onnx

    n = 1
    for d in t.dims:
        n *= int(d)
    try:
        size = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        size = 1
    return n * size


def skeleton(model):
    """A copy of ``model`` for shape inference: every field but the large initializers' data."""
    import onnx

    g = model.graph
    sk = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                         producer_version=model.producer_version, domain=model.domain,
                         model_version=model.model_version)
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    sg = sk.graph
    sg.name = g.name
    sg.node.extend(g.node)
    sg.input.extend(g.input)
    sg.output.extend(g.output)
    sg.value_info.extend(g.value_info)
    sg.sparse_initializer.extend(g.sparse_initializer)
    for t in g.initializer:
        if _nbytes(t) <= KEEP_WHOLE_BYTES:
            sg.initializer.append(t)
        else:
            sg.initializer.add(name=t.name, data_type=t.data_type, dims=list(t.dims))
    return sk


def refreshed_value_info(model):
    """``model`` with value_info and output types from ONNX shape inference; the weights are not copied."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    inferred = onnx.shape_inference.infer_shapes(skeleton(model)).graph
    g = model.graph
    del g.value_info[:]
    g.value_info.extend(inferred.value_info)
    for out, new in zip(g.output, inferred.output, strict=True):
        out.CopyFrom(new)
    add_infer_metadata(model)
    return model


@contextlib.contextmanager
def lean_value_info_refresh() -> Iterator[bool]:
    """Within the block, onnxruntime's quantizer refreshes value_info in place (``refreshed_value_info``)
    instead of through a deep copy of the model. Yields False (and changes nothing) on an onnxruntime
    whose quantizer has no such step."""
    from onnxruntime.quantization import onnx_quantizer

    name = "save_and_reload_model_with_shape_infer"
    original = getattr(onnx_quantizer, name, None)
    if original is None:
        log.info("onnxruntime's quantizer has no %s: quantizing with its own steps", name)
        yield False
        return
    setattr(onnx_quantizer, name, refreshed_value_info)
    try:
        yield True
    finally:
        setattr(onnx_quantizer, name, original)
