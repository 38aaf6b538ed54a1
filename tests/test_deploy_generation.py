"""`modelport deploy model.keras` on a keras_hub causal LM: the generation path end to end against the session's
real services (convert --to generation, weight-only optimization, LoadModel as a decoupled model, a streamed
smoke generation), on the tiny GPT-2-shaped models of hub_models (2 layers, hidden 64)."""

from __future__ import annotations

import json

import hub_models
import pytest
from cli_fixtures import gateway_args, gateway_services, tiny_onnx_classifier
from typer.testing import CliRunner

from gateway.cli import app
from modelport import Client, media
from modelport.deploy import DeploySpec, StageFailed
from modelport.deploy.generation import CausalLM, causal_lm_of

__all__ = ["gateway_args", "gateway_services"]  # fixtures used by name

PROMPT = [5, 17, 42, 8, 3]


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("deploy-lm")
    return {name: hub_models.save(getattr(hub_models, name)(), d / f"{name}.keras")
            for name in ("gpt2_causal_lm", "gpt2_backbone", "bert_text_classifier")}


@pytest.fixture(scope="module")
def client(gateway_services):
    with Client(**gateway_services["addresses"], timeout=600) as c:
        yield c


def test_causal_lm_of_reads_the_keras_config_without_tensorflow(lm_files, tmp_path):
    from modelport.conversion import llm_export
    from modelport.deploy import generation

    assert generation.SUPPORTED == llm_export.SUPPORTED
    assert causal_lm_of(lm_files["gpt2_causal_lm"]) == CausalLM("GPT2CausalLM", "GPT2CausalLM")
    backbone = causal_lm_of(lm_files["gpt2_backbone"])
    assert backbone == CausalLM("GPT2Backbone", "GPT2CausalLM") and backbone.is_backbone
    assert "decoder backbone, deployed as GPT2CausalLM" in backbone.describe()
    assert causal_lm_of(lm_files["bert_text_classifier"]) is None  # a keras_hub model, not a causal LM
    assert causal_lm_of(tiny_onnx_classifier(tmp_path / "m.onnx")) is None
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    assert causal_lm_of(broken) is None


@pytest.mark.integration
def test_deploy_recognises_a_causal_lm_and_serves_keras_hub_greedy_tokens(lm_files, gateway_args, client):
    import keras

    from modelport.conversion.llm_export import keras_greedy

    res = CliRunner().invoke(app, [*gateway_args, "deploy", str(lm_files["gpt2_causal_lm"]), "--name", "gpt2-lm",
                                   "--optimize", "none", "--json"], catch_exceptions=False, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ok"] is True and report["target"] == "generation"
    stages = {s["stage"]: s for s in report["stages"]}
    assert [s["stage"] for s in report["stages"]] == ["upload", "convert", "optimize", "verify", "load", "smoke"]
    assert "keras_hub GPT2CausalLM: deployed for generation" in stages["upload"]["detail"]
    conv = stages["convert"]
    assert conv["format"] == "generation" and conv["data"]["generation"]["architecture"] == "GPT2CausalLM"
    assert conv["parity"] == "greedy tokens equal keras_hub generate(): 32 of 32"
    assert "KV-cache step: 2 layers, 2 kv heads x 32, context 128" in conv["detail"]
    assert stages["verify"]["data"]["checks"] == ["greedy tokens equal keras_hub generate(): 32 of 32"]
    assert "decoupled" in stages["load"]["detail"]
    smoke = stages["smoke"]
    prompt = [int(t) for t in conv["data"]["generation"]["parity_prompt"].split(",")]
    assert smoke["data"]["prompt"] == prompt and len(smoke["data"]["tokens"]) == 32
    assert smoke["data"]["tokens"] == smoke["data"]["reference"]  # served FP32 step = keras_hub generate()
    assert smoke["parity"] == "greedy tokens equal keras_hub generate(): 32 of 32"
    # and the served model answers modelport generate like keras_hub's own generate() on another prompt
    assert client.model_config("gpt2-lm", report["version"]).model_transaction_policy.decoupled
    served = list(client.generate("gpt2-lm", PROMPT, max_tokens=12, version=report["version"]))
    assert served == keras_greedy(keras.saving.load_model(lm_files["gpt2_causal_lm"]), PROMPT, 12)


@pytest.mark.integration
def test_deploy_quantizes_the_generation_step_weight_only(lm_files, client):
    """The same file again (the converter answers from its job cache), now with int8 weight-only chosen."""
    spec = DeploySpec(model=lm_files["gpt2_causal_lm"], name="gpt2-int8", optimize=["int8-weight-only"],
                      max_accuracy_drop=1.0, options={"generate.tokens": "8", "generate.prompts": "2"},
                      batching={"max_batch_size": 4})
    report = client.deploy(spec=spec)
    assert report.ok and report.target == "generation"
    stages = {s.stage: s for s in report.stages}
    opt = stages["optimize"].data
    assert opt["input"] == "generation step" and opt["chosen"] == "int8-weight-only"
    cand = next(c for c in opt["candidates"] if c["technique"] == "int8-weight-only")
    assert cand["format"] == "generation" and cand["tokens_per_s"] > 0 and 0.0 <= cand["agreement"] <= 1.0
    assert cand["size_bytes"] < opt["baseline"]["size_bytes"]
    assert any(c.startswith("greedy-token agreement with the FP32 step ") for c in stages["verify"].data["checks"])
    smoke = stages["smoke"]
    assert len(smoke.data["tokens"]) == 32 and all(0 <= t < hub_models.VOCAB for t in smoke.data["tokens"])
    assert smoke.parity.startswith("greedy tokens equal keras_hub generate(): ") and "int8-weight-only" in smoke.parity
    assert any("continuous batching" in w for w in report.warnings)
    assert client.stat(stages["load"].data["digest"], service="inference").media_type == media.GENERATION
    assert stages["load"].data["digest"] != stages["convert"].data["artifact"]  # the quantized step is served


def test_a_decoder_backbone_is_wrapped_in_its_causal_lm_task():
    """What the converter's generation target does with a GPT2Backbone: its GPT2CausalLM, no new weights."""
    from modelport.conversion.llm_export import as_causal_lm, is_causal_lm

    backbone = hub_models.gpt2_backbone()
    lm = as_causal_lm(backbone)
    assert type(lm).__name__ == "GPT2CausalLM" and is_causal_lm(lm) and lm.backbone is backbone
    assert lm.count_params() == backbone.count_params()
    assert as_causal_lm(lm) is lm
    other = hub_models.bert_backbone()
    assert as_causal_lm(other) is other and not is_causal_lm(other)


@pytest.mark.integration
def test_generation_on_refuses_a_model_that_is_not_a_causal_lm(lm_files, client):
    spec = DeploySpec(model=lm_files["bert_text_classifier"], name="bert", generation="on", optimize=["none"])
    with pytest.raises(StageFailed) as e:
        client.deploy(spec=spec)
    assert e.value.stage == "upload" and e.value.code == "FAILED_PRECONDITION"
    assert "needs a keras_hub causal LM or decoder backbone" in e.value.message
    assert "bert_text_classifier.keras is not one" in e.value.message


def test_an_offline_bundle_takes_the_whole_generation_folder(tmp_path):
    """``deploy --offline`` writes the served generation folder as a repository version: step, data and
    generation.json together (the inference service loads a version folder with generation.json as a stream)."""
    from modelport import repository
    from modelport.kserve.v2 import model_config_pb2 as mc

    folder = tmp_path / "served"
    folder.mkdir()
    for name, data in (("model.onnx", b"step"), ("model.onnx.data", b"weights"), ("generation.json", b"{}")):
        (folder / name).write_bytes(data)
    cfg = mc.ModelConfig(name="x", backend="onnxruntime")
    cfg.model_transaction_policy.decoupled = True
    out = repository.write_model(tmp_path / "repo", "gpt2", 1, folder, cfg)
    assert out == tmp_path / "repo" / "gpt2" / "1" / "model.onnx"
    assert sorted(p.name for p in out.parent.iterdir()) == ["generation.json", "model.onnx", "model.onnx.data"]
    assert (out.parent / "model.onnx.data").read_bytes() == b"weights"
    assert "decoupled: true" in (tmp_path / "repo" / "gpt2" / "config.pbtxt").read_text()
