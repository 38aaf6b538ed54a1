"""Tiny Keras model builders shared by the converter and optimizer tests (Keras 3 and tf-keras).

Every builder seeds its weights so results are reproducible; models are kept small so the
suite stays fast. TensorFlow/Keras are imported inside the functions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def _keras():
    import keras

    keras.utils.set_random_seed(0)
    return keras


def sequential_dense(keras=None):
    """Sequential MLP: 8 float features -> 3-way softmax (Dense, Dropout, BatchNormalization)."""
    keras = keras or _keras()
    return keras.Sequential([
        keras.Input((8,), name="features"),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(3, activation="softmax", name="probs"),
    ], name="seq_dense")


def conv_net():
    """Functional CNN: Conv2D, DepthwiseConv2D, SeparableConv2D, BN, pooling, activations."""
    keras = _keras()
    x_in = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x_in)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    x = keras.layers.SeparableConv2D(8, 3, padding="same", activation="swish")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.AveragePooling2D(pool_size=2)(x)
    x = keras.layers.Conv2D(8, 1, activation="gelu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(4, activation="softmax", name="class_probs")(x)
    return keras.Model(x_in, out, name="conv_net")


def conv1d_net():
    """Functional 1-D CNN over sequences: Conv1D, pooling, tanh/sigmoid/elu/leaky relu."""
    keras = _keras()
    x_in = keras.Input((20, 4), name="signal")
    x = keras.layers.Conv1D(8, 3, activation="tanh")(x_in)
    x = keras.layers.MaxPooling1D()(x)
    x = keras.layers.Conv1D(8, 3, activation="elu")(x)
    x = keras.layers.LeakyReLU()(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    return keras.Model(x_in, out, name="conv1d_net")


def recurrent_net(vocab: int = 50):
    """Embedding + LSTM + GRU over int32 token ids (indices must stay below ``vocab``)."""
    keras = _keras()
    ids = keras.Input((12,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocab, 8)(ids)
    x = keras.layers.LSTM(8, return_sequences=True)(x)
    x = keras.layers.GRU(8)(x)
    out = keras.layers.Dense(2, activation="softmax", name="sentiment")(x)
    return keras.Model(ids, out, name="recurrent_net")


def attention_net(vocab: int = 40, seq: int = 10, dim: int = 16):
    """A one-block transformer encoder: Embedding, MultiHeadAttention, LayerNormalization, Add."""
    keras = _keras()
    ids = keras.Input((seq,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocab, dim)(ids)
    a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    x = keras.layers.LayerNormalization()(keras.layers.Add()([x, a]))
    f = keras.layers.Dense(dim * 2, activation="relu")(x)
    f = keras.layers.Dense(dim)(f)
    x = keras.layers.LayerNormalization()(keras.layers.Add()([x, f]))
    x = keras.layers.GlobalAveragePooling1D()(x)
    out = keras.layers.Dense(3, activation="softmax", name="label")(x)
    return keras.Model(ids, out, name="attention_net")


def transformer_encoder(vocab: int = 1000, seq: int = 64, dim: int = 128, heads: int = 4, blocks: int = 2):
    """A small transformer encoder classifier (for benchmarks)."""
    keras = _keras()
    ids = keras.Input((seq,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocab, dim)(ids)
    for _ in range(blocks):
        a = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=dim // heads)(x, x)
        x = keras.layers.LayerNormalization()(keras.layers.Add()([x, a]))
        f = keras.layers.Dense(dim * 4, activation="gelu")(x)
        f = keras.layers.Dense(dim)(f)
        x = keras.layers.LayerNormalization()(keras.layers.Add()([x, f]))
    x = keras.layers.GlobalAveragePooling1D()(x)
    out = keras.layers.Dense(2, activation="softmax", name="label")(x)
    return keras.Model(ids, out, name="transformer_encoder")


def multi_io():
    """Two inputs (float image-ish vector + int category), two outputs; Concatenate."""
    keras = _keras()
    a = keras.Input((6,), name="numeric")
    b = keras.Input((1,), dtype="int32", name="category")
    e = keras.layers.Flatten()(keras.layers.Embedding(5, 3)(b))
    x = keras.layers.Concatenate()([a, e])
    x = keras.layers.Dense(8, activation="relu")(x)
    cls = keras.layers.Dense(4, activation="softmax", name="cls")(x)
    reg = keras.layers.Dense(1, name="reg")(x)
    return keras.Model([a, b], [cls, reg], name="multi_io")


def subclassed():
    """A subclassed Keras 3 model (built by one call)."""
    keras = _keras()
    import numpy as np

    class TinySubclassed(keras.Model):
        def __init__(self):
            super().__init__(name="tiny_subclassed")
            self.d1 = keras.layers.Dense(8, activation="relu")
            self.d2 = keras.layers.Dense(2)

        def call(self, x):
            return self.d2(self.d1(x))

    m = TinySubclassed()
    m(np.zeros((1, 5), "float32"))
    return m


def lambda_model():
    """A model with a Lambda layer: loading it (safe_mode) runs code, so it is refused by default."""
    keras = _keras()
    x_in = keras.Input((4,), name="x")
    x = keras.layers.Lambda(lambda t: t * 2.0 + 1.0, name="affine")(x_in)
    out = keras.layers.Dense(2, name="y")(x)
    return keras.Model(x_in, out, name="lambda_model")


def save_keras(model, path: Path) -> Path:
    """Save a Keras 3 model in the native ``.keras`` zip format (the file name is irrelevant)."""
    model.save(str(path))
    return Path(path)


_TF_KERAS_H5 = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((8,), name="features")
    x = tf.keras.layers.Dense(16, activation="relu")(inp)
    x = tf.keras.layers.BatchNormalization()(x)
    out = tf.keras.layers.Dense(3, activation="softmax", name="probs")(x)
    m = tf.keras.Model(inp, out)
    assert type(m).__module__.startswith("tf_keras"), type(m).__module__
    m.save(sys.argv[1], save_format="h5")
    np.save(sys.argv[2], m.predict(np.linspace(-1, 1, 16, dtype="float32").reshape(2, 8), verbose=0))
""")


def write_tf_keras_h5(path: Path) -> tuple[Path, Path]:
    """Write a tf.keras (Keras 2) HDF5 model in a subprocess with TF_USE_LEGACY_KERAS=1.

    Returns ``(h5_path, npy_of_reference_outputs_for_linspace_inputs)``.
    """
    ref = Path(path).with_suffix(".ref.npy")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-c", _TF_KERAS_H5, str(path), str(ref)], check=True, env=env,
                   capture_output=True, timeout=300)
    return Path(path), ref
