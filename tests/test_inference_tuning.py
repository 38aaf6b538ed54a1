"""Execution chosen at load (inference_svc/tuning.py) and the serving modes it turns on: inline runs on the
event loop, automatic (eager) batching, a one-core-per-run session beside an all-cores one. The rules are
tested on given timings; the modes with gated model functions (deterministic order, no sleeps) and through a
real server under concurrent load, checking every answer and the drain at shutdown. No wall-clock thresholds:
what a measurement decides is asserted only where the rule, not the clock, fixes it."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from inference_fixtures import fixed, mlp, mlp_expected, reshape

from inference_svc import tuning
from inference_svc.batching import BatchPolicy, Scheduler
from inference_svc.manager import LoadOptions, ModelManager
from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from inference_svc.stats import VersionStats
from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from modelport.runtime.background import BackgroundServer


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


# --- the rules ------------------------------------------------------------------------------------

def test_rules_on_given_timings():
    # An MLP: 11 us on every core, 10 us on one; a batch of 8 costs 20 us (2.5 us per item).
    assert tuning.one_thread_is_enough(11e-6, 10e-6)
    assert tuning.batching_pays(11e-6, 20e-6)
    assert tuning.runs_inline(11e-6, 500)
    # MobileNetV2 on an idle 2-core machine: 3.5 ms on both cores, 6 ms on one, batch 8 as costly per item.
    assert not tuning.one_thread_is_enough(3.5e-3, 6e-3)
    assert not tuning.batching_pays(6e-3, 8 * 6e-3)
    assert not tuning.runs_inline(3.5e-3, 500)
    assert tuning.concurrent_runs_pay(3.5e-3, 6e-3, 2)  # two 6 ms runs side by side beat two 3.5 ms in a row
    assert not tuning.concurrent_runs_pay(3.5e-3, 7.5e-3, 2)  # perfect scaling across cores: nothing to gain
    # Inline or batched: a tiny model goes inline (merging would save nothing next to a request's gRPC cost);
    # one that batching helps and that runs longer than a tenth of the budget is batched on the executor.
    assert tuning.inline_or_batch(11e-6, True, 500) == (True, False)
    assert tuning.inline_or_batch(300e-6, True, 500) == (False, True)
    assert tuning.inline_or_batch(300e-6, False, 500) == (True, False)
    assert tuning.inline_or_batch(3e-3, False, 500) == (False, False)
    assert tuning.inline_or_batch(3e-3, True, 500) == (False, True)
    # Boundaries are inclusive.
    assert tuning.one_thread_is_enough(1.0, tuning.NARROW_SLACK)
    assert tuning.batching_pays(1.0, tuning.PROBE_BATCH * tuning.BATCH_PAYS_RATIO)
    assert tuning.runs_inline(500e-6, 500) and not tuning.runs_inline(501e-6, 500)


def test_slow_runs_are_measured_once_and_fast_ones_over_rounds(monkeypatch):
    """A run past SLOW_RUN_S (a multi-GB model's load-time probe) gets one warm-up and one timed round; a fast
    one two warm-ups and at least five rounds. A clock that advances only when a session runs makes the
    counts exact."""
    now = [0.0]
    monkeypatch.setattr(tuning.time, "perf_counter", lambda: now[0])

    class Session:
        def __init__(self, seconds):
            self.seconds, self.runs = seconds, 0

        def run(self, _outputs, _feeds):
            self.runs += 1
            now[0] += self.seconds

    big, probe = Session(2.0), Session(14.0)
    assert tuning.interleaved_medians_s([(big, {}), (probe, {})]) == [2.0, 14.0]
    assert (big.runs, probe.runs) == (2, 2)  # one warm-up and one timed run each
    small = Session(0.001)
    assert tuning.interleaved_medians_s([(small, {})], budget_s=0.1) == [pytest.approx(0.001)]
    assert 2 + 99 <= small.runs <= 2 + 101  # two warm-ups, then rounds until the 0.1 s budget is spent


def test_plan_keeps_what_the_user_set(tmp_path):
    path = mlp(tmp_path / "m.onnx")
    opts = LoadOptions(execution_provider="cpu", intra_op_threads=1)
    untuned = tuning.plan_execution(path, opts, None, tune=False, may_auto_batch=True, inline_max_us=500)
    assert (untuned.intra_op_threads, untuned.inline, untuned.auto_batching, untuned.timings_us) == (1, False, False, {})
    # Threads given: never changed; batching configured elsewhere: never switched on.
    kept = tuning.plan_execution(path, opts, None, tune=True, may_auto_batch=False, inline_max_us=500)
    assert kept.intra_op_threads == 1 and not kept.auto_batching and kept.concurrent_session is None
    assert "batch1" in kept.timings_us and not any(k.startswith("batch8") for k in kept.timings_us)
    # An inline budget of 0 us: nothing can be short enough.
    never = tuning.plan_execution(path, opts, None, tune=True, may_auto_batch=False, inline_max_us=0)
    assert not never.inline
    # Without a dynamic first dimension there is nothing to batch.
    fixed_plan = tuning.plan_execution(fixed(tmp_path / "f.onnx"), LoadOptions(execution_provider="cpu"), None,
                                       tune=True, may_auto_batch=True, inline_max_us=500)
    assert not fixed_plan.auto_batching and not any(k.startswith("batch8") for k in fixed_plan.timings_us)


def test_a_compute_bound_model_keeps_every_core_for_a_lone_request(tmp_path):
    """A model whose run is past NARROW_TRY_MAX_S keeps onnxruntime's all-core session for a lone request
    whatever the two timings were (a busy machine at load makes all cores look no faster); waiting requests get
    one-thread runs side by side when that pays."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = [numpy_helper.from_array(rng.standard_normal((1024, 1024)).astype(np.float32), f"W{i}") for i in range(4)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"W{i}"], ["y" if i == 3 else f"h{i + 1}"])
             for i in range(4)]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [512, 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512, 1024])], w)
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    plan = tuning.plan_execution(path, LoadOptions(execution_provider="cpu"), None, tune=True, may_auto_batch=True,
                                 inline_max_us=500, may_add_instances=True)
    assert plan.timings_us["all_cores"] > tuning.NARROW_TRY_MAX_S * 1e6, plan.timings_us  # compute-bound here
    assert plan.intra_op_threads == 0 and not plan.inline, plan.describe()
    if tuning.cores() > 1 and tuning.concurrent_runs_pay(plan.timings_us["all_cores"] / 1e6,
                                                          plan.timings_us["one_thread"] / 1e6, tuning.cores()):
        assert plan.concurrent_session is not None and plan.instances == tuning.cores()


def test_a_model_whose_outputs_do_not_follow_the_batch_is_never_auto_batched(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    # Declares y [N, 4] but sums over the batch: a batch of 8 answers one row, which cannot be split back.
    g = helper.make_graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)], "sum",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [onnx.numpy_helper.from_array(np.array([0], np.int64), "axes")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "sum.onnx")
    plan = tuning.plan_execution(tmp_path / "sum.onnx", LoadOptions(execution_provider="cpu"), None, tune=True,
                                 may_auto_batch=True, inline_max_us=500)
    assert not plan.auto_batching and not any(k.startswith("batch8") for k in plan.timings_us)


def test_a_model_that_cannot_run_on_zeros_is_served_untuned(tmp_path):
    # reshape: its metadata accepts any length, but only 4 elements run (a zero-filled length-1 input fails).
    plan = tuning.plan_execution(reshape(tmp_path / "r.onnx"), LoadOptions(execution_provider="cpu"), None,
                                 tune=True, may_auto_batch=True, inline_max_us=500)
    assert not plan.inline and not plan.auto_batching and plan.concurrent_session is None
    assert any("could not time the model on zero inputs" in w for w in plan.warnings)


# --- inline runs -----------------------------------------------------------------------------------

def test_inline_runs_answer_every_concurrent_request_exactly(tmp_path):
    async def scenario():
        manager = ModelManager(defaults=LoadOptions(execution_provider="cpu"), tune=True, inline_max_us=10**9)
        mv = await manager.load("m", mlp(tmp_path / "m.onnx"), 1)
        assert mv.scheduler.inline  # a budget of 1000 s: every model is short enough
        xs = [np.full((1 + i % 3, 4), i, np.float32) for i in range(200)]
        outs = await asyncio.gather(*(manager.infer(mv, {"x": x}, []) for x in xs))
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_allclose(out["y"], mlp_expected(x), rtol=1e-6)
        assert mv.stats.success.count == 200 and mv.stats.fail.count == 0
        # Without a batch dimension (inline runs never merge) Triton counts one inference per request.
        assert mv.policy.max_batch_size == 0 and mv.stats.inference_count == 200
        await manager.close()

    run(scenario())


def test_inline_model_moves_to_the_executor_after_three_over_long_runs():
    async def scenario():
        calls = []

        def model(inputs, outputs):
            calls.append(threading.current_thread() is threading.main_thread())
            return {"y": inputs["x"] * 2}

        # Every run is "over long" (limit 0 s): the first three run inline, then the executor takes over.
        sched = Scheduler("m", "1", model, BatchPolicy(), VersionStats(), inline=True, inline_limit_s=0.0)
        sched.start()
        x = np.ones((1, 2), np.float32)
        for _ in range(4):
            out, _ = await sched.submit({"x": x}, [], 1)
            np.testing.assert_array_equal(out["y"], x * 2)
        assert calls == [True, True, True, False] and not sched.inline
        await sched.stop()

    run(scenario())


def test_an_idle_inline_run_records_what_an_execution_records_and_a_failure_frees_the_instance():
    async def scenario():
        from prometheus_client import REGISTRY

        failing = [False]

        def model(inputs, outputs):
            if failing[0]:
                raise RuntimeError("the graph cannot take this input")
            return {"y": inputs["x"] + 1}

        stats = VersionStats()
        sched = Scheduler("inline-direct", "1", model, BatchPolicy(), stats, inline=True)
        sched.start()
        x = np.ones((2, 3), np.float32)
        for _ in range(3):  # idle, empty queue: each runs at once on the loop (no queue entry, no future)
            out, queue_ns = await sched.submit({"x": x}, [], 2)
            np.testing.assert_array_equal(out["y"], x + 1)
            assert queue_ns >= 0
        assert (stats.execution_count, stats.inference_count, stats.queue.count, stats.compute_infer.count) == (3, 6, 3, 3)
        assert stats.batches[2].compute_infer.count == 3 and stats.compute_input.count == 3
        labels = {"model": "inline-direct", "version": "1"}
        assert REGISTRY.get_sample_value("modelport_inference_compute_seconds_count", labels) == 3
        assert REGISTRY.get_sample_value("modelport_inference_batch_size_sum", labels) == 6
        assert REGISTRY.get_sample_value("modelport_inference_queue_seconds_count", labels) == 3
        failing[0] = True
        with pytest.raises(RuntimeError, match="cannot take this input"):
            await sched.submit({"x": x}, [], 2)
        assert stats.execution_count == 3  # a failed run is no execution
        assert sched.inflight == 0 and sched.queued == 0
        failing[0] = False
        out, _ = await sched.submit({"x": x}, [], 2)  # the instance was given back
        np.testing.assert_array_equal(out["y"], x + 1)
        await sched.drain(5)
        await sched.stop()

    run(scenario())


# --- automatic (eager) batching ------------------------------------------------------------------------

class Gated:
    """y = x * factor; blocks until ``gate`` opens; records each executed batch size."""

    def __init__(self, factor: float = 10.0):
        self.factor = factor
        self.gate, self.started = threading.Event(), threading.Event()
        self.batches: list[int] = []

    def __call__(self, inputs, outputs):
        self.started.set()
        assert self.gate.wait(30), "gate never opened"
        self.batches.append(inputs["x"].shape[0])
        return {"y": inputs["x"] * self.factor}


def test_eager_batching_runs_a_lone_request_at_once_and_merges_only_while_busy():
    async def scenario():
        model = Gated()
        policy = BatchPolicy(max_batch_size=4, dynamic=True, max_queue_delay_us=0, eager=True,
                             enforce_max_batch=False)
        sched = Scheduler("m", "1", model, policy, VersionStats())
        sched.start()
        first = asyncio.create_task(sched.submit({"x": np.zeros((1, 2), np.float32)}, [], 1))
        assert await asyncio.to_thread(model.started.wait, 30)  # ran at once: nothing waited to gather
        xs = [np.full((1, 2), i, np.float32) for i in range(1, 7)]
        waiting = [asyncio.create_task(sched.submit({"x": x}, [], 1)) for x in xs]
        big = asyncio.create_task(sched.submit({"x": np.ones((6, 2), np.float32)}, [], 6))  # > max: alone
        await asyncio.sleep(0)
        model.gate.set()
        await first
        for x, t in zip(xs, waiting, strict=True):
            out, _ = await t
            np.testing.assert_array_equal(out["y"], x * 10)
        out, _ = await big
        np.testing.assert_array_equal(out["y"], np.full((6, 2), 10, np.float32))
        assert model.batches[0] == 1 and sorted(model.batches[1:]) == [2, 4, 6]
        assert sched.stats.inference_count == 13
        await sched.stop()

    run(scenario())


# --- a lone request on every core, waiting ones side by side ---------------------------------------------

def test_solo_run_takes_every_instance_and_waiting_requests_run_side_by_side():
    async def scenario():
        solo, side = Gated(factor=10.0), Gated(factor=10.0)
        sched = Scheduler("m", "1", side, BatchPolicy(instances=2), VersionStats(), solo_run=solo)
        sched.start()
        x = np.ones((1, 2), np.float32)
        lone = asyncio.create_task(sched.submit({"x": x}, [], 1))
        assert await asyncio.to_thread(solo.started.wait, 30)
        queued = [asyncio.create_task(sched.submit({"x": x * (i + 2)}, [], 1)) for i in range(3)]
        await asyncio.sleep(0)
        assert sched.queued == 3 and not side.started.is_set()  # the solo run holds both instances
        solo.gate.set()
        await lone
        assert await asyncio.to_thread(side.started.wait, 30)
        side.gate.set()
        for i, t in enumerate(queued):
            out, _ = await t
            np.testing.assert_array_equal(out["y"], x * (i + 2) * 10)
        assert solo.batches == [1] and side.batches == [1, 1, 1]
        # Idle again: the next lone request runs on every core.
        out, _ = await sched.submit({"x": x}, [], 1)
        assert solo.batches == [1, 1]
        await sched.drain(5)
        await sched.stop()

    run(scenario())


# --- through a real server with the defaults -------------------------------------------------------------

@pytest.fixture(params=["defaults", "batched"])
def default_server(request, tmp_path, monkeypatch):
    """The defaults as they are (the tiny MLP runs inline), and forced onto the other path: no inline budget
    and batching taken to pay whatever the timings say, so it runs automatically batched on the executor."""
    repo = tmp_path / "repo"
    mlp(repo / "mlp" / "1" / "model.onnx")  # no config.pbtxt: everything left to the defaults
    extra = {}
    if request.param == "batched":
        monkeypatch.setattr(tuning, "BATCH_PAYS_RATIO", 1e9)
        extra["inline_max_us"] = 0
    srv = BackgroundServer(InferenceService(InferenceSettings(port=0, host="127.0.0.1", store=tmp_path / "store",
                                                              repository=repo, **extra))).start()
    srv.mode = request.param
    yield srv
    srv.stop()


def _call(stub, x: np.ndarray) -> np.ndarray:
    return codec.decode_outputs(stub.ModelInfer(codec.make_infer_request("mlp", {"x": x}), timeout=60))["y"]


def test_defaults_answer_concurrent_load_exactly_and_report_their_choices(default_server):
    with grpc.insecure_channel(default_server.address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        cfg = stub.ModelConfig(pb.ModelConfigRequest(name="mlp")).config
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["execution"] in ("inline", "executor") and "measured:" in params["tuning"]
        if default_server.mode == "batched":
            assert (params["execution"], params["auto_batching"]) == ("executor", "on")
        if params["auto_batching"] == "on":  # Triton's view: a batch dimension, dynamic batching, no delay
            assert cfg.max_batch_size == tuning.AUTO_MAX_BATCH and cfg.HasField("dynamic_batching")
            assert list(cfg.input[0].dims) == [4]
        else:
            assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
        xs = [np.random.default_rng(i).random((1 + i % 4, 4), dtype=np.float32) for i in range(400)]
        with ThreadPoolExecutor(32) as pool:
            outs = list(pool.map(lambda x: _call(stub, x), xs))
        for x, y in zip(xs, outs, strict=True):
            np.testing.assert_allclose(y, mlp_expected(x), rtol=1e-5)
        # A request larger than any automatic batch is still served.
        big = np.ones((tuning.AUTO_MAX_BATCH + 8, 4), np.float32)
        np.testing.assert_allclose(_call(stub, big), mlp_expected(big), rtol=1e-5)
        st = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp")).model_stats[0]
        assert st.inference_stats.success.count == 401 and st.inference_stats.fail.count == 0
        # With a batch dimension Triton counts batch elements, without one requests.
        elements = sum(x.shape[0] for x in xs) + big.shape[0]
        assert st.inference_count == (elements if cfg.max_batch_size else 401)


def test_shutdown_drains_requests_in_flight(default_server):
    """Every request that reached the model is answered, correctly; the rest end at once, refused (UNAVAILABLE,
    or CANCELLED for calls grpc received but had not dispatched when the server stopped)."""
    mv = default_server.service.manager.get("mlp")
    xs = [np.full((2, 4), i, np.float32) for i in range(64)]
    with grpc.insecure_channel(default_server.address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        futures = [stub.ModelInfer.future(codec.make_infer_request("mlp", {"x": x}), timeout=60) for x in xs]
        futures[0].result()  # requests are flowing
        default_server.stop(grace=30)  # SIGTERM path: NOT_SERVING, refuse new calls, finish accepted ones
        answered = 0
        for x, f in zip(xs, futures, strict=True):
            try:
                y = codec.decode_outputs(f.result())["y"]
            except grpc.RpcError as err:
                assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), err.details()
                continue
            np.testing.assert_allclose(y, mlp_expected(x), rtol=1e-5)
            answered += 1
    assert answered >= 1
    assert mv.stats.success.count == answered and mv.stats.fail.count == 0
    assert mv.state == "UNAVAILABLE"  # drained and released


# --- the benchmark's load client against the real server ---------------------------------------------------

def test_benchmark_load_client_counts_every_answer_and_every_failure(default_server):
    """benchmarks/peers/load_client.py (the unmodified tritonclient, in its own venv) is what bench_serving
    measures every server with: it must count answers exactly and count a failing model as errors."""
    import json
    import subprocess
    from pathlib import Path

    from test_inference_triton import triton_python

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "peers" / "load_client.py"

    def load(model: str) -> dict:
        out = subprocess.run([triton_python(), str(script), "--url", default_server.address, "--model", model,
                              "--input", "x", "--shape", "1,4", "--concurrency", "4", "--max-calls", "200",
                              "--seconds", "60"], capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout)

    good = load("mlp")
    assert (good["calls"], good["errors"], len(good["latencies_s"])) == (200, 0, 200)
    st = default_server.service.manager.get("mlp").stats
    assert st.success.count == 200 + 4 * 2  # the timed calls and each thread's two warm-up calls
    bad = load("nope")
    assert (bad["calls"], bad["errors"]) == (0, 200) and "not loaded" in bad["first_error"]
