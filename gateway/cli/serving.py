"""``modelport infer``, ``models``, ``status`` and ``bench``: the served models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from gateway.cli.app import app, err, fail, gateway_config, out, print_json
from gateway.cli.render import fmt_ms
from modelport.client import ClientError


def read_inputs(path: Path) -> dict[str, np.ndarray]:
    """Inputs from an NPZ (arrays by name; 'y' ignored) or JSON ({name: nested list} or KServe-style
    {"inputs": [{"name", "shape", "datatype", "data"}]})."""
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if k != "y"}
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("inputs"), list):
            from modelport.dtypes import to_numpy_dtype

            arrays = {}
            for t in data["inputs"]:
                dt = to_numpy_dtype(t.get("datatype", "FP32"))
                arrays[t["name"]] = np.asarray(t["data"], dtype=dt).reshape(t.get("shape") or -1)
            return arrays
        if isinstance(data, dict):
            return {k: np.asarray(v) for k, v in data.items()}
        raise ValueError(f"{path}: expected a JSON object of input name -> nested list")
    raise ValueError(f"{path}: use an .npz or .json file")


def _cast_to_model(client, name: str, version: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Match names ('x' -> the single input) and dtypes to the model's metadata."""
    from modelport.dtypes import to_numpy_dtype

    meta = client.model_metadata(name, version)
    specs = {t.name: t for t in meta.inputs}
    if len(specs) == 1 and len(arrays) == 1 and next(iter(arrays)) not in specs:
        arrays = {next(iter(specs)): next(iter(arrays.values()))}
    unknown = set(arrays) - set(specs)
    if unknown:
        raise ValueError(f"unknown input(s) {', '.join(sorted(unknown))}; the model takes {', '.join(specs)}")
    return {k: v.astype(to_numpy_dtype(specs[k].datatype)) if specs[k].datatype != "BYTES" else v
            for k, v in arrays.items()}


@app.command()
def infer(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Served model name."),
    input_file: Path = typer.Option(..., "--input", "-i", help="Inputs as .npz or .json."),
    version: str = typer.Option("", help="Model version (default: latest)."),
    save: Path = typer.Option(None, "--save", help="Also write the outputs to this .npz."),
    as_json: bool = typer.Option(False, "--json", help="Print outputs as JSON."),
) -> None:
    """Run one inference over KServe v2 gRPC and print the outputs."""
    try:
        arrays = read_inputs(input_file)
    except (OSError, ValueError, KeyError) as e:
        raise fail(str(e), 2) from None
    try:
        with gateway_config(ctx).client() as client:
            arrays = _cast_to_model(client, name, version, arrays)
            outputs = client.infer(name, arrays, version=version)
    except ValueError as e:
        raise fail(str(e), 2) from None
    except ClientError as e:
        raise fail(f"infer failed: {e.code}: {e.message}") from None
    if save:
        np.savez(save, **outputs)
    if as_json:
        print_json({"model_name": name, "outputs": {
            k: {"datatype": str(v.dtype), "shape": list(v.shape),
                "data": v.tolist() if v.dtype != object else [x.decode(errors="replace") for x in v.ravel()]}
            for k, v in outputs.items()}})
        return
    for k, v in outputs.items():
        out.print(f"[bold]{k}[/] {v.dtype} {list(v.shape)}")
        with np.printoptions(precision=4, suppress=True, threshold=200, edgeitems=4):
            out.print(str(v), highlight=False)
        if v.ndim == 2 and v.shape[1] > 1 and v.dtype.kind == "f":
            out.print(f"argmax: {np.argmax(v, axis=1).tolist()}", highlight=False)


@app.command()
def models(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Models the inference service holds: name, version, execution provider, state."""
    try:
        with gateway_config(ctx).client() as client:
            listed = client.list_models()
    except ClientError as e:
        raise fail(f"models failed: {e.code}: {e.message}") from None
    rows = [{"name": m.name, "version": m.version, "state": m.state, "execution_provider": m.execution_provider,
             "batching": m.batching.enabled, "max_batch_size": m.batching.max_batch_size, "reason": m.reason,
             "digest": m.artifact.digest} for m in listed]
    if as_json:
        print_json({"models": rows})
        return
    t = Table(title=f"models on {gateway_config(ctx).inference}", title_justify="left")
    for c in ("name", "version", "provider", "state", "batching", "artifact"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], r["version"], r["execution_provider"], r["state"] + (f" ({r['reason']})" if r["reason"] else ""),
                  f"max {r['max_batch_size']}" if r["batching"] else "off", (r["digest"] or "")[:19])
    out.print(t if rows else "no models loaded")


@app.command()
def status(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
           timeout: float = typer.Option(3.0, help="Seconds to wait for each service.")) -> None:
    """Health of each service (grpc.health.v1); exit code 1 unless all are SERVING."""
    with gateway_config(ctx).client() as client:
        statuses = client.status(timeout=timeout)
    if as_json:
        print_json({"services": [{"service": s.service, "address": s.address, "status": s.status,
                                   "latency_ms": s.latency_ms, "message": s.message} for s in statuses],
                     "ok": all(s.ok for s in statuses)})
    else:
        t = Table(title="modelport services", title_justify="left")
        for c in ("service", "address", "health", "latency"):
            t.add_column(c)
        for s in statuses:
            color = "green" if s.ok else "red"
            t.add_row(s.service, s.address, f"[{color}]{s.status}[/]" + (f" {s.message}" if s.message and not s.ok else ""),
                      fmt_ms(s.latency_ms))
        out.print(t)
    if not all(s.ok for s in statuses):
        raise typer.Exit(1)


@app.command()
def bench(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Served model name."),
    concurrency: int = typer.Option(1, min=1, help="Concurrent in-flight requests."),
    duration: float = typer.Option(10.0, min=0.1, help="Measured seconds."),
    warmup: float = typer.Option(1.0, min=0.0, help="Unmeasured seconds first."),
    batch: int = typer.Option(1, min=1, help="Batch size of generated inputs."),
    input_file: Path = typer.Option(None, "--input", "-i", help="Use these inputs (.npz/.json) instead."),
    version: str = typer.Option("", help="Model version."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Closed-loop load: throughput and p50/p90/p99 latency of a served model."""
    from gateway.cli.bench import inputs_from_metadata, run_bench

    try:
        with gateway_config(ctx).client() as client:
            if input_file:
                arrays = _cast_to_model(client, name, version, read_inputs(input_file))
            else:
                arrays = inputs_from_metadata(client, name, version, batch=batch)
            res = run_bench(client, name, arrays, concurrency=concurrency, duration=duration, warmup=warmup,
                            version=version)
    except (OSError, ValueError) as e:
        raise fail(str(e), 2) from None
    except ClientError as e:
        raise fail(f"bench failed: {e.code}: {e.message}") from None
    if as_json:
        print_json(res.to_dict())
    else:
        t = Table(title=f"bench {name} (concurrency {concurrency}, batch {res.batch}, {duration:g} s)",
                  title_justify="left")
        for c in ("requests", "errors", "req/s", "samples/s", "p50", "p90", "p99"):
            t.add_column(c, justify="right")
        t.add_row(str(res.requests), str(res.errors), f"{res.throughput_rps:.1f}", f"{res.samples_per_s:.1f}",
                  fmt_ms(res.p50_ms), fmt_ms(res.p90_ms), fmt_ms(res.p99_ms))
        out.print(t)
        if res.first_error:
            err.print(f"[yellow]first error:[/] {res.first_error}")
    if res.errors and not res.requests:
        raise typer.Exit(1)
