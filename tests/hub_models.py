"""Tiny random keras_hub models (2 layers, hidden 64) for the Keras Hub and LLM tests.

Presets cannot be downloaded here; every architecture builds offline from its config. Weights
are seeded so greedy decoding is reproducible. TensorFlow/keras_hub are imported inside.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

VOCAB = 100
MAX_SEQ = 128


def _hub(seed: int = 0):
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    return keras_hub


def gpt2_backbone(seed: int = 0):
    hub = _hub(seed)
    return hub.models.GPT2Backbone(vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=64,
                                   intermediate_dim=128, max_sequence_length=MAX_SEQ)


def bert_backbone(seed: int = 0):
    hub = _hub(seed)
    return hub.models.BertBackbone(vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=64,
                                   intermediate_dim=128, max_sequence_length=MAX_SEQ)


def bert_text_classifier(seed: int = 0):
    hub = _hub(seed)
    return hub.models.BertTextClassifier(backbone=bert_backbone(seed), num_classes=3, preprocessor=None)


def gpt2_causal_lm(seed: int = 0):
    hub = _hub(seed)
    return hub.models.GPT2CausalLM(backbone=gpt2_backbone(seed), preprocessor=None)


def llama_causal_lm(seed: int = 0):
    """Llama-shaped: RoPE, RMSNorm, grouped-query attention (4 query heads, 2 key/value heads)."""
    hub = _hub(seed)
    backbone = hub.models.LlamaBackbone(vocabulary_size=VOCAB, num_layers=2, num_query_heads=4,
                                        num_key_value_heads=2, hidden_dim=64, intermediate_dim=128)
    return hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def save(model, path: Path) -> Path:
    model.save(str(path))
    return path


def rename_package(src: Path, dst: Path, old: str, new: str) -> Path:
    """A copy of a .keras archive whose config names classes from package ``new`` instead of ``old``
    (a model that needs a package this environment does not have)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                data = json.dumps(json.loads(data.decode().replace(f'"{old}.', f'"{new}.')
                                             .replace(f'"{old}>', f'"{new}>'))).encode()
            zout.writestr(item, data)
    return dst
