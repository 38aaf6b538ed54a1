"""Generation served over gRPC with token streaming (KServe v2 ModelStreamInfer, decoupled), as Triton
serves TensorRT-LLM: our stubs and tritonclient unchanged, greedy tokens equal keras_hub's generate(),
cancellation stops the generation, concurrent generations share decode steps."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import grpc
import hub_models
import numpy as np
import pytest
from test_inference_triton import triton_python

from inference_svc.generation import GenerationEngine, GenerationParams
from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport.generation_model import CONFIG_FILE, GenerationConfig, StepModel, greedy_decode
from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from modelport.runtime.background import BackgroundServer
from modelport.runtime.channels import channel_options

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
PROMPT = [5, 17, 42, 8, 3]
TOKENS = 32
LONG = 4000  # a generation that would run for seconds: cancellation must cut it short


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """A tiny Llama-shaped causal LM exported into a repository (<repo>/llama/1/) and keras_hub's own greedy
    tokens for PROMPT."""
    from modelport.conversion.llm_export import export_generation, keras_greedy

    repo = tmp_path_factory.mktemp("gen-repo")
    folder = repo / "llama" / "1"
    model = hub_models.llama_causal_lm()
    export_generation(model, folder)
    config = GenerationConfig.load(folder / CONFIG_FILE)
    config.max_context = LONG + 64  # RoPE: no position limit, so the cache may grow this far
    config.save(folder / CONFIG_FILE)
    (repo / "llama" / "config.pbtxt").write_text(
        'name: "llama"\nbackend: "onnxruntime"\nmax_batch_size: 8\nmodel_transaction_policy { decoupled: true }\n')
    reference = keras_greedy(model, PROMPT, TOKENS)
    return repo, folder, reference


@pytest.fixture(scope="module")
def server(llm, tmp_path_factory):
    repo, _, _ = llm
    settings = InferenceSettings(port=0, host="127.0.0.1", store=tmp_path_factory.mktemp("gen-store"),
                                 repository=repo)
    with BackgroundServer(InferenceService(settings)) as srv:
        yield srv


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(server.address, options=channel_options())
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def engine_of(server) -> GenerationEngine:
    return server.service.manager.get("llama").generator


def request(prompt, tokens, request_id="r1", empty_final=False, **extra):
    inputs = {"input_ids": np.asarray([prompt], np.int32), "input_lengths": np.asarray([[len(prompt)]], np.int32),
              "request_output_len": np.asarray([[tokens]], np.int32)}
    inputs.update(extra)
    req = codec.make_infer_request("llama", inputs, request_id=request_id)
    if empty_final:
        req.parameters["triton_enable_empty_final_response"].bool_param = True
    return req


def finals(responses):
    return [r.infer_response.parameters["triton_final_response"].bool_param for r in responses]


def tokens_of(responses):
    out = []
    for r in responses:
        if r.infer_response.outputs:
            out.extend(int(t) for t in codec.decode_outputs(r.infer_response)["output_ids"].reshape(-1))
    return out


def test_stream_yields_keras_greedy_tokens_one_response_each(llm, stub):
    _, _, reference = llm
    responses = list(stub.ModelStreamInfer(iter([request(PROMPT, TOKENS, "gen-7")]), timeout=120))
    assert all(not r.error_message for r in responses), responses[0].error_message
    assert tokens_of(responses) == reference and len(responses) == TOKENS
    assert finals(responses) == [False] * (TOKENS - 1) + [True]
    first = responses[0].infer_response
    assert first.id == "gen-7" and first.model_name == "llama" and first.model_version == "1"
    out = codec.decode_outputs(first)
    assert out["output_ids"].shape == (1, 1, 1) and out["output_ids"].dtype == np.int32
    assert out["sequence_length"].tolist() == [[1]]


def test_empty_final_response_when_the_client_asks_and_one_response_without_streaming(llm, stub):
    _, _, reference = llm
    responses = list(stub.ModelStreamInfer(iter([request(PROMPT, 8, empty_final=True)]), timeout=60))
    assert finals(responses) == [False] * 8 + [True] and not responses[-1].infer_response.outputs
    assert tokens_of(responses) == reference[:8]
    whole = list(stub.ModelStreamInfer(iter([request(PROMPT, 8, streaming=np.asarray([[False]]))]), timeout=60))
    assert len(whole) == 1 and finals(whole) == [True]
    assert codec.decode_outputs(whole[0].infer_response)["output_ids"].shape == (1, 1, 8)
    assert tokens_of(whole) == reference[:8]


def test_end_id_stops_the_generation_with_an_empty_final_response(llm, stub):
    _, _, reference = llm
    end = reference[3]
    cut = reference.index(end)
    responses = list(stub.ModelStreamInfer(iter([request(PROMPT, TOKENS, end_id=np.asarray([[end]], np.int32))]),
                                           timeout=60))
    assert tokens_of(responses) == reference[:cut]  # the end token itself is not streamed
    assert finals(responses) == [False] * cut + [True] and not responses[-1].infer_response.outputs


def test_model_infer_is_refused_and_config_says_decoupled(stub):
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request(PROMPT, 4))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ModelStreamInfer" in e.value.details()
    config = stub.ModelConfig(pb.ModelConfigRequest(name="llama")).config
    assert config.model_transaction_policy.decoupled
    assert config.parameters["generation_architecture"].string_value == "LlamaCausalLM"
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="llama"))
    assert [t.name for t in meta.inputs] == ["input_ids", "input_lengths", "request_output_len"]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("output_ids", "INT32"), ("sequence_length", "INT32")]


def test_bad_requests_are_answered_in_the_stream_naming_the_tensor(stub):
    too_long = list(stub.ModelStreamInfer(iter([request(PROMPT, LONG + 64)]), timeout=60))
    assert len(too_long) == 1 and "max_context" in too_long[0].error_message
    out_of_vocab = list(stub.ModelStreamInfer(iter([request([5, hub_models.VOCAB + 3], 4)]), timeout=60))
    assert "outside the model's vocabulary [0, 100)" in out_of_vocab[0].error_message
    missing = codec.make_infer_request("llama", {"input_ids": np.asarray([PROMPT], np.int32)})
    answer = list(stub.ModelStreamInfer(iter([missing]), timeout=60))
    assert "input 'input_lengths' is missing" in answer[0].error_message


def test_cancelling_the_stream_stops_the_generation(server, stub):
    engine = engine_of(server)
    before = engine.batch_tokens
    call = stub.ModelStreamInfer(iter([request(PROMPT, LONG)]), timeout=120)
    received = [next(call) for _ in range(3)]
    call.cancel()
    assert tokens_of(received) and engine.wait_idle(timeout=60)
    assert engine.batch_tokens - before < LONG // 4, "the cancelled generation kept running"
    # The model still serves after a cancellation.
    again = list(stub.ModelStreamInfer(iter([request(PROMPT, 4)]), timeout=60))
    assert len(tokens_of(again)) == 4


def test_tritonclient_streams_unchanged(llm, server):
    _, _, reference = llm
    out = Path(server.service.settings.store) / "tritonclient.json"
    engine = engine_of(server)
    before = engine.batch_tokens
    p = subprocess.run([triton_python(), str(ROOT / "tests" / "triton_compat" / "generate_stream.py"), server.address,
                        "llama", ",".join(map(str, PROMPT)), str(TOKENS), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    facts = json.loads(out.read_text())
    assert facts["ready"] and facts["config"]["config"]["model_transaction_policy"]["decoupled"]
    assert [t["name"] for t in facts["metadata"]["inputs"]] == ["input_ids", "input_lengths", "request_output_len"]
    g = facts["greedy_empty_final"]
    assert g["tokens"] == reference and g["finals"] == [False] * TOKENS + [True] and not g["errors"]
    assert g["shapes"][:-1] == [[1, 1, 1]] * TOKENS and g["shapes"][-1] is None and set(g["ids"]) == {"gen-1"}
    assert facts["greedy"]["tokens"] == reference and facts["greedy"]["finals"] == [False] * (TOKENS - 1) + [True]
    sampled = facts["sampled"]["tokens"]
    assert len(sampled) == TOKENS and sampled == facts["sampled_again"]["tokens"]  # same seed, same tokens
    assert sampled != reference and all(0 <= t < hub_models.VOCAB for t in sampled)
    assert facts["cancelled"]["cancelled_after"] == 3
    assert engine.wait_idle(timeout=60) and engine.batch_tokens - before < LONG // 4


def test_concurrent_generations_share_decode_steps(llm):
    """Four requests waiting when the engine starts decode in lock-step (one step per token for all four);
    a request that arrives later joins the running batch and still yields its own greedy tokens."""
    _, folder, _ = llm
    prompts = [[5, 17, 42, 8, 3], [60, 2], [7, 7, 7, 1, 90, 33, 4], [11]]
    step = StepModel(folder)
    solo = {tuple(p): greedy_decode(step, p, 20) for p in prompts + [[99, 98, 97]]}
    long_solo = greedy_decode(step, [1, 2, 3], 300)

    async def scenario():
        engine = GenerationEngine(StepModel(folder), "llama", "1")
        waiting = [engine.submit(GenerationParams(prompt=p, max_tokens=20, temperature=0.0)) for p in prompts]
        engine.start()
        together = [[e.token async for e in g] for g in waiting]
        lockstep = (engine.steps, engine.batch_tokens)
        first = engine.submit(GenerationParams(prompt=[1, 2, 3], max_tokens=300))
        stream = first.__aiter__()
        head = [(await stream.__anext__()).token for _ in range(5)]
        late = engine.submit(GenerationParams(prompt=[99, 98, 97], max_tokens=20))
        late_tokens = [e.token async for e in late]
        rest = [e.token async for e in stream]
        steps = engine.steps - lockstep[0]
        await engine.stop()
        return together, lockstep, head + rest, late_tokens, steps

    together, lockstep, long_tokens, late_tokens, steps = asyncio.run(scenario())
    assert together == [solo[tuple(p)] for p in prompts]
    assert lockstep == (19, 4 * 19)  # 19 decode steps after the 4 prefills, 4 tokens each
    assert long_tokens == long_solo and late_tokens == solo[(99, 98, 97)]
    assert steps < 299 + 19  # the late request's decode steps were shared with the running one


def test_sdk_generate_yields_tokens_and_leaving_early_stops_the_generation(llm, server):
    from modelport.client import Client, ClientError

    _, _, reference = llm
    engine = engine_of(server)
    with Client(inference=server.address) as client:
        assert list(client.generate("llama", PROMPT, max_tokens=TOKENS)) == reference
        before = engine.batch_tokens
        stream = client.generate("llama", PROMPT, max_tokens=LONG)
        head = [next(stream) for _ in range(3)]
        stream.close()  # the caller leaves the loop: the stream is cancelled
        assert head == reference[:3] and engine.wait_idle(timeout=60)
        assert engine.batch_tokens - before < LONG // 4
        with pytest.raises(ClientError) as e:
            list(client.generate("llama", [hub_models.VOCAB + 1], max_tokens=2))
        assert "outside the model's vocabulary" in e.value.message


def test_cli_generate_prints_the_tokens(llm, server):
    from typer.testing import CliRunner

    from gateway.cli import app

    _, _, reference = llm
    args = ["--inference", server.address, "generate", "llama", "--input-ids", ",".join(map(str, PROMPT)),
            "--max-tokens", "8"]
    res = CliRunner().invoke(app, args, catch_exceptions=False, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert res.stdout.split() == [str(t) for t in reference[:8]]
    res = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    data = json.loads(res.stdout)
    assert data["output_ids"] == reference[:8] and data["tokens_per_s"] > 0
    bad = CliRunner().invoke(app, ["--inference", server.address, "generate", "llama", "--input-ids", "a,b"])
    assert bad.exit_code == 2 and "--input-ids must be integers" in bad.output


def test_a_vanished_client_whose_stream_stayed_open_stops_the_generation(server, stub):
    """Like tritonclient's streams, the client never half-closes its side: it reads three tokens and goes away
    (cancel). The request's task must be cancelled with the stream, not left generating for nobody."""
    import threading

    engine = engine_of(server)
    before = engine.batch_tokens
    hold = threading.Event()

    def requests():
        yield request(PROMPT, LONG)
        hold.wait(120)  # the send side stays open, as a client that will send more later

    call = stub.ModelStreamInfer(requests(), timeout=120)
    received = [next(call) for _ in range(3)]
    call.cancel()
    try:
        assert tokens_of(received) and engine.wait_idle(timeout=60)
        assert engine.batch_tokens - before < LONG // 4, "the generation went on after its client was gone"
    finally:
        hold.set()


def test_stream_inflight_bound_counts_generations_not_tokens(llm, tmp_path):
    """max_stream_inflight bounds the requests of a stream read and not yet answered: with a bound of 1, a second
    generation is read only once the first one's last token went out, however many tokens it streams."""
    repo, _, reference = llm
    settings = InferenceSettings(port=0, host="127.0.0.1", store=tmp_path / "store", repository=repo,
                                 max_stream_inflight=1, warmup=False)
    with BackgroundServer(InferenceService(settings)) as srv:
        channel = grpc.insecure_channel(srv.address, options=channel_options())
        try:
            responses = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
                iter([request(PROMPT, 12, request_id="a"), request(PROMPT, 12, request_id="b")]), timeout=60))
        finally:
            channel.close()
    ids = [r.infer_response.id for r in responses]
    assert ids == ["a"] * 12 + ["b"] * 12, ids
    assert tokens_of(responses) == reference[:12] * 2
