"""``modelport convert`` and ``modelport optimize``: one job each, the result written locally."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer
from rich.table import Table

from gateway.cli.app import (
    app,
    err,
    fail,
    job_progress,
    out,
    print_json,
    save_artifact,
    upload_progress,
    with_client,
)
from gateway.cli.deploy import parse_options
from gateway.cli.render import RichProgress, human_size
from modelport.client import ClientError


@app.command()
def convert(
    ctx: typer.Context,
    model: Path = typer.Argument(..., exists=True, help="Model file, SavedModel folder, or ONNX model with "
                                                        "external data (its folder, or model.onnx beside its data)."),
    to: str = typer.Option("onnx", "--to", help="onnx, tflite, savedmodel, pytorch (a torch.export .pt2) or generation (a causal LM's KV-cache step + generation.json, a folder)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the converted model (a folder for "
                                                            "a SavedModel or an ONNX model with external data, "
                                                            "unless it ends in .onnx)."),
    opset: int = typer.Option(0, help="ONNX opset 13..18 (0 = default)."),
    samples: Path = typer.Option(None, help="NPZ parity samples (default: generated)."),
    trust_remote_code: bool = typer.Option(False, help="Allow Lambda layers / custom objects."),
    offline: bool = typer.Option(False, "--offline", help="Run in-process without services."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Convert one model and write the result locally (parity-checked against the original)."""
    from google.protobuf.json_format import MessageToDict

    from modelport import formats, media

    if to not in formats.TARGET_FORMATS:
        raise fail(f"--to must be one of {', '.join(formats.TARGET_FORMATS)}, not {to!r}", 2)
    progress = RichProgress(err)
    try:
        with progress, with_client(ctx, offline) as client:
            ref = client.upload(model, service="converter", progress=upload_progress(progress, model.name))
            samples_ref = client.upload(samples, media_type=media.NPZ) if samples else None
            res = client.convert(ref, to, opset=opset, parity_samples=samples_ref,
                                 trust_remote_code=trust_remote_code, on_event=job_progress(progress, "convert"))
            output = save_artifact(client, res.artifact, output, "converter", progress)
    except ClientError as e:
        raise fail(f"convert failed: {e.code}: {e.message}") from None
    result = MessageToDict(res, preserving_proto_field_name=True)
    if as_json:
        print_json({"output": str(output), **result})
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
    model: Path = typer.Argument(..., exists=True, help="ONNX or Keras model, a generation folder (an ONNX model with external "
                                                        "data: its folder, or model.onnx beside its data)."),
    technique: list[str] = typer.Option(["auto"], "--technique", "-t", help="Technique(s) or auto; repeatable."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the chosen model (a folder when it "
                                                            "has external data, unless it ends in .onnx)."),
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
    from modelport.deploy import TECHNIQUES, DeployReport, StageReport

    techniques = [p.strip() for t in technique for p in t.split(",") if p.strip()]
    bad = [t for t in techniques if t not in (*TECHNIQUES, "auto")]
    if bad:
        raise fail(f"unknown technique(s) {', '.join(bad)}; use auto or: {', '.join(TECHNIQUES)}", 2)
    progress = RichProgress(err)
    try:
        with progress, with_client(ctx, offline) as client, tempfile.TemporaryDirectory() as tmp:
            if model.is_dir() and (model / "generation.json").is_file():  # a generation folder travels as one archive
                from modelport.archive import pack_dir

                progress.start("upload")
                pack_dir(model, Path(tmp) / "generation.tar")
                ref = client.upload(Path(tmp) / "generation.tar", media_type=media.GENERATION, service="optimizer")
            else:
                ref = client.upload(model, service="optimizer", progress=upload_progress(progress, model.name))
            data = {k: client.upload(p, media_type=media.NPZ, service="optimizer") if p else None
                    for k, p in (("calib", calib), ("eval", eval_data), ("train", train))}
            res = client.optimize(ref, techniques, goal=goal, max_accuracy_drop=max_accuracy_drop,
                                  calibration_data=data["calib"], eval_data=data["eval"], train_data=data["train"],
                                  execution_provider=ep, options=parse_options(option),
                                  output_format=output_format, on_event=job_progress(progress, "optimize"))
            output = save_artifact(client, res.artifact, output, "optimizer", progress)
    except ClientError as e:
        raise fail(f"optimize failed: {e.code}: {e.message}") from None
    if as_json:
        print_json({"output": str(output), **MessageToDict(res, preserving_proto_field_name=True)})
        return
    from gateway.cli.render import candidate_notes, candidates_table

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
