"""The ``modelport`` gateway CLI: up, deploy, convert, optimize, infer, models, status, bench.

Every command that talks to the services goes through ``modelport.Client``. Service addresses
come from the global flags (``modelport --inference HOST:PORT deploy ...``), the environment
(``MODELPORT_CONVERTER_ADDR``, ``MODELPORT_OPTIMIZER_ADDR``, ``MODELPORT_INFERENCE_ADDR``), a
config file, or the defaults ``modelport up`` uses. Exit codes: 0 ok, 1 a stage/RPC failed,
2 bad usage or an invalid spec.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from modelport.cli.config import ConfigError, GatewayConfig, load_config
from modelport.cli.render import RichProgress, fmt_ms, human_size, print_report
from modelport.client import ClientError

app = typer.Typer(name="modelport", add_completion=False, no_args_is_help=True,
                  help="Convert, optimize and serve TensorFlow/Keras models over gRPC.")
out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _gateway(ctx: typer.Context) -> GatewayConfig:
    return ctx.obj["config"]


def _print_json(data: Any) -> None:
    # plain print, not rich: scripts parse this
    print(json.dumps(data, indent=2, default=str))


@app.callback()
def root(
    ctx: typer.Context,
    converter: str = typer.Option(None, envvar="MODELPORT_CONVERTER_ADDR", help="Converter address host:port."),
    optimizer: str = typer.Option(None, envvar="MODELPORT_OPTIMIZER_ADDR", help="Optimizer address host:port."),
    inference: str = typer.Option(None, envvar="MODELPORT_INFERENCE_ADDR", help="Inference address host:port."),
    config: Path = typer.Option(None, envvar="MODELPORT_CONFIG",
                                help="YAML with converter/optimizer/inference/tls_*/auth_token/timeout "
                                     "(default ~/.config/modelport/config.yaml)."),
    tls_ca: Path = typer.Option(None, envvar="MODELPORT_TLS_CA", help="PEM CA that signed the services' certs."),
    tls_cert: Path = typer.Option(None, envvar="MODELPORT_TLS_CERT", help="PEM client certificate (mTLS)."),
    tls_key: Path = typer.Option(None, envvar="MODELPORT_TLS_KEY", help="PEM client key (mTLS)."),
    tls_server_name: str = typer.Option(None, envvar="MODELPORT_TLS_SERVER_NAME",
                                        help="Override the TLS server name checked."),
    auth_token: str = typer.Option(None, envvar="MODELPORT_AUTH_TOKEN", help="Bearer token for mutating RPCs."),
    timeout: float = typer.Option(None, envvar="MODELPORT_TIMEOUT", help="Per-RPC timeout in seconds."),
) -> None:
    """modelport gateway: one command from a Keras file to a verified, served model."""
    overrides = dict(converter=converter, optimizer=optimizer, inference=inference, tls_ca=tls_ca, tls_cert=tls_cert,
                     tls_key=tls_key, tls_server_name=tls_server_name, auth_token=auth_token, timeout=timeout)
    try:
        ctx.obj = {"config": load_config(config, overrides)}
    except ConfigError as e:
        raise _fail(str(e), 2) from None


# ---- up ------------------------------------------------------------------------------------
@app.command()
def up(
    store: Path = typer.Option(Path(".modelport/store"), help="Artifact store shared by the three services."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind ('0.0.0.0' for all)."),
    port_offset: int = typer.Option(0, help="Added to every default port (run two sets side by side)."),
    converter_port: int = typer.Option(None, help="Converter port (default 50051; 0 = any free port)."),
    optimizer_port: int = typer.Option(None, help="Optimizer port (default 50052; 0 = any free port)."),
    inference_port: int = typer.Option(None, help="Inference port (default 8001; 0 = any free port)."),
    log_dir: Path = typer.Option(None, help="Write each service's log to DIR/<name>.log instead of stderr."),
    startup_timeout: float = typer.Option(180.0, help="Seconds to wait for all three to be SERVING."),
) -> None:
    """Start converter, optimizer and inference on this machine; Ctrl-C or SIGTERM stops them cleanly."""
    from modelport.launcher import DEFAULT_PORTS, Launcher, LaunchError, run_up

    given = {"converter": converter_port, "optimizer": optimizer_port, "inference": inference_port}
    ports = {n: (p if given[n] is None else given[n]) + (port_offset if given[n] is None else 0)
             for n, p in DEFAULT_PORTS.items()}
    launcher = Launcher(store, ports=ports, host=host, log_dir=log_dir)

    def ready(addrs: dict[str, str]) -> None:
        t = Table(title="modelport services (SERVING)", title_justify="left")
        t.add_column("service")
        t.add_column("address")
        t.add_column("env")
        for name, addr in addrs.items():
            t.add_row(name, addr, f"MODELPORT_{name.upper()}_ADDR={addr}")
        out.print(t)
        out.print(f"store: {launcher.store}   stop with Ctrl-C", highlight=False)
        # a plain line for scripts and tests that wait on stdout
        print("modelport up: all services SERVING " + " ".join(f"{n}={a}" for n, a in addrs.items()), flush=True)

    try:
        code = run_up(launcher, timeout=startup_timeout, on_ready=ready)
    except LaunchError as e:
        raise _fail(str(e)) from None
    if code == 0:
        print("modelport up: stopped", flush=True)
    raise typer.Exit(code)


# ---- deploy --------------------------------------------------------------------------------
def _parse_options(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    opts = {}
    for item in items:
        if "=" not in item:
            raise _fail(f"--option expects KEY=VALUE (e.g. prune.sparsity=0.8), got {item!r}", 2)
        k, v = item.split("=", 1)
        opts[k.strip()] = v.strip()
    return opts


@app.command()
def deploy(
    ctx: typer.Context,
    model: Path = typer.Argument(None, help="Trained model: .keras, .h5, .tflite, .onnx or a SavedModel folder."),
    spec_file: Path = typer.Option(None, "--file", "-f", help="Pipeline YAML with the same options as the flags."),
    name: str = typer.Option(None, help="Served model name (default: the file's stem)."),
    target: str = typer.Option(None, help="Serving format (onnx)."),
    optimize: list[str] = typer.Option(None, help="auto, none, or techniques (repeat or comma-separate)."),
    calib: Path = typer.Option(None, help="NPZ calibration data."),
    eval_data: Path = typer.Option(None, "--eval", help="NPZ evaluation data (inputs + optional 'y' labels)."),
    train: Path = typer.Option(None, help="NPZ fine-tuning data (prune, cluster, qat, distill)."),
    max_accuracy_drop: float = typer.Option(None, help="Largest accepted accuracy drop (default 0.01)."),
    goal: str = typer.Option(None, help="latency or size."),
    ep: str = typer.Option(None, help="Execution provider: auto, cpu, cuda, tensorrt."),
    opset: int = typer.Option(None, help="ONNX opset 13..18 (default: the converter's)."),
    version: str = typer.Option(None, help="Served version (default: next)."),
    option: list[str] = typer.Option(None, help="Technique parameter KEY=VALUE, e.g. prune.sparsity=0.8."),
    offline: bool = typer.Option(None, "--offline/--online",
                                 help="Run in-process without services; write a model-repository bundle."),
    output: Path = typer.Option(None, "--output", "-o", help="Offline bundle folder (default ./<name>-repository)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Upload → convert → optimize → verify → load → smoke test → report."""
    from modelport.pipeline import SpecError, StageFailed, load_spec, run_offline, run_pipeline

    overrides = dict(model=str(model) if model else None, name=name, target=target, optimize=optimize or None,
                     calib=calib, eval=eval_data, train=train, max_accuracy_drop=max_accuracy_drop, goal=goal, ep=ep,
                     opset=opset, version=version, options=_parse_options(option), offline=offline, output=output)
    if model is None and spec_file is None:
        raise _fail("give a MODEL file or a pipeline spec with -f pipeline.yaml", 2)
    try:
        spec = load_spec(spec_file, overrides)
    except SpecError as e:
        raise _fail(f"invalid pipeline spec {e.source}:\n  - " + "\n  - ".join(e.problems), 2) from None
    progress = RichProgress(err)
    try:
        with progress:
            if spec.offline:
                report = run_offline(spec, progress)
            else:
                with _gateway(ctx).client() as client:
                    report = run_pipeline(client, spec, progress)
    except StageFailed as e:
        if as_json:
            _print_json(e.report.to_dict())
        else:
            print_report(out, e.report)
        raise _fail(f"deploy failed at stage {e.stage}: {e.code}: {e.message}") from None
    except KeyboardInterrupt:
        raise _fail("interrupted: the running stage was cancelled (closing the stream cancels its job)", 130) from None
    if as_json:
        _print_json(report.to_dict())
    else:
        print_report(out, report)


# ---- convert / optimize --------------------------------------------------------------------
def _job_progress(progress: RichProgress, stage: str):
    progress.start(stage)

    def cb(ev) -> None:
        progress.update(stage, ev.progress, f"{ev.stage}: {ev.message}" if ev.message else ev.stage)
    return cb


def _with_client(ctx: typer.Context, offline: bool):
    """A Client to the configured services, or to in-process ones (offline) — a context manager."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        if not offline:
            with _gateway(ctx).client() as c:
                yield c
            return
        from modelport.client import Client
        from modelport.launcher import in_process_services

        with tempfile.TemporaryDirectory(prefix="modelport-offline-") as tmp, \
                in_process_services(Path(tmp) / "store") as addrs, Client(**addrs) as c:
            yield c
    return cm()


def _save_artifact(client, ref, dest: Path, service: str) -> Path:
    from modelport import media

    if ref.media_type == media.SAVEDMODEL:  # folders travel as archives: unpack into dest
        from modelport.archive import safe_unpack

        with tempfile.TemporaryDirectory() as tmp:
            tar = client.download(ref, Path(tmp) / "model.tar", service=service)
            dest.mkdir(parents=True, exist_ok=True)
            safe_unpack(tar, dest, max_bytes=64 << 30, max_files=1_000_000)
        return dest
    return client.download(ref, dest, service=service)


@app.command()
def convert(
    ctx: typer.Context,
    model: Path = typer.Argument(..., exists=True, help="Model file or SavedModel folder."),
    to: str = typer.Option("onnx", "--to", help="onnx, tflite or savedmodel."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the converted model."),
    opset: int = typer.Option(0, help="ONNX opset 13..18 (0 = default)."),
    samples: Path = typer.Option(None, help="NPZ parity samples (default: generated)."),
    trust_remote_code: bool = typer.Option(False, help="Allow Lambda layers / custom objects."),
    offline: bool = typer.Option(False, "--offline", help="Run in-process without services."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Convert one model and write the result locally (parity-checked against the original)."""
    from google.protobuf.json_format import MessageToDict

    from modelport import media
    from modelport.archive import pack_dir

    if to not in ("onnx", "tflite", "savedmodel"):
        raise _fail(f"--to must be onnx, tflite or savedmodel, not {to!r}", 2)
    progress = RichProgress(err)
    try:
        with progress, _with_client(ctx, offline) as client, tempfile.TemporaryDirectory() as tmp:
            src, mt = model, None
            if model.is_dir():
                src, mt = Path(tmp) / "model.tar", media.SAVEDMODEL
                pack_dir(model, src)
            progress.start("upload")
            ref = client.upload(src, media_type=mt, service="converter")
            progress.update("upload", 1.0, ref.digest[:19])
            samples_ref = client.upload(samples, media_type=media.NPZ) if samples else None
            res = client.convert(ref, to, opset=opset, parity_samples=samples_ref,
                                 trust_remote_code=trust_remote_code, on_event=_job_progress(progress, "convert"))
            _save_artifact(client, res.artifact, output, "converter")
    except ClientError as e:
        raise _fail(f"convert failed: {e.code}: {e.message}") from None
    result = MessageToDict(res, preserving_proto_field_name=True)
    if as_json:
        _print_json({"output": str(output), **result})
        return
    p = res.parity
    t = Table(title=f"convert {model.name} → {to}", title_justify="left")
    for c in ("output", "format", "size", "opset", "parity", "time"):
        t.add_column(c)
    worst = max((o.max_abs_diff for o in p.outputs), default=0.0)
    t.add_row(str(output), res.info.format or to, human_size(res.artifact.size), str(res.info.opset or "-"),
              f"{'passed' if p.passed else 'FAILED'} max|diff| {worst:.2e} ({p.samples} samples)",
              f"{res.seconds:.1f} s")
    out.print(t)


@app.command()
def optimize(
    ctx: typer.Context,
    model: Path = typer.Argument(..., exists=True, dir_okay=False, help="ONNX or Keras model."),
    technique: list[str] = typer.Option(["auto"], "--technique", "-t", help="Technique(s) or auto; repeatable."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the chosen model."),
    calib: Path = typer.Option(None, exists=True, help="NPZ calibration data."),
    eval_data: Path = typer.Option(None, "--eval", exists=True, help="NPZ evaluation data (optional 'y')."),
    train: Path = typer.Option(None, exists=True, help="NPZ fine-tuning data."),
    max_accuracy_drop: float = typer.Option(0.01, help="Accuracy budget."),
    goal: str = typer.Option("latency", help="latency or size."),
    ep: str = typer.Option("auto", help="Execution provider to measure on."),
    output_format: str = typer.Option("onnx", help="onnx or tflite."),
    option: list[str] = typer.Option(None, help="Technique parameter KEY=VALUE."),
    offline: bool = typer.Option(False, "--offline", help="Run in-process without services."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Optimize one model with the given techniques (or auto) and write the chosen one locally."""
    from google.protobuf.json_format import MessageToDict

    from modelport import media
    from modelport.pipeline import TECHNIQUES, DeployReport, StageReport

    techniques = [p.strip() for t in technique for p in t.split(",") if p.strip()]
    bad = [t for t in techniques if t not in (*TECHNIQUES, "auto")]
    if bad:
        raise _fail(f"unknown technique(s) {', '.join(bad)}; use auto or: {', '.join(TECHNIQUES)}", 2)
    progress = RichProgress(err)
    try:
        with progress, _with_client(ctx, offline) as client:
            progress.start("upload")
            ref = client.upload(model, service="optimizer")
            data = {k: client.upload(p, media_type=media.NPZ, service="optimizer") if p else None
                    for k, p in (("calib", calib), ("eval", eval_data), ("train", train))}
            progress.update("upload", 1.0, ref.digest[:19])
            res = client.optimize(ref, techniques, goal=goal, max_accuracy_drop=max_accuracy_drop,
                                  calibration_data=data["calib"], eval_data=data["eval"], train_data=data["train"],
                                  execution_provider=ep, options=_parse_options(option),
                                  output_format=output_format, on_event=_job_progress(progress, "optimize"))
            client.download(res.artifact, output, service="optimizer")
    except ClientError as e:
        raise _fail(f"optimize failed: {e.code}: {e.message}") from None
    if as_json:
        _print_json({"output": str(output), **MessageToDict(res, preserving_proto_field_name=True)})
        return
    from modelport.cli.render import candidate_notes, candidates_table

    rep = DeployReport(name=model.stem, model=str(model))
    row = lambda c: {"technique": c.technique, "format": c.format, "size_bytes": c.size_bytes,  # noqa: E731
                     "gzip_size_bytes": c.gzip_size_bytes, "latency_p50_ms": c.latency_p50_ms,
                     "latency_p90_ms": c.latency_p90_ms, "accuracy": c.accuracy, "agreement": c.agreement,
                     "within_budget": c.within_budget, "chosen": c.chosen, "note": c.note}
    rep.stages.append(StageReport("optimize", status="ok", data={"baseline": row(res.baseline),
                                                                 "candidates": [row(c) for c in res.candidates]}))
    out.print(candidates_table(rep))
    for line in candidate_notes(rep):
        out.print(line, highlight=False, markup=False)
    out.print(f"chose [bold]{res.chosen_technique or 'baseline'}[/]: {res.reason}\nwrote {output} "
              f"({human_size(res.artifact.size)})")


# ---- infer / models / status / bench -------------------------------------------------------
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
        raise _fail(str(e), 2) from None
    try:
        with _gateway(ctx).client() as client:
            arrays = _cast_to_model(client, name, version, arrays)
            outputs = client.infer(name, arrays, version=version)
    except ValueError as e:
        raise _fail(str(e), 2) from None
    except ClientError as e:
        raise _fail(f"infer failed: {e.code}: {e.message}") from None
    if save:
        np.savez(save, **outputs)
    if as_json:
        _print_json({"model_name": name, "outputs": {
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
        with _gateway(ctx).client() as client:
            listed = client.list_models()
    except ClientError as e:
        raise _fail(f"models failed: {e.code}: {e.message}") from None
    rows = [{"name": m.name, "version": m.version, "state": m.state, "execution_provider": m.execution_provider,
             "batching": m.batching.enabled, "max_batch_size": m.batching.max_batch_size, "reason": m.reason,
             "digest": m.artifact.digest} for m in listed]
    if as_json:
        _print_json({"models": rows})
        return
    t = Table(title=f"models on {_gateway(ctx).inference}", title_justify="left")
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
    with _gateway(ctx).client() as client:
        statuses = client.status(timeout=timeout)
    if as_json:
        _print_json({"services": [{"service": s.service, "address": s.address, "status": s.status,
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
    from modelport.cli.bench import inputs_from_metadata, run_bench

    try:
        with _gateway(ctx).client() as client:
            if input_file:
                arrays = _cast_to_model(client, name, version, read_inputs(input_file))
            else:
                arrays = inputs_from_metadata(client, name, version, batch=batch)
            res = run_bench(client, name, arrays, concurrency=concurrency, duration=duration, warmup=warmup,
                            version=version)
    except (OSError, ValueError) as e:
        raise _fail(str(e), 2) from None
    except ClientError as e:
        raise _fail(f"bench failed: {e.code}: {e.message}") from None
    if as_json:
        _print_json(res.to_dict())
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



def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``modelport``)."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="modelport")
