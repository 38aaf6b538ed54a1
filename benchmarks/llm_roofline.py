"""Where one FP32 decode step's time goes, and the ceiling this machine puts on it (bench_llm's ``roofline`` stage).

A decode step reads every weight once for one token per sequence: each MatMul is a matrix-vector product
whose time is the bytes it streams from memory. So the tokens/s of one sequence can not pass
``memory bandwidth / weight bytes``. This stage measures, in the same run as the other figures:

* the bandwidth onnxruntime's own FP32 MatMul reaches on matrix-vector products over 512 MiB of weights
  (far beyond the caches), with the session settings the step runs with: the ceiling;
* the step's tokens/s and the bandwidth it implies (tokens/s x weight bytes);
* onnxruntime's profile of the decode steps: the share of kernel time in MatMul, and the time per step
  spent outside ``session.run`` (feeds, cache writes in numpy: what IO binding would remove).
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

MATMUL_OPS = {"MatMul", "FusedMatMul", "Gemm", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul"}


def _session_options(profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()  # as StepModel's default and the inference service's: no spinning
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def gemv_bandwidth(total_bytes: int = 512 << 20, k: int = 2048, n: int = 5632, repeats: int = 6) -> dict:
    """GB/s of FP32 MatMul [1, k] x [k, n] (then [1, n] x [n, k], ...) over ``total_bytes`` of weights."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    per = k * n * 4
    layers = max(1, total_bytes // per)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        shape = (k, n) if i % 2 == 0 else (n, k)
        inits.append(numpy_helper.from_array((rng.standard_normal(shape, dtype=np.float32) * 0.02), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    out_dim = n if layers % 2 else k
    graph = helper.make_graph(nodes, "gemv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, out_dim])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    with tempfile.TemporaryDirectory(prefix="gemv-") as tmp:
        path = Path(tmp) / "gemv.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="gemv.data")
        del model, inits
        sess = ort.InferenceSession(str(path), _session_options(), providers=["CPUExecutionProvider"])
        x = rng.standard_normal((1, k), dtype=np.float32)
        sess.run(None, {"x": x})
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            sess.run(None, {"x": x})
            times.append(time.perf_counter() - t)
    nbytes = layers * per
    return {"gemv_bytes": nbytes, "gemv_gb_s_best": nbytes / min(times) / 1e9,
            "gemv_gb_s_median": nbytes / statistics.median(times) / 1e9}


def profile_step(folder: Path, prompt: list[int], new_tokens: int) -> dict:
    """Tokens/s of the cached step, time outside session.run per step, and the profile's op-type shares."""
    from modelport.generation_model import StepModel, greedy_decode

    step = StepModel(folder, session_options=_session_options())
    greedy_decode(step, prompt, 2)
    original = {"run": step.session.run}  # cleared below: the bound method holds the session
    inside: list[float] = []

    def timed_run(*a, **kw):
        t = time.perf_counter()
        try:
            return original["run"](*a, **kw)
        finally:
            inside.append(time.perf_counter() - t)

    step.session.run = timed_run
    rates, overheads = [], []
    for _ in range(2):
        inside.clear()
        t = time.perf_counter()
        greedy_decode(step, prompt, new_tokens)
        wall = time.perf_counter() - t
        rates.append(new_tokens / wall)
        overheads.append((wall - sum(inside)) / len(inside))  # per step: feeds, cache writes, argmax
    original.clear()
    del step, timed_run  # free the first session's weights before the profiled one loads
    with tempfile.TemporaryDirectory(prefix="ortprof-") as tmp:
        step = StepModel(folder, session_options=_session_options(os.path.join(tmp, "step")))
        greedy_decode(step, prompt, min(new_tokens, 16))
        events = json.loads(Path(step.session.end_profiling()).read_text())
        del step
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            by_op[e.get("args", {}).get("op_name", "?")] += int(e.get("dur", 0))
    total = sum(by_op.values()) or 1
    matmul = sum(v for op, v in by_op.items() if op in MATMUL_OPS)
    return {"step_tokens_per_s": max(rates), "outside_run_ms_per_step": min(overheads) * 1000,
            "matmul_share": matmul / total,
            "top_ops": [(op, round(v / total, 4)) for op, v in by_op.most_common(6)]}


def roofline(folder: Path, prompt: list[int], new_tokens: int) -> dict:
    from modelport.generation_model import CONFIG_FILE, GenerationConfig

    config = GenerationConfig.load(folder / CONFIG_FILE)
    weight_bytes = config.weight_bytes or sum(p.stat().st_size for p in folder.glob("model.onnx*"))
    prof = profile_step(folder, prompt, new_tokens)
    bw = gemv_bandwidth()
    step_gb_s = prof["step_tokens_per_s"] * weight_bytes / 1e9
    return {**prof, **bw, "weight_bytes": weight_bytes, "step_gb_s": step_gb_s,
            "roofline_tokens_per_s": bw["gemv_gb_s_best"] * 1e9 / weight_bytes,
            "step_vs_roofline": step_gb_s / bw["gemv_gb_s_best"]}
