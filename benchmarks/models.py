"""Model builders shared by the benchmarks (one definition of each benchmark model).

The digits CNN and its data are the demo's own (``gateway.demo``), shared with the tests.
"""

from __future__ import annotations

from gateway.demo import digits_arrays, digits_cnn

__all__ = ["digits_arrays", "digits_cnn", "transformer_encoder"]


def transformer_encoder(keras, *, vocab: int = 1000, seq: int = 64, dim: int = 128, heads: int = 4, ff: int = 512,
                        blocks: int = 2, ff_activation: str = "relu", head_units: int = 128,
                        head_activation: str | None = None, head_name: str = "features"):
    """A small post-norm transformer encoder over int32 token ids, pooled, with a dense head.

    ``head_units``/``head_activation`` make it a feature extractor (linear head) or a classifier
    (softmax head); the benchmarks use both.
    """
    ids = keras.Input((seq,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocab, dim)(ids)
    for _ in range(blocks):
        a = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=dim // heads)(x, x)
        x = keras.layers.LayerNormalization()(keras.layers.Add()([x, a]))
        f = keras.layers.Dense(ff, activation=ff_activation)(x)
        f = keras.layers.Dense(dim)(f)
        x = keras.layers.LayerNormalization()(keras.layers.Add()([x, f]))
    x = keras.layers.GlobalAveragePooling1D()(x)
    out = keras.layers.Dense(head_units, activation=head_activation, name=head_name)(x)
    return keras.Model(ids, out, name="transformer_encoder")


def set_batchnorm_statistics(keras, model, x) -> int:
    """Give a random-weight model's BatchNormalization layers the statistics of ``x``; returns how many.

    ``weights=None`` leaves moving mean 0 / variance 1, so a deep CNN's activations shrink block after
    block until they are denormal floats (a random ResNet50 then runs 5x slower in FP32 and its
    outputs are constant): no ratio measured on it means anything. One training-mode pass with
    momentum 0 sets each layer's statistics to those of its input, as training would roughly do.
    """
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.momentum = 0.0
    model(x, training=True)
    return len(layers)


def photo_crops(rng, n: int, size: int):
    """``n`` random ``size`` x ``size`` crops (half of them mirrored) of the two photographs scikit-learn
    ships, scaled to -1..1: natural-image statistics for CNNs without a dataset download."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    out = np.empty((n, size, size, 3), "float32")
    for i in range(n):
        im = images[i % len(images)]
        y, x = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
        crop = im[y:y + size, x:x + size].astype("float32") / 127.5 - 1.0
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def mlp_onnx(path, sizes: tuple[int, ...], seed: int):
    """An MLP (Gemm + Relu, random weights from ``seed``) with a dynamic batch dimension, input x, output y
    (bench_serving's and bench_reliability's model)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(np.zeros(n_out, np.float32), f"B{i}")]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], ["y" if last else f"g{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
