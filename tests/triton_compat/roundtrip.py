"""tritonclient.grpc round trips against a running modelport inference server.

Run by tests/test_inference_triton.py under the separate tritonclient venv (its protobuf pin
cannot share a process with our stubs): ``python roundtrip.py HOST:PORT OUT.npz``. Writes the
inputs it sent and the outputs it received (plus JSON facts) for the test to check.
"""

from __future__ import annotations

import json
import os
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, triton_to_np_dtype


def inp(name, arr, datatype):
    i = grpcclient.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr)
    return i


def main(url: str, out: str) -> None:
    c = grpcclient.InferenceServerClient(url)
    facts: dict = {"live": c.is_server_live(), "ready": c.is_server_ready(),
                   "mlp_ready": c.is_model_ready("mlp"), "server": c.get_server_metadata(as_json=True)}
    arrays: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)

    facts["mlp_metadata"] = c.get_model_metadata("mlp", as_json=True)
    facts["mlp_config"] = c.get_model_config("mlp", as_json=True)
    facts["index"] = c.get_model_repository_index(as_json=True)

    # Dynamic batch dimension: batch 3, latest version (2) and pinned version 1.
    x = rng.random((3, 4), dtype=np.float32)
    arrays["mlp_x"] = x
    arrays["mlp_y_latest"] = c.infer("mlp", [inp("x", x, "FP32")]).as_numpy("y")
    r1 = c.infer("mlp", [inp("x", x, "FP32")], model_version="1", request_id="req-7")
    arrays["mlp_y_v1"] = r1.as_numpy("y")
    facts["mlp_v1_response"] = r1.get_response(as_json=True)

    # Multi input / output with a requested subset (BOOL output included).
    a = rng.standard_normal((2, 3)).astype(np.float32)
    b = rng.integers(-5, 5, (2, 3)).astype(np.int64)
    arrays["multi_a"], arrays["multi_b"] = a, b
    r = c.infer("multi", [inp("a", a, "FP32"), inp("b", b, "INT64")],
                outputs=[grpcclient.InferRequestedOutput("pos"), grpcclient.InferRequestedOutput("prod")])
    arrays["multi_pos"], arrays["multi_prod"] = r.as_numpy("pos"), r.as_numpy("prod")
    facts["multi_outputs"] = [o["name"] for o in r.get_response(as_json=True)["outputs"]]
    facts["multi_sum_absent"] = r.as_numpy("sum") is None

    # Strings (BYTES) and BOOL inputs.
    s = np.array([b"hello", "wörld".encode(), b"", b"\x00bin"], dtype=np.object_)
    flag = np.array([True, False, True, False])
    arrays["strings_flag"] = flag
    r = c.infer("strings", [inp("s", s, "BYTES"), inp("flag", flag, "BOOL")])
    facts["strings_same"] = [v.decode("utf-8", "backslashreplace") for v in r.as_numpy("same").tolist()]
    facts["strings_sent"] = [v.decode("utf-8", "backslashreplace") for v in s.tolist()]
    arrays["strings_not_flag"] = r.as_numpy("not_flag")

    # FP16.
    h = rng.random((5, 2)).astype(np.float16)
    arrays["fp16_h"] = h
    arrays["fp16_twice"] = c.infer("fp16", [inp("h", h, "FP16")]).as_numpy("twice")

    # Every numeric datatype through tritonclient (Identity model).
    kinds = {"bool": np.bool_, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
             "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64, "fp16": np.float16,
             "fp32": np.float32, "fp64": np.float64}
    typed = {n: (rng.integers(0, 2, (2, 2)).astype(bool) if dt is np.bool_ else
                 (rng.random((2, 2)) * 100).astype(dt)) for n, dt in kinds.items()}
    r = c.infer("alltypes", [inp(n, a, n.upper()) for n, a in typed.items()])
    for n, a in typed.items():
        arrays[f"alltypes_in_{n}"] = a
        arrays[f"alltypes_out_{n}"] = r.as_numpy(f"{n}_out")

    # Dynamic batching: concurrent async requests of batch 1..4 to the batched model (total 8).
    done: queue.Queue = queue.Queue()
    xs = [rng.random((n, 4), dtype=np.float32) for n in (1, 3, 2, 2)]
    for i, xb in enumerate(xs):
        c.async_infer("batched", [inp("x", xb, "FP32")], callback=lambda result, error, i=i: done.put((i, result, error)),
                      request_id=f"b{i}")
    for _ in xs:
        i, res, err = done.get(timeout=60)
        if err is not None:
            raise err
        arrays[f"batched_x{i}"] = xs[i]
        arrays[f"batched_y{i}"] = res.as_numpy("y")
    facts["batched_stats"] = c.get_inference_statistics("batched", as_json=True)

    # Streaming.
    stream_results: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: stream_results.put((result, error)))
    c.async_stream_infer("mlp", [inp("x", x[:1], "FP32")], request_id="s1", model_version="1")
    res, err = stream_results.get(timeout=60)
    c.stop_stream()
    facts["stream_error"] = None if err is None else str(err)
    arrays["stream_y"] = res.as_numpy("y") if res is not None else np.zeros(0)

    # Errors come back as InferenceServerException with the status and message.
    errors = {}
    for key, call in {
        "unknown_model": lambda: c.infer("nope", [inp("x", x, "FP32")]),
        "wrong_dtype": lambda: c.infer("mlp", [inp("x", x.astype(np.float64), "FP64")]),
    }.items():
        try:
            call()
            errors[key] = None
        except InferenceServerException as exc:
            errors[key] = {"status": exc.status(), "message": exc.message()}
    facts["errors"] = errors
    facts["stats_mlp"] = c.get_inference_statistics("mlp", as_json=True)

    shared_memory(c, facts, arrays, rng)

    # Repository control: unload then load again.
    c.unload_model("fixed")
    facts["fixed_ready_after_unload"] = c.is_model_ready("fixed")
    c.load_model("fixed")
    facts["fixed_ready_after_load"] = c.is_model_ready("fixed")

    arrays["facts"] = np.frombuffer(json.dumps(facts).encode(), dtype=np.uint8)
    np.savez(out, **arrays)


def error_of(call) -> dict | None:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return None


def shared_memory(c, facts: dict, arrays: dict, rng) -> None:
    """System shared memory exactly as Triton's simple_grpc_shm_client does it, plus BYTES, a mixed
    request (shm and raw inputs/outputs) and the error answers."""
    pid = os.getpid()
    in_key, out_key = f"/mp_triton_in_{pid}", f"/mp_triton_out_{pid}"
    c.unregister_system_shared_memory()
    in_h = shm.create_shared_memory_region("tc_in", in_key, 1024)
    out_h = shm.create_shared_memory_region("tc_out", out_key, 1024)
    try:
        c.register_system_shared_memory("tc_in", in_key, 1024)
        c.register_system_shared_memory("tc_out", out_key, 512, offset=256)
        facts["shm_status"] = c.get_system_shared_memory_status(as_json=True)
        facts["shm_status_one"] = c.get_system_shared_memory_status("tc_out", as_json=True)

        # mlp: input and output in shared memory.
        x = rng.random((3, 4), dtype=np.float32)
        shm.set_shared_memory_region(in_h, [x])
        i = grpcclient.InferInput("x", [3, 4], "FP32")
        i.set_shared_memory("tc_in", x.nbytes)
        o = grpcclient.InferRequestedOutput("y")
        o.set_shared_memory("tc_out", 36)
        r = c.infer("mlp", [i], outputs=[o], model_version="1")
        out = r.get_output("y")
        facts["shm_y_output"] = {"datatype": out.datatype, "shape": list(out.shape),
                                 "raw": [len(b) for b in r.get_response().raw_output_contents]}
        arrays["shm_x"] = x
        # get_contents_as_numpy returns a view of the mapping: copy before destroy_shared_memory_region.
        arrays["shm_y"] = shm.get_contents_as_numpy(out_h, triton_to_np_dtype(out.datatype), out.shape,
                                                    offset=256).copy()

        # multi: a from shm at an offset, b raw; sum to shm, pos returned in the message (as_numpy).
        a = rng.standard_normal((2, 3)).astype(np.float32)
        b = rng.integers(-5, 5, (2, 3)).astype(np.int64)
        shm.set_shared_memory_region(in_h, [a], offset=512)
        ia = grpcclient.InferInput("a", [2, 3], "FP32")
        ia.set_shared_memory("tc_in", a.nbytes, offset=512)
        osum = grpcclient.InferRequestedOutput("sum")
        osum.set_shared_memory("tc_out", 24, offset=64)
        r = c.infer("multi", [ia, inp("b", b, "INT64")], outputs=[osum, grpcclient.InferRequestedOutput("pos")])
        arrays["shm_multi_a"], arrays["shm_multi_b"] = a, b
        arrays["shm_multi_pos"] = r.as_numpy("pos")
        arrays["shm_multi_sum"] = shm.get_contents_as_numpy(out_h, np.float32, [2, 3], offset=256 + 64).copy()

        # BYTES through shared memory (serialized as tritonclient does).
        s = np.array([b"shm", "ünï".encode(), b""], dtype=np.object_)
        ser = serialize_byte_tensor(s)
        shm.set_shared_memory_region(in_h, [ser])
        isb = grpcclient.InferInput("s", [3], "BYTES")
        isb.set_shared_memory("tc_in", len(ser.item()))
        osame = grpcclient.InferRequestedOutput("same")
        osame.set_shared_memory("tc_out", 128)
        c.infer("strings", [isb, inp("flag", np.array([True, False, True]), "BOOL")], outputs=[osame])
        got = shm.get_contents_as_numpy(out_h, np.object_, [3], offset=256)
        facts["shm_strings"] = [v.decode("utf-8") for v in got.tolist()]
        facts["shm_strings_sent"] = [v.decode("utf-8") for v in s.tolist()]

        facts["shm_errors"] = {
            "duplicate": error_of(lambda: c.register_system_shared_memory("tc_in", in_key, 1024)),
            "missing_key": error_of(lambda: c.register_system_shared_memory("nokey", f"/mp_absent_{pid}", 8)),
            "unknown_status": error_of(lambda: c.get_system_shared_memory_status("nope")),
            "cuda_status": error_of(lambda: c.get_cuda_shared_memory_status()),
            "too_small_output": error_of(lambda: c.infer("mlp", [i], outputs=[small_output()], model_version="1")),
        }
        c.unregister_system_shared_memory("tc_in")
        facts["shm_status_after_one"] = c.get_system_shared_memory_status(as_json=True)
        c.unregister_system_shared_memory()
        facts["shm_status_after_all"] = c.get_system_shared_memory_status(as_json=True)
    finally:
        shm.destroy_shared_memory_region(in_h)
        shm.destroy_shared_memory_region(out_h)
    facts["shm_segments_left"] = [k for k in (in_key, out_key) if os.path.exists("/dev/shm" + k)]


def small_output():
    o = grpcclient.InferRequestedOutput("y")
    o.set_shared_memory("tc_out", 8)
    return o


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
