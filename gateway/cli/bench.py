"""``modelport bench``: closed-loop load on a served model — throughput and latency percentiles."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from modelport.client import Client, ClientError
from modelport.dtypes import to_numpy_dtype


@dataclass
class BenchResult:
    """What a benchmark run measured (latencies in ms, throughput per second)."""

    model: str
    concurrency: int
    duration_s: float
    batch: int
    requests: int
    errors: int
    throughput_rps: float
    samples_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    first_error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def inputs_from_metadata(client: Client, name: str, version: str = "", batch: int = 1,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs shaped by the model's metadata (dynamic dims: batch first, else 1)."""
    meta = client.model_metadata(name, version)
    rng = np.random.default_rng(seed)
    out = {}
    for t in meta.inputs:
        shape = [batch if i == 0 and d < 0 else max(int(d), 1) for i, d in enumerate(t.shape)]
        dt = to_numpy_dtype(t.datatype)
        if dt.kind == "f":
            out[t.name] = rng.random(shape).astype(dt)
        elif dt.kind in "iub":
            out[t.name] = rng.integers(0, 2, shape).astype(dt)
        else:
            out[t.name] = np.array([b"x"] * int(np.prod(shape)), dtype=object).reshape(shape)
    return out


def run_bench(client: Client, name: str, inputs: Mapping[str, np.ndarray], *, concurrency: int = 1,
              duration: float = 10.0, warmup: float = 1.0, version: str = "") -> BenchResult:
    """``concurrency`` threads send requests back to back for ``duration`` seconds after a warm-up."""
    batch = int(len(next(iter(inputs.values())))) if inputs else 1
    for _ in range(3):
        client.infer(name, inputs, version=version)
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []
    start = threading.Barrier(concurrency + 1)
    window: dict[str, float] = {}

    def worker(i: int) -> None:
        start.wait()
        while time.perf_counter() < window["end"]:
            t0 = time.perf_counter()
            try:
                client.infer(name, inputs, version=version)
            except ClientError as e:
                errors[i] += 1
                if not first_error:
                    first_error.append(str(e))
                continue
            if t0 >= window["measure"]:
                lat[i].append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    window["measure"] = now + warmup
    window["end"] = now + warmup + duration
    start.wait()
    for t in threads:
        t.join()
    all_lat = np.array([x for xs in lat for x in xs]) if any(lat) else np.array([0.0])
    n = sum(len(x) for x in lat)
    p50, p90, p99 = (float(v) for v in np.percentile(all_lat, [50, 90, 99]))
    return BenchResult(model=name, concurrency=concurrency, duration_s=duration, batch=batch, requests=n,
                       errors=sum(errors), throughput_rps=n / duration, samples_per_s=n * batch / duration,
                       p50_ms=p50, p90_ms=p90, p99_ms=p99, mean_ms=float(all_lat.mean()),
                       first_error=first_error[0] if first_error else "")
