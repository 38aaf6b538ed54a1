"""Serving overhead and dynamic batching of the inference service.

For a small MLP (built with onnx.helper) and MobileNetV2 (``keras.applications``, ``weights=None``,
converted to ONNX once in a separate subprocess so this process never imports TensorFlow), at
client concurrency 1 and 16 with batch-1 requests:

* baseline: onnxruntime ``InferenceSession.run`` in-process, same model, same intra-op threads,
  same batch, called from the same number of threads;
* served: the inference service in its own process (``python -m inference_svc``) over gRPC
  KServe ``ModelInfer`` (raw tensors), without dynamic batching;
* served + dynamic batching: the same with ``dynamic_batching`` on;
* at concurrency 1 also: requests sent one at a time on one ``ModelStreamInfer`` stream (Triton's
  streaming API: no per-call HTTP/2 stream setup), with the tensors in POSIX shared memory regions
  (Triton's ``system_shared_memory`` extension) instead of the gRPC message, and both;
* the transport floor: a bare ``grpc.aio`` server with no modelport code (generic handlers that
  answer 4 KB, unary and streaming) called with an empty and with a model-sized request — the least
  any Python gRPC server costs per call on this machine, and so the best served/in-process ratio
  possible each way.

Throughput (requests/s), p50 and p99 latency, and ratios to the baseline measured in the same run.

    .venv/bin/python -m benchmarks.bench_serving            # full (a few minutes)
    .venv/bin/python -m benchmarks.bench_serving --quick    # shorter runs; MobileNetV2 only if cached
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common

CACHE = Path(tempfile.gettempdir()) / "modelport-bench-serving"
MOBILENET = CACHE / "mobilenetv2.onnx"
CONCURRENCY = (1, 16)
# The goal MLP (~5.8M parameters: per-call compute outweighs the gRPC overhead, the case dynamic
# batching is for) and a tiny one (~0.27M parameters: overhead-bound) as the contrast.
MLP_SIZES = (784, 2048, 2048, 10)
TINY_MLP_SIZES = (784, 256, 256, 10)
THREADS = max(1, os.cpu_count() or 1)
DELAY_US = 500
MAX_BATCH = 32
# The other ways to send one request at a time: (key, system shared memory, ModelStreamInfer stream).
C1_WAYS = [("served_stream", False, True), ("served_shm", True, False), ("served_stream_shm", True, True)]
C1_LABELS = {"served_stream": "served, one ModelStreamInfer stream", "served_shm": "served, system shared memory",
             "served_stream_shm": "served, stream + shared memory"}

EXPORT_SCRIPT = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import keras
from modelport.conversion.onnx_export import keras_model_to_onnx
keras.utils.set_random_seed(0)
model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
keras_model_to_onnx(model, sys.argv[1])
"""


FLOOR_SERVER = """
import asyncio, sys
import grpc

async def main():
    limit = 2**31 - 1
    server = grpc.aio.server(options=[("grpc.max_send_message_length", limit),
                                      ("grpc.max_receive_message_length", limit)])
    async def echo(request, context):
        return b"r" * 4000
    async def stream(requests, context):
        async for _ in requests:
            yield b"r" * 4000
    handler = grpc.method_handlers_generic_handler("floor.Floor", {
        "Call": grpc.unary_unary_rpc_method_handler(echo), "Stream": grpc.stream_stream_rpc_method_handler(stream)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def transport_floor(payload_bytes: int, max_s: float) -> dict[str, float]:
    """Median ms of a call to a bare grpc.aio server (no modelport code) from a sync Python client, unary
    and as one message on an open stream, with an empty request and with ``payload_bytes`` of request;
    the reply is 4 KB each time. Keys: empty, payload, stream_empty, stream_payload."""
    import grpc

    from modelport.runtime.channels import channel_options

    proc = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options()) as ch:
            unary = ch.unary_unary("/floor.Floor/Call")
            stream = _Stream(ch.stream_stream("/floor.Floor/Stream"))
            out = {}
            for label, fn in (("", lambda body: unary(body, timeout=60)), ("stream_", stream)):
                for size_label, body in (("empty", b""), ("payload", b"x" * payload_bytes)):
                    t = common.time_callable(lambda body=body, fn=fn: fn(body), warmup=20, repeats=3000,
                                             max_seconds=max_s)
                    out[label + size_label] = t.median * 1e3
            stream.close()
            return out
    finally:
        proc.kill()
        proc.wait()


class _Stream:
    """One open bidirectional stream used call by call: send a request, wait for its response (how
    tritonclient's ``start_stream`` + ``async_stream_infer`` are used at concurrency 1).

    ``open_stream`` is a stream-stream callable (e.g. ``stub.ModelStreamInfer``); ``unwrap`` turns
    each response into the call's result."""

    def __init__(self, open_stream, unwrap=lambda r: r):
        import queue

        self._q: queue.Queue = queue.Queue()
        self._responses = open_stream(iter(self._q.get, None), timeout=3600)
        self._unwrap = unwrap

    def __call__(self, request):
        self._q.put(request)
        return self._unwrap(next(self._responses))

    def close(self) -> None:
        self._q.put(None)
        for _ in self._responses:
            pass


def _stream_infer_response(r):
    """The ModelInferResponse inside a ModelStreamInferResponse (its error as an exception)."""
    if r.error_message:
        raise RuntimeError(r.error_message)
    return r.infer_response


def served_c1(address: str, model: str, path: Path, name: str, x: np.ndarray, max_calls: int, max_s: float, *,
              shm: bool, stream: bool):
    """ModelInfer at concurrency 1 through a ModelStreamInfer stream (``stream``) and/or with the input
    and output in system shared memory regions (``shm``)."""
    import grpc
    import onnxruntime as ort

    from modelport.kserve import codec
    from modelport.kserve import shm as kshm
    from modelport.kserve.shm import ShmRef
    from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
    from modelport.runtime.channels import channel_options

    ch = grpc.insecure_channel(address, options=channel_options())
    stub = pb_grpc.GRPCInferenceServiceStub(ch)
    send = (_Stream(stub.ModelStreamInfer, _stream_infer_response) if stream
            else (lambda req: stub.ModelInfer(req, timeout=60)))
    segs = []
    try:
        if not shm:
            req = codec.make_infer_request(model, {name: x})

            def call():
                codec.decode_outputs(send(req))
        else:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            out_name = sess.get_outputs()[0].name
            out_bytes = sess.run([out_name], {name: x})[0].nbytes
            tag = f"{os.getpid()}_{model}"
            seg_in = kshm.Segment.create(f"/mp_bench_in_{tag}", x.nbytes)
            segs.append(seg_in)
            seg_out = kshm.Segment.create(f"/mp_bench_out_{tag}", out_bytes)
            segs.append(seg_out)
            stub.SystemSharedMemoryRegister(seg_in.register_request(f"in_{tag}"))
            stub.SystemSharedMemoryRegister(seg_out.register_request(f"out_{tag}"))
            req = kshm.make_shm_infer_request(model, {name: ("FP32", x.shape, ShmRef(f"in_{tag}", x.nbytes))},
                                               {out_name: ShmRef(f"out_{tag}", out_bytes)})

            def call():
                seg_in.write(x)
                resp = send(req)
                seg_out.read(resp.outputs[0].datatype, resp.outputs[0].shape)

        return common.measure_throughput(call, 1, max_calls=max_calls, max_seconds=max_s, warmup=3)
    finally:
        if stream:
            send.close()
        if segs:
            stub.SystemSharedMemoryUnregister(kshm.unregister_request())
        ch.close()
        for seg in segs:
            seg.close()


def build_mlp(path: Path, sizes=MLP_SIZES) -> Path:
    """An MLP (Gemm + Relu layers, random weights) with a dynamic batch dimension."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev = "x"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = np.zeros(n_out, np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        gemm_out = out if out == "y" else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [gemm_out]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        prev = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def ensure_mobilenet(allow_build: bool) -> Path | None:
    """MobileNetV2 ONNX, converted once in a TensorFlow subprocess and cached."""
    if MOBILENET.is_file():
        return MOBILENET
    if not allow_build:
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = MOBILENET.with_suffix(".tmp.onnx")
    subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, str(tmp)], cwd=common.REPO_ROOT, check=True, timeout=600)
    os.replace(tmp, MOBILENET)
    return MOBILENET


def write_repository(root: Path, models: dict[str, Path]) -> None:
    """Each model twice: ``<name>`` (no dynamic batching) and ``<name>_batched``."""
    from modelport import repository

    for name, path in models.items():
        for suffix, batching in (("", False), ("_batched", True)):
            cfg = repository.config_from_onnx(name + suffix, path, max_batch_size=MAX_BATCH,
                                              dynamic_batching=batching, max_queue_delay_us=DELAY_US,
                                              instance_count=1)
            repository.write_model(root, name + suffix, 1, path, cfg)


def input_of(path: Path) -> tuple[str, np.ndarray]:
    """The first input's name and a random batch-1 array for it."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [1] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    return inp.name, np.random.default_rng(0).random(shape, dtype=np.float32)


def baseline(path: Path, name: str, x: np.ndarray, concurrency: int, max_calls: int, max_s: float):
    """In-process InferenceSession.run from ``concurrency`` threads (same threads, same batch)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    # Same session options as the server (which turns thread spinning off by default).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {name: x}
    return common.measure_throughput(lambda: sess.run(None, feed), concurrency, max_calls=max_calls,
                                     max_seconds=max_s, warmup=3)


def served(address: str, model: str, name: str, x: np.ndarray, concurrency: int, max_calls: int, max_s: float):
    """ModelInfer over gRPC from ``concurrency`` threads sharing one channel (like tritonclient)."""
    import grpc

    from modelport.kserve import codec
    from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
    from modelport.runtime.channels import channel_options

    ch = grpc.insecure_channel(address, options=channel_options())
    stub = pb_grpc.GRPCInferenceServiceStub(ch)
    req = codec.make_infer_request(model, {name: x})

    def call():
        resp = stub.ModelInfer(req, timeout=60)
        codec.decode_outputs(resp)

    try:
        return common.measure_throughput(call, concurrency, max_calls=max_calls, max_seconds=max_s, warmup=3)
    finally:
        ch.close()


def per_item_ms(path: Path, name: str, x: np.ndarray, batches=(1, 8), max_s: float = 2.0) -> dict[int, float]:
    """In-process milliseconds per item at each batch size: whether batching can pay at all."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = {}
    for b in batches:
        feed = {name: np.repeat(x, b, axis=0)}
        t = common.time_callable(lambda feed=feed: sess.run(None, feed), warmup=2, repeats=200, max_seconds=max_s)
        out[b] = t.median * 1e3 / b
    return out


def combine(runs: list) -> common.Throughput:
    """Several measurement rounds as one: total calls over total time, all latency samples."""
    lat: list[float] = []
    for r in runs:
        lat.extend(r.latency.samples)
    errors = [r.first_error for r in runs if r.first_error]
    return common.Throughput(concurrency=runs[0].concurrency, calls=sum(r.calls for r in runs),
                             errors=sum(r.errors for r in runs), elapsed_s=sum(r.elapsed_s for r in runs),
                             items_per_call=runs[0].items_per_call, latency=common.Timing(lat),
                             first_error=errors[0] if errors else "")


def server_times(address: str, model: str) -> tuple[int, int, int]:
    """(successful requests, their total ns, session.run ns) from the server's ModelStatistics."""
    import grpc

    from modelport.kserve.v2 import grpc_service_pb2 as pb
    from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as ch:
        s = pb_grpc.GRPCInferenceServiceStub(ch).ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0]
    st = s.inference_stats
    return st.success.count, st.success.ns, st.compute_infer.ns


def server_stats(address: str, model: str) -> dict:
    """Batching figures of a model from the server's ModelStatistics."""
    import grpc

    from modelport.kserve.v2 import grpc_service_pb2 as pb
    from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as ch:
        st = pb_grpc.GRPCInferenceServiceStub(ch).ModelStatistics(pb.ModelStatisticsRequest(name=model))
    s = st.model_stats[0]
    return {"inference_count": s.inference_count, "execution_count": s.execution_count,
            "mean_batch": s.inference_count / s.execution_count if s.execution_count else 0.0}


def main() -> None:
    """Build the models, start the server, measure, write the report."""
    args = common.bench_args("served throughput vs in-process onnxruntime; dynamic batching").parse_args()
    quick = args.quick
    max_s = 1.5 if quick else 8.0
    max_calls = 300 if quick else 5000
    rounds = 1 if quick else 3
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    models = {"mlp": build_mlp(work / "mlp.onnx"), "mlp_tiny": build_mlp(work / "mlp_tiny.onnx", TINY_MLP_SIZES)}
    mobilenet = ensure_mobilenet(allow_build=not quick)
    if mobilenet is not None:
        models["mobilenetv2"] = mobilenet
    repo = work / "repo"
    write_repository(repo, models)
    titles = {"mlp": f"MLP {'-'.join(map(str, MLP_SIZES))} (onnx.helper, random weights, ~5.8M parameters)",
              "mlp_tiny": f"MLP {'-'.join(map(str, TINY_MLP_SIZES))} (~0.27M parameters; gRPC overhead dominates)",
              "mobilenetv2": "MobileNetV2 224x224 (keras.applications, weights=None, via tf2onnx)"}

    rows, data = [], {"models": {}, "threads": THREADS, "max_queue_delay_us": DELAY_US, "max_batch_size": MAX_BATCH,
                      "quick": quick}
    proc, address = common.start_service_subprocess("inference_svc", "--repository", str(repo),
                                                    "--intra-op-threads", str(THREADS), "--log-level", "WARNING")
    try:
        for model, path in models.items():
            name, x = input_of(path)
            per = data["models"].setdefault(model, {"title": titles[model], "runs": {}})
            for c in CONCURRENCY:
                # Interleaved rounds (A B C A B C ...) so drifting background load hits every way alike.
                parts: dict[str, list] = {"base": [], "unb": [], "bat": [], **{k: [] for k, _, _ in C1_WAYS}}
                spent = [0, 0, 0]  # server-side: requests, total ns, session.run ns (unbatched runs)
                for _ in range(rounds):
                    parts["base"].append(baseline(path, name, x, c, max_calls, max_s / rounds))
                    before = server_times(address, model)
                    parts["unb"].append(served(address, model, name, x, c, max_calls, max_s / rounds))
                    spent = [a + b - c0 for a, b, c0 in zip(spent, server_times(address, model), before, strict=True)]
                    parts["bat"].append(served(address, model + "_batched", name, x, c, max_calls, max_s / rounds))
                    if c == 1:
                        for key, use_shm, use_stream in C1_WAYS:
                            parts[key].append(served_c1(address, model, path, name, x, max_calls, max_s / rounds,
                                                        shm=use_shm, stream=use_stream))
                base, unb, bat = (combine(parts[k]) for k in ("base", "unb", "bat"))
                per["runs"][str(c)] = {"in_process": base.to_dict(), "served": unb.to_dict(),
                                       "served_batched": bat.to_dict()}
                extra = {key: combine(parts[key]) for key, _, _ in C1_WAYS if parts[key]}
                for key, t in extra.items():
                    per["runs"][str(c)][key] = t.to_dict()
                if c == 1 and spent[0]:
                    per["c1_breakdown_ms"] = {
                        "in_process_mean": base.latency.mean * 1e3,
                        "server_session_run_mean": spent[2] / spent[0] / 1e6,
                        "server_total_mean": spent[1] / spent[0] / 1e6,
                        "client_mean": unb.latency.mean * 1e3,
                    }
                ways = [("onnxruntime in-process (baseline)", base), ("served", unb),
                        ("served + dynamic batching", bat)]
                ways += [(C1_LABELS[key], t) for key, t in extra.items()]
                for label, t in ways:
                    rows.append([model, c, label, f"{t.calls_per_s:.1f}", common.fmt_ms(t.latency.p50),
                                 common.fmt_ms(t.latency.p99), common.fmt_ratio(common.ratio(t.calls_per_s,
                                                                                              base.calls_per_s)),
                                 t.errors])
                print(f"{model} c={c}: base {base.calls_per_s:.1f}/s served {unb.calls_per_s:.1f}/s "
                      f"batched {bat.calls_per_s:.1f}/s"
                      + "".join(f" {k} {t.calls_per_s:.1f}/s" for k, t in extra.items()), flush=True)
            per["batched_stats"] = server_stats(address, model + "_batched")
            per["floor_ms"] = transport_floor(x.nbytes, max_s=1.0 if quick else 3.0)
            per["per_item_ms"] = per_item_ms(path, name, x, max_s=1.0 if quick else 2.0)
    finally:
        rc = common.stop_service_subprocess(proc)
        data["server_exit_code"] = rc

    def ratio(model, c, a, b):
        r = data["models"].get(model, {}).get("runs", {}).get(str(c))
        return common.ratio(r[a]["calls_per_s"], r[b]["calls_per_s"]) if r and a in r and b in r else None

    # (way, the floor that applies to it, the served run measured that way)
    floor_ways = [("unary, raw tensors", "payload", "served"), ("unary, shared memory", "empty", "served_shm"),
                  ("stream, raw tensors", "stream_payload", "served_stream"),
                  ("stream, shared memory", "stream_empty", "served_stream_shm")]
    floor_rows = []
    for m, d in data["models"].items():
        if "c1_breakdown_ms" not in d or "floor_ms" not in d:
            continue
        run_ms, fl, c1 = d["c1_breakdown_ms"]["in_process_mean"], d["floor_ms"], d["runs"]["1"]
        d["best_possible_ratio"] = {}
        for way, floor_key, run_key in floor_ways:
            best = run_ms / (run_ms + fl[floor_key])
            d["best_possible_ratio"][run_key] = best
            measured = ratio(m, 1, run_key, "in_process") if run_key in c1 else None
            floor_rows.append([m, way, f"{run_ms:.2f}", f"{fl[floor_key]:.3f}", common.fmt_ratio(best),
                               common.fmt_ratio(measured)])

    goals = [
        ("MobileNetV2, concurrency 1: served / in-process", ratio("mobilenetv2", 1, "served", "in_process"), 0.9),
        *((f"MobileNetV2, concurrency 1: {C1_LABELS[key]} / in-process", ratio("mobilenetv2", 1, key, "in_process"),
           0.9) for key, _, _ in C1_WAYS),
        ("MLP, concurrency 16: dynamic batching / unbatched (served)",
         ratio("mlp", 16, "served_batched", "served"), 1.5),
    ]
    data["loadavg_before"], data["loadavg_after"] = load_before, os.getloadavg()
    data["goals"] = {g: {"value": v, "target": t, "met": (v is not None and v >= t)} for g, v, t in goals}
    goal_rows = [[g, common.fmt_ratio(v), f"≥ {t}×", "n/a" if v is None else ("yes" if v >= t else "NO")]
                 for g, v, t in goals]
    batch_rows = [[m, d["batched_stats"]["inference_count"], d["batched_stats"]["execution_count"],
                   f"{d['batched_stats']['mean_batch']:.2f}", f"{d['per_item_ms'][1]:.3f}",
                   f"{d['per_item_ms'][8]:.3f}"] for m, d in data["models"].items()]
    md = "\n".join([
        "## Serving: inference service vs in-process onnxruntime",
        "",
        "Batch-1 requests from N client threads. Baseline: `InferenceSession.run` in the benchmark process "
        f"with the same model, intra-op threads ({THREADS}) and session options (thread spinning off, the "
        "server's default). Served: `python -m inference_svc` in its own "
        "process, KServe `ModelInfer` over loopback gRPC with raw tensors, one instance per model; dynamic "
        f"batching with max_batch_size {MAX_BATCH}, max_queue_delay {DELAY_US} µs. Client and server share "
        f"the machine's cores. Each cell is {rounds} interleaved round(s) of up to {max_s / rounds:.1f} s. "
        f"Load average (1 min) before/after: {load_before[0]:.1f} / {data['loadavg_after'][0]:.1f} on "
        f"{os.cpu_count()} cores — other work on the machine makes these figures noisy when it is high.",
        "",
        *(f"- **{m}**: {d['title']}" for m, d in data["models"].items()),
        "",
        common.markdown_table(["model", "concurrency", "way", "req/s", "p50 ms", "p99 ms", "× baseline", "errors"],
                              rows),
        "",
        "Goals:",
        "",
        common.markdown_table(["goal", "measured", "target", "met"], goal_rows),
        "",
        "Server-side batching (ModelStatistics of the `_batched` models over the whole run) and what a "
        "batched run costs per item in-process (median `session.run` time / batch):",
        "",
        common.markdown_table(["model", "inference_count", "execution_count", "mean batch", "ms/item at batch 1",
                               "ms/item at batch 8"], batch_rows),
        "",
        "Where the time of one served request goes at concurrency 1 (means, ms): onnxruntime in-process; "
        "`session.run` inside the server and the request's time in the server's model manager "
        "(ModelStatistics success time: validation, queue, executor hand-off, run, split); what the client "
        "measured (adds both gRPC stacks, (de)serialization and the transfer of the tensor):",
        "",
        common.markdown_table(
            ["model", "in-process run", "server session.run", "server total", "client round trip"],
            [[m, *(f"{d['c1_breakdown_ms'][k]:.2f}" for k in ("in_process_mean", "server_session_run_mean",
                                                             "server_total_mean", "client_mean"))]
             for m, d in data["models"].items() if "c1_breakdown_ms" in d]),
        "",
        "The transport floor: a bare `grpc.aio` server with no modelport code (generic handlers answering "
        "4 KB, unary and on an open stream) called from the same sync Python client, with a request the size "
        "of the model's input (raw tensors) or an empty one (what is left when the tensors travel through "
        "shared memory). Even a server that did no work at all would add that much to every call, so "
        "in-process / (in-process + floor) is the best served/in-process ratio any Python gRPC server can "
        "reach here at concurrency 1, each way; the last column is what modelport measured that way:",
        "",
        common.markdown_table(["model", "way", "in-process run ms", "floor ms", "best possible ratio",
                               "measured ratio"], floor_rows),
        "",
        "Dynamic batching pays when a batched run costs less per item than single runs and the server, "
        "not the client, is the bottleneck: the MLP re-reads its weights on every call, so a batch of 8 "
        "costs far less per item. For MobileNetV2 on this CPU a batch of 8 costs more per image than single "
        "runs (see the table; its activations outgrow the caches), so batching lowers throughput: "
        "leave `dynamic_batching` off for such models here. For the tiny MLP the per-request gRPC cost "
        "dominates everything, so serving it over the network is the wrong trade in the first place.",
        "",
        f"Command: `{common.command_line()}`",
        "",
        common.system_info_markdown(),
    ])
    common.write_section("serving", md, data)
    plot(data)
    print(md)


def plot(data: dict) -> None:
    """Grouped bars of requests/s per model and concurrency."""
    plt = common.pyplot()
    models = list(data["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    ways = [("in_process", "in-process"), ("served", "served"), ("served_batched", "served + batching")]
    for ax, model in zip(axes[0], models, strict=True):
        runs = data["models"][model]["runs"]
        cs = list(runs)
        width = 0.25
        for i, (key, label) in enumerate(ways):
            vals = [runs[c][key]["calls_per_s"] for c in cs]
            ax.bar([j + i * width for j in range(len(cs))], vals, width, label=label)
        ax.set_xticks([j + width for j in range(len(cs))], [f"c={c}" for c in cs])
        ax.set_title(model)
        ax.set_ylabel("requests/s")
        ax.legend(fontsize=8)
    common.save_figure(fig, "serving_throughput")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"done in {time.time() - t0:.0f}s")
