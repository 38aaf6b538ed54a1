"""Scale-out rehearsal on one machine: N inference replicas behind client-side load balancing.

Three real inference services (onnxruntime, one tiny ONNX model from the same Triton-layout
repository) run on 127.0.0.1 port 0. The client uses one channel whose target lists every
replica (``ipv4:127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3``) with the round_robin policy,
client-side grpc.health.v1 checking and a retry policy (UNAVAILABLE, CANCELLED) for the KServe
service (``modelport.runtime.channels.balanced_options``): what a Kubernetes client does with the
headless Service's DNS records. Load must reach every replica, a replica that is not SERVING
must get none, and draining one replica in the middle of the load must fail no request.
Request loops are bounded; no sleeps.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from modelport.runtime.background import BackgroundServer
from modelport.runtime.channels import balanced_options, balanced_target, make_channel

MODEL = "tiny"
REPLICAS = 3
BIAS = np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """A Triton-layout repository with one model: y = relu(x + bias), x: FP32 [batch, 4]."""
    repo = tmp_path_factory.mktemp("repo")
    (repo / MODEL / "1").mkdir(parents=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [4], BIAS.tolist())
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
        "tiny", [x], [y], initializer=[bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, repo / MODEL / "1" / "model.onnx")
    return repo


def replica(repository: Path, tmp_path_factory, ready: bool = True) -> BackgroundServer:
    settings = InferenceSettings(host="127.0.0.1", port=0, store=tmp_path_factory.mktemp("store"),
                                 repository=repository, intra_op_threads=1, execution_provider="cpu",
                                 grace_period_s=5)
    return BackgroundServer(InferenceService(settings), ready=ready).start()


def start_replicas(repository: Path, tmp_path_factory, n: int = REPLICAS) -> list[BackgroundServer]:
    return [replica(repository, tmp_path_factory) for _ in range(n)]


def infer_request(i: int) -> tuple[pb.ModelInferRequest, np.ndarray]:
    x = np.array([[i % 7, -(i % 5), 0.25, -3.0]], dtype=np.float32)
    req = pb.ModelInferRequest(model_name=MODEL, id=str(i))
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(x.tobytes())
    return req, np.maximum(x + BIAS, 0)


def check_reply(reply: pb.ModelInferResponse, expected: np.ndarray) -> None:
    (out,) = reply.outputs
    assert out.name == "y" and list(out.shape) == [1, 4]
    got = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(1, 4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def inference_count(address: str) -> int:
    """Requests this replica executed for the model, from its own KServe ModelStatistics."""
    with grpc.insecure_channel(address) as ch:
        stats = pb_grpc.GRPCInferenceServiceStub(ch).ModelStatistics(
            pb.ModelStatisticsRequest(name=MODEL), timeout=10)
    return sum(s.inference_count for s in stats.model_stats)


def balanced_channel(replicas: list[BackgroundServer]) -> grpc.Channel:
    target = balanced_target([r.address for r in replicas])
    assert target == "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    ch = make_channel(target, options=balanced_options(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.2))
    grpc.channel_ready_future(ch).result(timeout=30)
    return ch


def run_window(stub, start: int, count: int, window: int = 6) -> list[int]:
    """Issue ``count`` requests (ids from ``start``) with up to ``window`` in flight.

    Returns the ids sent; every reply is checked, and any failure raises.
    """
    pending: list[tuple[Future, np.ndarray]] = []
    sent = []
    for i in range(start, start + count):
        req, expected = infer_request(i)
        pending.append((stub.ModelInfer.future(req, timeout=30, wait_for_ready=True), expected))
        sent.append(i)
        if len(pending) >= window:
            fut, exp = pending.pop(0)
            check_reply(fut.result(), exp)
    for fut, exp in pending:
        check_reply(fut.result(), exp)
    return sent


def test_round_robin_spreads_load_over_every_replica(repository, tmp_path_factory):
    replicas = start_replicas(repository, tmp_path_factory)
    try:
        before = [inference_count(r.address) for r in replicas]  # warm-up runs are not requests
        with balanced_channel(replicas) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            # sequential calls: round_robin hands each ready replica its turn
            for i in range(30):
                req, expected = infer_request(i)
                check_reply(stub.ModelInfer(req, timeout=30, wait_for_ready=True), expected)
            sent = run_window(stub, 30, 60)
        served = [inference_count(r.address) - b for r, b in zip(replicas, before, strict=True)]
        assert sum(served) == 30 + len(sent) == 90
        assert all(n > 0 for n in served), f"some replica got no request: {served}"
        # round robin, not just "somewhere": no replica took more than half of the calls
        assert max(served) <= 45, served
    finally:
        for r in replicas:
            r.stop(grace=1)


def test_draining_one_replica_mid_load_fails_no_request(repository, tmp_path_factory):
    replicas = start_replicas(repository, tmp_path_factory)
    victim, survivors = replicas[0], replicas[1:]
    stopped = threading.Event()

    def drain_victim():
        victim.stop(grace=5)  # health NOT_SERVING, GOAWAY, in-flight calls finish, then gone
        stopped.set()

    try:
        base = [inference_count(r.address) for r in replicas]
        with balanced_channel(replicas) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            before = run_window(stub, 0, 60)  # phase 1: all three replicas serve
            victim_served = inference_count(victim.address) - base[0]
            mid_counts = [inference_count(r.address) for r in survivors]
            # phase 2: a burst of 150 calls in flight, the drain starts, 150 more follow.
            # Without the retry policy a share of these fail (CANCELLED: received by the victim's
            # transport, never dispatched, when it stopped); with it, none may.
            burst = [(stub.ModelInfer.future(req, timeout=60), exp)
                     for req, exp in map(infer_request, range(1000, 1150))]
            killer = threading.Thread(target=drain_victim, name="drain-victim")
            killer.start()
            burst += [(stub.ModelInfer.future(req, timeout=60), exp)
                      for req, exp in map(infer_request, range(1150, 1300))]
            failures = []
            for fut, exp in burst:
                try:
                    check_reply(fut.result(), exp)
                except grpc.RpcError as err:
                    failures.append(f"{err.code().name}: {err.details()}")
            killer.join(timeout=60)
            assert stopped.is_set() and not killer.is_alive()
            assert failures == []
            # phase 3: the victim is gone, its address still in the target list
            after = run_window(stub, 5000, 60)
        assert (len(before), len(after)) == (60, 60)  # each returned a checked reply
        assert victim_served > 0, "the victim served nothing before it was drained"
        survivor_counts = [inference_count(r.address) for r in survivors]
        gained = [c - m for c, m in zip(survivor_counts, mid_counts, strict=True)]
        assert all(g > 0 for g in gained), gained
        # the survivors took phase 3 whole and whatever of phase 2 the victim did not finish;
        # a retried call is counted once, by the replica that executed it
        assert len(after) <= sum(gained) <= len(burst) + len(after), gained
    finally:
        for r in replicas:
            if r.running is not None:
                r.stop(grace=1)


def test_a_replica_that_is_not_serving_gets_no_calls(repository, tmp_path_factory):
    """Client-side health checking: a replica still starting (NOT_SERVING, no model loaded yet)
    is skipped; without it round_robin would hand it every third call (NOT_FOUND)."""
    warm = start_replicas(repository, tmp_path_factory, n=2)
    cold = replica(repository, tmp_path_factory, ready=False)
    try:
        with balanced_channel([*warm, cold]) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            for i in range(30):
                req, expected = infer_request(i)
                check_reply(stub.ModelInfer(req, timeout=30), expected)
        served = [inference_count(r.address) for r in warm]
        assert sum(served) == 30 and all(n > 0 for n in served), served
        with grpc.insecure_channel(cold.address) as ch:
            err = None
            try:
                pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(infer_request(0)[0], timeout=10)
            except grpc.RpcError as e:
                err = e
        # proof that a call routed there would have failed
        assert err is not None and err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), err
    finally:
        for r in (*warm, cold):
            r.stop(grace=1)


def test_tritonclient_balances_with_the_same_service_config(repository, tmp_path_factory):
    """A stock Triton client (its own venv: tritonclient pins protobuf < 7) spreads its calls
    over the replicas when given the service config that ``balanced_options`` uses."""
    import json
    import os
    import subprocess

    from modelport.runtime.channels import service_config

    root = Path(__file__).resolve().parent.parent
    py = next((c for c in (os.environ.get("MODELPORT_TRITON_PYTHON", ""), str(root / ".venv-triton/bin/python"))
               if c and Path(c).is_file()), None)
    if py is None:
        pytest.fail("no tritonclient venv: run `make triton-venv` (or set MODELPORT_TRITON_PYTHON to a python "
                    "with tritonclient[grpc] installed)")
    replicas = start_replicas(repository, tmp_path_factory, n=2)
    try:
        target = balanced_target([r.address for r in replicas])
        code = f"""
import json, numpy as np, tritonclient.grpc as tc
client = tc.InferenceServerClient(url={target!r}, channel_args=[
    ("grpc.service_config", {service_config()!r}), ("grpc.enable_retries", 1),
    ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
outs = []
for i in range(20):
    x = tc.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.full((1, 4), float(i % 3), np.float32))
    outs.append(client.infer({MODEL!r}, [x]).as_numpy("y").tolist())
print(json.dumps(outs))
"""
        proc = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs = json.loads(proc.stdout)
        for i, out in enumerate(outs):
            np.testing.assert_allclose(out, np.maximum(np.full((1, 4), i % 3) + BIAS, 0), atol=1e-6)
        served = [inference_count(r.address) for r in replicas]
        assert sum(served) == 20 and all(n > 0 for n in served), served
    finally:
        for r in replicas:
            r.stop(grace=1)
