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
IMAGE = 32
CLASSES = 5


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


def bert_masked_lm(seed: int = 0):
    """Inputs token_ids, padding_mask, segment_ids and mask_positions; logits at the masked positions."""
    hub = _hub(seed)
    return hub.models.BertMaskedLM(backbone=bert_backbone(seed), preprocessor=None)


def resnet_image_classifier(seed: int = 0):
    """A 2-stage ResNet (basic blocks; keras_hub requires 64 filters in the first stage) on 32x32 images."""
    hub = _hub(seed)
    backbone = hub.models.ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[7],
                                         stackwise_num_filters=[64, 64], stackwise_num_blocks=[1, 1],
                                         stackwise_num_strides=[1, 2], block_type="basic_block",
                                         use_pre_activation=False, image_shape=(IMAGE, IMAGE, 3))
    return hub.models.ResNetImageClassifier(backbone=backbone, num_classes=CLASSES, preprocessor=None)


def vit_image_classifier(seed: int = 0):
    """A 2-layer ViT (hidden 64, 8x8 patches) on 32x32 images."""
    hub = _hub(seed)
    backbone = hub.models.ViTBackbone(image_shape=(IMAGE, IMAGE, 3), patch_size=8, num_layers=2, num_heads=2,
                                      hidden_dim=64, mlp_dim=128)
    return hub.models.ViTImageClassifier(backbone=backbone, num_classes=CLASSES, preprocessor=None)


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
