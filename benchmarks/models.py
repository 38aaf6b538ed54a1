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
