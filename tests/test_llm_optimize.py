"""Weight-only INT8 / INT4 (onnxruntime MatMulNBits) of a generation model through the optimizer service,
measured as generation: tokens/s, memory, greedy agreement with the FP32 model."""

# ruff: noqa: F811 - the session fixture is imported from optimizer_fixtures and used as an argument
from __future__ import annotations

import tarfile

import grpc
import hub_models
import numpy as np
import onnx
import pytest
from optimizer_fixtures import optimizer_server  # noqa: F401 - session fixture

from modelport import media
from modelport.errors import InvalidArgument
from modelport.generation_model import CONFIG_FILE, MODEL_FILE, GenerationConfig, StepModel, greedy_decode
from modelport.runtime.artifacts import download_to_file, upload_requests
from modelport.v1 import artifacts_pb2_grpc, optimizer_pb2, optimizer_pb2_grpc
from optimizer_svc.technique_options import plan

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def generation_tar(tmp_path_factory):
    from modelport.archive import pack_dir
    from modelport.conversion.llm_export import export_generation

    d = tmp_path_factory.mktemp("llm-opt")
    export_generation(hub_models.llama_causal_lm(), d / "llama")
    pack_dir(d / "llama", d / "llama.tar")
    return d / "llama", d / "llama.tar"


@pytest.fixture(scope="module")
def channel(optimizer_server):
    from modelport.runtime.channels import channel_options

    ch = grpc.insecure_channel(optimizer_server.address, options=channel_options())
    yield ch
    ch.close()


def test_weight_only_int8_and_int4_candidates_measured_as_generation(channel, generation_tar, tmp_path):
    folder, tar = generation_tar
    ref = artifacts_pb2_grpc.ArtifactsStub(channel).Upload(upload_requests(tar, media.GENERATION))
    req = optimizer_pb2.OptimizeRequest(model=ref, techniques=["int8-weight-only", "int4-weight-only"])
    req.budget.max_drop = 1.0
    req.options["generate.tokens"] = "24"
    events = list(optimizer_pb2_grpc.OptimizerStub(channel).Optimize(req, timeout=600))
    result = events[-1].optimize_result
    assert events[-1].stage == "done", events[-1]
    base = result.baseline
    assert base.details["architecture"] == "LlamaCausalLM" and base.agreement == 1.0
    assert float(base.details["tokens_per_s"]) > 0 and float(base.details["perplexity_on_fp32_greedy"]) >= 1.0
    by = {c.technique: c for c in result.candidates}
    assert set(by) == {"int8-weight-only", "int4-weight-only"}
    for tech, bits in (("int8-weight-only", 8), ("int4-weight-only", 4)):
        c = by[tech]
        assert c.format == "generation" and c.details["bits"] == str(bits), c
        assert c.details["matmuls_quantized"] == "15/15"  # 7 per layer x 2 layers + the LM head
        assert 0 < c.size_bytes < base.size_bytes and 0.0 <= c.agreement <= 1.0
        assert float(c.details["tokens_per_s"]) > 0 and float(c.details["ms_per_token"]) > 0
        assert c.latency_p50_ms == pytest.approx(float(c.details["ms_per_token"]), abs=1e-3)  # details: 3 decimals
        assert c.artifact.media_type == media.GENERATION
    assert by["int4-weight-only"].size_bytes < by["int8-weight-only"].size_bytes
    assert by["int8-weight-only"].agreement >= 0.9  # 8-bit blocks barely move a tiny model's logits
    assert by["int8-weight-only"].agreement >= by["int4-weight-only"].agreement
    assert result.chosen_technique in by

    # The INT4 candidate is a generation folder onnxruntime runs: MatMulNBits with 4-bit weights.
    out = tmp_path / "int4.tar"
    download_to_file(artifacts_pb2_grpc.ArtifactsStub(channel), by["int4-weight-only"].artifact.digest, out)
    with tarfile.open(out) as t:
        t.extractall(tmp_path / "int4", filter="data")
    model = onnx.load(str(tmp_path / "int4" / MODEL_FILE))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 15 and all(a.i == 4 for n in nbits for a in n.attribute if a.name == "bits")
    config = GenerationConfig.load(tmp_path / "int4" / CONFIG_FILE)
    assert config.extra["quantization"] == {"method": "MatMulNBits", "bits": 4, "block_size": 32, "symmetric": True,
                                            "accuracy_level": 4, "matmuls": 15}
    tokens = greedy_decode(StepModel(tmp_path / "int4"), [5, 17, 42], 8)
    assert len(tokens) == 8 and all(0 <= t < hub_models.VOCAB for t in tokens)
    assert np.isfinite(float(by["int4-weight-only"].details["perplexity_on_fp32_greedy"]))


def test_generation_models_take_only_the_weight_only_techniques():
    assert plan(["auto"], "generation", has_train=False, has_inputs=False).run == ["int8-weight-only",
                                                                                   "int4-weight-only"]
    onnx_auto = plan(["auto"], "onnx", has_train=False, has_inputs=False)
    assert "int4-weight-only" not in onnx_auto.run and "int4-weight-only" not in dict(onnx_auto.skipped)
    with pytest.raises(InvalidArgument, match="int4-weight-only applies to generation models"):
        plan(["int4-weight-only"], "onnx", has_train=False, has_inputs=False)
    with pytest.raises(InvalidArgument, match="graph does not apply to a generation model"):
        plan(["graph"], "generation", has_train=False, has_inputs=False)
