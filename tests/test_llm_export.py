"""Causal LMs exported for generation with a KV cache: greedy decoding from the ONNX step equals
keras_hub's own generate() (greedy sampler); sequences at different positions share one step."""

from __future__ import annotations

import json

import hub_models
import numpy as np
import pytest

from modelport.errors import FailedPrecondition, InvalidArgument
from modelport.generation_model import CONFIG_FILE, DATA_FILE, MODEL_FILE, StepModel, greedy_decode

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from modelport.conversion.llm_export import export_generation

    d = tmp_path_factory.mktemp("llm-export")
    models = {"gpt2": hub_models.gpt2_causal_lm(), "llama": hub_models.llama_causal_lm()}
    configs = {"gpt2": export_generation(models["gpt2"], d / "gpt2", external=False),
               "llama": export_generation(models["llama"], d / "llama", external=True)}
    return models, configs, d


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_greedy_decoding_from_the_onnx_step_equals_keras_hub_generate(exported, name):
    from modelport.conversion.llm_export import greedy_parity

    models, _, d = exported
    report = greedy_parity(models[name], d / name, prompt=[5, 17, 42, 8, 3], max_new_tokens=32)
    assert report["onnx"] == report["keras"] and len(report["onnx"]) == 32 and report["agreement"] == 1.0
    assert len(set(report["onnx"])) > 1  # a real sequence, not one repeated id


def test_generation_folder_describes_the_cache_and_carries_external_data(exported):
    _, configs, d = exported
    gpt2 = json.loads((d / "gpt2" / CONFIG_FILE).read_text())
    assert gpt2["format"] == "modelport.generation/v1" and gpt2["architecture"] == "GPT2CausalLM"
    assert (gpt2["num_layers"], gpt2["num_kv_heads"], gpt2["head_dim"], gpt2["vocabulary_size"]) == (2, 2, 32, 100)
    assert gpt2["max_positions"] == hub_models.MAX_SEQ and not gpt2["external_data"]
    assert not (d / "gpt2" / DATA_FILE).exists()
    llama = configs["llama"]
    assert (llama.num_heads, llama.num_kv_heads, llama.head_dim, llama.max_positions) == (4, 2, 16, 0)
    assert llama.external_data and (d / "llama" / DATA_FILE).stat().st_size >= 0.9 * llama.weight_bytes
    assert (d / "llama" / MODEL_FILE).stat().st_size < llama.weight_bytes / 2  # the weights are not in the graph
    step = StepModel(d / "llama")
    assert [i.name for i in step.session.get_inputs()][:4] == ["input_ids", "past_lengths", "past_key_0",
                                                               "past_value_0"]
    assert step.output_names[0] == "logits"


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_sequences_at_different_positions_share_one_step(exported, name):
    """Two prompts of different lengths decoded in one batch (each row at its own position) give the
    tokens each gives alone: what continuous batching relies on."""
    _, _, d = exported
    step = StepModel(d / name)
    prompts = [[5, 17, 42, 8, 3], [60, 2]]
    alone = [greedy_decode(step, p, 12) for p in prompts]
    cache = step.new_cache(max_batch=2, max_context=32)
    tokens, lengths = [], []
    for row, p in enumerate(prompts):  # prefill each into its row
        logits = step.step(np.asarray([p]), np.zeros(1, np.int32), cache, start=row)
        tokens.append([int(np.argmax(logits[0]))])
        lengths.append(len(p))
    for _ in range(11):
        logits = step.step(np.asarray([[t[-1]] for t in tokens]), np.asarray(lengths, np.int32), cache)
        for row in range(2):
            tokens[row].append(int(np.argmax(logits[row])))
            lengths[row] += 1
    assert tokens == alone


def test_a_model_that_is_not_a_causal_lm_is_refused():
    from modelport.conversion.llm_export import describe

    with pytest.raises(InvalidArgument) as e:
        describe(hub_models.gpt2_backbone())
    assert "not a keras_hub CausalLM" in e.value.message and "GPT2CausalLM" in e.value.message


def test_an_architecture_without_the_serving_route_is_failed_precondition():
    """GPT-NeoX's attention does not hand its keys/values to keras_hub's serving contract: refused, not
    exported wrong."""
    import keras
    import keras_hub

    from modelport.conversion.llm_export import describe

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPTNeoXBackbone(vocabulary_size=hub_models.VOCAB, num_layers=2, num_heads=2,
                                                hidden_dim=64, intermediate_dim=128)
    with pytest.raises(FailedPrecondition) as e:
        describe(keras_hub.models.GPTNeoXCausalLM(backbone=backbone, preprocessor=None))
    assert "GPTNeoXCausalLM architecture" in e.value.message and "(0 of 2 did)" in e.value.message
