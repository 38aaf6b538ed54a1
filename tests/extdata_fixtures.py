"""ONNX models whose weights live in external data, built with onnx.helper and written tensor by tensor
(never a whole weight in memory): an embedding table (Gather) feeding a dense layer (MatMul + Add + Relu).

``embedding_model(folder, vocab, dim, out_dim)`` writes ``folder/model.onnx`` + ``folder/model.onnx.data``;
``embedding_rows`` regenerates any rows of the table, so a test computes the reference output
(``embedding_reference``) without reading the data file back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

DATA = "model.onnx.data"
_ALIGN = 4096


_PERIOD = 4093  # rows repeat a random block of this many rows, each lap shifted by 1e-3


def _block(dim: int) -> np.ndarray:
    return (np.random.default_rng(dim).standard_normal((_PERIOD, dim)) * 0.5).astype(np.float32)


def embedding_rows(start: int, stop: int, dim: int, block: np.ndarray | None = None) -> np.ndarray:
    """Rows ``start:stop`` of the embedding table: a seeded random block, shifted by 1e-3 per repetition
    (cheap to regenerate: a multi-GB table is written in seconds)."""
    block = _block(dim) if block is None else block
    i = np.arange(start, stop)
    rows = block[i % _PERIOD]
    rows += ((i // _PERIOD) * 1e-3).astype(np.float32)[:, None]
    return rows


def dense_weights(dim: int, out_dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((dim, out_dim)) / np.sqrt(dim)).astype(np.float32)
    b = (rng.standard_normal(out_dim) * 0.1).astype(np.float32)
    return w, b


def _external(name: str, dims: list[int], dtype: int, offset: int, length: int, location: str) -> TensorProto:
    t = TensorProto(name=name, data_type=dtype, dims=dims)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def embedding_model(folder: Path, vocab: int, dim: int, out_dim: int, *, tables: int = 1,
                    model_name: str = "model.onnx", data_name: str = DATA, chunk_bytes: int = 64 << 20) -> Path:
    """ids INT64 [N, T] -> y FP32 [N, T, out_dim] = relu(sum_k E_k[ids] @ W + b), E_k and W in ``data_name``.

    ``tables`` > 1 splits the weights over several embedding tables of ``vocab`` rows (table k is table 0's
    rows shifted by k): a model of many moderate tensors, as transformers are, rather than one giant one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w, b = dense_weights(dim, out_dim)
    inits, nodes = [], []
    with open(folder / data_name, "wb") as f:
        step = max(1, chunk_bytes // (dim * 4))
        block = _block(dim)
        for k in range(tables):
            f.write(b"\0" * (-f.tell() % _ALIGN))
            off = f.tell()
            for start in range(0, vocab, step):
                f.write(embedding_rows(start + k, min(start + step, vocab) + k, dim, block).tobytes())
            inits.append(_external(f"E{k}", [vocab, dim], TensorProto.FLOAT, off, f.tell() - off, data_name))
            nodes.append(helper.make_node("Gather", [f"E{k}", "ids"], [f"g{k}"]))
        f.write(b"\0" * (-f.tell() % _ALIGN))
        off = f.tell()
        f.write(w.tobytes())
        inits.append(_external("W", [dim, out_dim], TensorProto.FLOAT, off, w.nbytes, data_name))
    inits.append(onnx.numpy_helper.from_array(b, "B"))  # small: stays inside model.onnx
    total = "g0"
    for k in range(1, tables):
        nodes.append(helper.make_node("Add", [total, f"g{k}"], [f"s{k}"]))
        total = f"s{k}"
    nodes += [helper.make_node("MatMul", [total, "W"], ["z"]), helper.make_node("Add", ["z", "B"], ["a"]),
              helper.make_node("Relu", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "embedding",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", out_dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(folder / model_name))
    return folder / model_name


def embedding_reference(ids: np.ndarray, dim: int, out_dim: int, tables: int = 1) -> np.ndarray:
    """What ``embedding_model`` computes for ``ids`` (float64 math, float32 result)."""
    flat = ids.reshape(-1)
    block = _block(dim)
    rows = sum(np.stack([embedding_rows(int(i) + k, int(i) + k + 1, dim, block)[0] for i in flat]).astype(np.float64)
               for k in range(tables))
    w, b = dense_weights(dim, out_dim)
    y = np.maximum(rows @ w + b, 0.0)
    return y.reshape(*ids.shape, out_dim).astype(np.float32)


def weight_bytes(vocab: int, dim: int, out_dim: int, tables: int = 1) -> int:
    return 4 * (tables * vocab * dim + dim * out_dim + out_dim)
