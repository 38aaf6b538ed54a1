"""``modelport deploy``: one model through the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import typer

from gateway.cli.app import app, err, fail, gateway_config, out, print_json
from gateway.cli.render import RichProgress, print_report


def parse_options(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    opts = {}
    for item in items:
        if "=" not in item:
            raise fail(f"--option expects KEY=VALUE (e.g. prune.sparsity=0.8), got {item!r}", 2)
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
    generation: str = typer.Option(None, help="auto (default): a keras_hub causal LM or decoder backbone .keras deploys "
                                                "for generation (KV-cache step, streamed tokens); on: require it; off: "
                                                "plain ONNX."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Upload → convert → optimize → verify → load → smoke test → report."""
    from gateway.offline import run_offline
    from modelport.deploy import SpecError, StageFailed, load_spec, run_pipeline

    overrides = dict(model=str(model) if model else None, name=name, target=target, optimize=optimize or None,
                     calib=calib, eval=eval_data, train=train, max_accuracy_drop=max_accuracy_drop, goal=goal, ep=ep,
                     opset=opset, version=version, options=parse_options(option), offline=offline, output=output,
                     generation=generation)
    if model is None and spec_file is None:
        raise fail("give a MODEL file or a pipeline spec with -f pipeline.yaml", 2)
    try:
        spec = load_spec(spec_file, overrides)
    except SpecError as e:
        raise fail(f"invalid pipeline spec {e.source}:\n  - " + "\n  - ".join(e.problems), 2) from None
    progress = RichProgress(err)
    try:
        with progress:
            if spec.offline:
                report = run_offline(spec, progress)
            else:
                with gateway_config(ctx).client() as client:
                    report = run_pipeline(client, spec, progress)
    except StageFailed as e:
        if as_json:
            print_json(e.report.to_dict())
        else:
            print_report(out, e.report)
        raise fail(f"deploy failed at stage {e.stage}: {e.code}: {e.message}") from None
    except KeyboardInterrupt:
        raise fail("interrupted: the running stage was cancelled (closing the stream cancels its job)", 130) from None
    if as_json:
        print_json(report.to_dict())
    else:
        print_report(out, report)
