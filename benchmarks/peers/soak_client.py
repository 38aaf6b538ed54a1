"""Soak load for bench_reliability: the unmodified tritonclient gRPC client over mixed ways, every request counted.

Runs in the tritonclient venv (make triton-venv) and imports nothing from modelport. One JSON config file
(argv[1]) describes the run:

    {"url": "127.0.0.1:8001", "total": 200000, "max_seconds": 480, "timeout_s": 60,
     "input": "x", "shape": [1, 64], "x": [...], "output": "y", "output_shape": [1, 10],
     "lanes": [{"mode": "unary", "model": "mlp"}, {"mode": "stream", "model": "digits"},
               {"mode": "shm", "model": "mlp"}, ...],
     "expected": {"mlp": {"1": [...], "2": [...]}, "digits": {"1": [...]}},
     "out": "/tmp/records.npz"}

Each lane is one thread with its own ``InferenceServerClient`` and one request in flight (closed loop), so the
concurrency is the number of lanes. ``unary`` calls ``infer``; ``stream`` keeps one ``ModelStreamInfer`` stream
open and sends the next request once the previous answer arrived (``async_stream_infer``); ``shm`` puts the
input and the output in the lane's own system shared memory regions. A request takes a ticket (its sequence
number) before it is sent; its outcome is written under that ticket: OK (the answer equals the expected output
of the version that answered, as named in the response), or the gRPC code of the error, or ``WRONG_ANSWER``;
a ticket without an outcome at the end is a lost request. Progress goes to stdout as JSON lines
(``{"done": N}``), then one final line with the counts; the per-request records (send time, latency, lane,
outcome) go to ``out`` as numpy arrays.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

MODES = ("unary", "stream", "shm")
UNSET = -1
OK = 0


def main() -> None:
    cfg = json.loads(open(sys.argv[1]).read())
    total, url, timeout = int(cfg["total"]), cfg["url"], float(cfg.get("timeout_s", 60))
    shape, out_shape = list(cfg["shape"]), list(cfg["output_shape"])
    x = np.asarray(cfg["x"], np.float32).reshape(shape)
    expected = {m: {v: np.asarray(a, np.float32).reshape(out_shape) for v, a in vs.items()}
                for m, vs in cfg["expected"].items()}
    codes: dict[str, int] = {"OK": OK}
    lock = threading.Lock()
    state = {"next": 0, "done": 0, "stop_at": time.perf_counter() + float(cfg["max_seconds"])}
    t_send = np.zeros(total, np.float64)
    latency = np.zeros(total, np.float64)
    lane_of = np.full(total, -1, np.int16)
    outcome = np.full(total, UNSET, np.int16)
    version = np.zeros(total, np.int16)
    first_errors: dict[str, str] = {}

    def code_of(name: str) -> int:
        with lock:
            return codes.setdefault(name, len(codes))

    def take(lane: int) -> int | None:
        with lock:
            i = state["next"]
            if i >= total or time.perf_counter() >= state["stop_at"]:
                return None
            state["next"] = i + 1
        lane_of[i] = lane
        return i

    def finish(i: int, t0: float, code: str, ver: str = "", detail: str = "") -> None:
        latency[i] = time.perf_counter() - t0
        outcome[i] = OK if code == "OK" else code_of(code)
        version[i] = int(ver) if ver.isdigit() else 0
        with lock:
            state["done"] += 1
            if code != "OK" and code not in first_errors:
                first_errors[code] = detail[:300]

    def check(model: str, ver: str, y: np.ndarray | None) -> str:
        ref = expected.get(model, {}).get(ver)
        if ref is None or y is None or y.shape != ref.shape or not np.allclose(y, ref, rtol=1e-4, atol=1e-5):
            return "WRONG_ANSWER"
        return "OK"

    def error_code(e: Exception) -> str:
        if isinstance(e, InferenceServerException):
            s = e.status() or ""
            return s.replace("StatusCode.", "") or "STREAM_ERROR"
        return type(e).__name__

    def unary(lane: int, model: str) -> None:
        client = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput(cfg["input"], shape, "FP32")
        inp.set_data_from_numpy(x)
        while (i := take(lane)) is not None:
            t0 = time.perf_counter()
            t_send[i] = t0
            try:
                r = client.infer(model, [inp], client_timeout=timeout)
                ver = r.get_response().model_version
                finish(i, t0, check(model, ver, r.as_numpy(cfg["output"])), ver, "unexpected output")
            except Exception as e:  # noqa: BLE001 - counted by code
                finish(i, t0, error_code(e), "", str(e))
        client.close()

    def stream(lane: int, model: str) -> None:
        client = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput(cfg["input"], shape, "FP32")
        inp.set_data_from_numpy(x)
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            while (i := take(lane)) is not None:
                t0 = time.perf_counter()
                t_send[i] = t0
                try:
                    client.async_stream_infer(model, [inp], request_id=str(i))
                except Exception as e:  # noqa: BLE001 - the stream broke: counted, then reopened
                    finish(i, t0, error_code(e), "", str(e))
                    continue
                try:
                    result, error = answers.get(timeout=timeout)
                except queue.Empty:
                    continue  # no answer: the ticket stays without an outcome (lost)
                if error is not None:
                    finish(i, t0, error_code(error), "", str(error))
                    continue
                resp = result.get_response()
                if resp.id != str(i):
                    finish(i, t0, "WRONG_ID", "", f"answer for {resp.id!r} to request {i}")
                    continue
                finish(i, t0, check(model, resp.model_version, result.as_numpy(cfg["output"])), resp.model_version,
                       "unexpected output")
        finally:
            client.stop_stream()
            client.close()

    def shared(lane: int, model: str) -> None:
        client = grpcclient.InferenceServerClient(url)
        tag = f"soak_{os.getpid()}_{lane}"
        in_bytes, out_bytes = x.nbytes, int(np.prod(out_shape)) * 4
        h_in = shm.create_shared_memory_region(f"{tag}_in", f"/{tag}_in", in_bytes)
        h_out = shm.create_shared_memory_region(f"{tag}_out", f"/{tag}_out", out_bytes)
        shm.set_shared_memory_region(h_in, [x])
        client.register_system_shared_memory(f"{tag}_in", f"/{tag}_in", in_bytes)
        client.register_system_shared_memory(f"{tag}_out", f"/{tag}_out", out_bytes)
        inp = grpcclient.InferInput(cfg["input"], shape, "FP32")
        inp.set_shared_memory(f"{tag}_in", in_bytes)
        out = grpcclient.InferRequestedOutput(cfg["output"])
        out.set_shared_memory(f"{tag}_out", out_bytes)
        try:
            while (i := take(lane)) is not None:
                t0 = time.perf_counter()
                t_send[i] = t0
                try:
                    r = client.infer(model, [inp], outputs=[out], client_timeout=timeout)
                    y = shm.get_contents_as_numpy(h_out, np.float32, out_shape).copy()
                    ver = r.get_response().model_version
                    finish(i, t0, check(model, ver, y), ver, "unexpected output")
                except Exception as e:  # noqa: BLE001 - counted by code
                    finish(i, t0, error_code(e), "", str(e))
        finally:
            try:
                client.unregister_system_shared_memory(f"{tag}_in")
                client.unregister_system_shared_memory(f"{tag}_out")
            finally:
                shm.destroy_shared_memory_region(h_in)
                shm.destroy_shared_memory_region(h_out)
                client.close()

    run = {"unary": unary, "stream": stream, "shm": shared}
    threads = [threading.Thread(target=run[lane["mode"]], args=(n, lane["model"]), daemon=True)
               for n, lane in enumerate(cfg["lanes"])]
    start = time.perf_counter()
    cpu0 = os.times()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        with lock:
            print(json.dumps({"done": state["done"], "sent": state["next"],
                              "t": time.perf_counter() - start}), flush=True)
    for t in threads:
        t.join()
    elapsed, cpu1 = time.perf_counter() - start, os.times()
    sent = state["next"]
    names = {v: k for k, v in codes.items()}
    counted = {names[int(c)]: int(n) for c, n in zip(*np.unique(outcome[:sent], return_counts=True),
                                                     strict=True)
               if int(c) != UNSET}
    lost = int((outcome[:sent] == UNSET).sum())
    np.savez(cfg["out"], t_send=t_send[:sent] - start, latency=latency[:sent], lane=lane_of[:sent],
             outcome=outcome[:sent], version=version[:sent])
    print(json.dumps({"final": True, "sent": sent, "outcomes": counted, "lost": lost, "elapsed_s": elapsed,
                      "codes": codes, "first_errors": first_errors,
                      "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}), flush=True)


if __name__ == "__main__":
    main()
