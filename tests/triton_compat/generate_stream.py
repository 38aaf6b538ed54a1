"""tritonclient.grpc streaming generation against a modelport generation model, as against TensorRT-LLM.

Run by tests/test_generation_serving.py under the tritonclient venv:
``python generate_stream.py HOST:PORT MODEL PROMPT(comma ids) TOKENS OUT.json``. Uses
``start_stream`` / ``async_stream_infer`` with TensorRT-LLM's tensor names, unchanged, and writes
what it received (tokens, the final flags, metadata and config) as JSON.
"""

from __future__ import annotations

import json
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def inp(name, arr, datatype):
    i = grpcclient.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr)
    return i


def request_inputs(prompt: list[int], tokens: int, **extra) -> list:
    ids = np.asarray([prompt], np.int32)
    inputs = [inp("input_ids", ids, "INT32"), inp("input_lengths", np.asarray([[len(prompt)]], np.int32), "INT32"),
              inp("request_output_len", np.asarray([[tokens]], np.int32), "INT32")]
    if "temperature" in extra:
        inputs.append(inp("temperature", np.asarray([[extra["temperature"]]], np.float32), "FP32"))
    if "top_k" in extra:
        inputs.append(inp("runtime_top_k", np.asarray([[extra["top_k"]]], np.int32), "INT32"))
    if "top_p" in extra:
        inputs.append(inp("runtime_top_p", np.asarray([[extra["top_p"]]], np.float32), "FP32"))
    if "seed" in extra:
        inputs.append(inp("random_seed", np.asarray([[extra["seed"]]], np.uint64), "UINT64"))
    return inputs


def run_stream(url: str, model: str, prompt: list[int], tokens: int, empty_final: bool, stop_after: int = 0,
               **extra) -> dict:
    """One generation over a stream; ``stop_after`` > 0 cancels the stream after that many tokens."""
    client = grpcclient.InferenceServerClient(url)
    got: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    client.async_stream_infer(model, request_inputs(prompt, tokens, **extra), request_id="gen-1",
                              enable_empty_final_response=empty_final)
    out = {"tokens": [], "finals": [], "shapes": [], "ids": [], "errors": []}
    while True:
        result, error = got.get(timeout=120)
        if error is not None:
            out["errors"].append(str(error))
            break
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        ids = result.as_numpy("output_ids")
        out["finals"].append(final)
        out["ids"].append(response.id)
        out["shapes"].append(list(ids.shape) if ids is not None else None)
        if ids is not None:
            out["tokens"].extend(int(t) for t in ids.reshape(-1))
        if stop_after and len(out["tokens"]) >= stop_after:
            client.stop_stream(cancel_requests=True)
            out["cancelled_after"] = len(out["tokens"])
            break
        if final:
            client.stop_stream()
            break
    client.close()
    return out


def main(url: str, model: str, prompt: str, tokens: str, out: str) -> None:
    ids = [int(t) for t in prompt.split(",")]
    n = int(tokens)
    client = grpcclient.InferenceServerClient(url)
    facts = {
        "ready": client.is_model_ready(model),
        "metadata": client.get_model_metadata(model, as_json=True),
        "config": client.get_model_config(model, as_json=True),
        "greedy_empty_final": run_stream(url, model, ids, n, empty_final=True),
        "greedy": run_stream(url, model, ids, n, empty_final=False),
        "sampled": run_stream(url, model, ids, n, empty_final=True, temperature=0.8, top_k=20, top_p=0.9, seed=7),
        "sampled_again": run_stream(url, model, ids, n, empty_final=True, temperature=0.8, top_k=20, top_p=0.9,
                                    seed=7),
        "cancelled": run_stream(url, model, ids, 100, empty_final=True, stop_after=3),
    }
    client.close()
    with open(out, "w") as f:
        json.dump(facts, f)


if __name__ == "__main__":
    main(*sys.argv[1:6])
