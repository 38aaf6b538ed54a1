"""Load generator for bench_serving: the unmodified tritonclient sync gRPC client, N threads, one
``InferenceServerClient`` each (like perf_analyzer's concurrency mode), batch-1 requests of one FP32 input.

Runs in the tritonclient venv (make triton-venv) and imports nothing from modelport. One run:

    .venv-triton/bin/python benchmarks/peers/load_client.py --url 127.0.0.1:8001 --model mlp --input x \\
        --shape 1,64 --concurrency 8 --seconds 5

prints one JSON line. With ``--serve`` it reads one JSON object per line on stdin (the same fields as the
flags, with underscores) and answers one JSON line per run, so a benchmark pays the import once.

Every response is checked (an output of the request's batch size whose values match the first response for
the same input): a reply that is not the model's answer counts as an error, like a failed call. The CPU
seconds this process used are reported, so the benchmark can tell the client's share of the machine from
the server's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient


def run(url: str, model: str, input: str, shape: list[int], concurrency: int = 1, seconds: float = 5.0,
        max_calls: int = 1_000_000, warmup: int = 2, timeout: float = 60.0) -> dict:
    """``concurrency`` threads calling ModelInfer in a closed loop for ``seconds`` (or ``max_calls``)."""
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    lock = threading.Lock()
    state = {"issued": 0, "errors": 0, "first_error": "", "reference": None}
    latencies: list[float] = []
    ready = threading.Barrier(concurrency + 1)
    deadline = [float("inf")]

    def check(result) -> None:
        out = result.get_response().outputs
        if not out:
            raise RuntimeError("response has no outputs")
        arr = result.as_numpy(out[0].name)
        if arr is None or arr.shape[0] != shape[0]:
            raise RuntimeError(f"output {out[0].name} has shape {None if arr is None else arr.shape}")
        with lock:
            if state["reference"] is None:
                state["reference"] = arr.copy()
            ref = state["reference"]
        if ref.shape != arr.shape or not np.allclose(arr, ref, rtol=1e-4, atol=1e-5):
            raise RuntimeError("output differs from the first response for the same input")

    def take() -> bool:
        with lock:
            if state["issued"] >= max_calls or time.perf_counter() >= deadline[0]:
                return False
            state["issued"] += 1
            return True

    def worker() -> None:
        client = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput(input, shape, "FP32")
        inp.set_data_from_numpy(x)
        try:
            for _ in range(warmup):
                try:
                    check(client.infer(model, [inp], client_timeout=timeout))
                except Exception:  # noqa: BLE001 - a warm-up failure shows up again in the timed phase
                    pass
        finally:
            ready.wait()
        local = []
        while take():
            t0 = time.perf_counter()
            try:
                check(client.infer(model, [inp], client_timeout=timeout))
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    state["errors"] += 1
                    if not state["first_error"]:
                        state["first_error"] = f"{type(e).__name__}: {e}"[:300]
                continue
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)
        client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    cpu0, start = os.times(), time.perf_counter()
    deadline[0] = start + seconds
    for t in threads:
        t.join()
    elapsed, cpu1 = time.perf_counter() - start, os.times()
    latencies.sort()
    return {"calls": len(latencies), "errors": state["errors"], "first_error": state["first_error"],
            "elapsed_s": elapsed, "latencies_s": latencies,
            "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", action="store_true", help="read runs as JSON lines on stdin")
    p.add_argument("--url")
    p.add_argument("--model")
    p.add_argument("--input")
    p.add_argument("--shape", help="comma-separated, batch first")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--max-calls", type=int, default=1_000_000)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--timeout", type=float, default=60.0, help="per-call client timeout (s)")
    args = p.parse_args()
    if not args.serve:
        print(json.dumps(run(args.url, args.model, args.input, [int(d) for d in args.shape.split(",")],
                             args.concurrency, args.seconds, args.max_calls, args.warmup, args.timeout)))
        return
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(**json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
