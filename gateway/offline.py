"""Offline deployment: the deploy pipeline against in-process services, written as a bundle.

``run_offline(spec)`` runs the very same pipeline as ``modelport deploy`` against services started
in this process on loopback, then writes a Triton-layout model-repository bundle plus
``report.json``. The gateway is the composition root: only it may start all three services.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from modelport.deploy import DeployReport, DeploySpec, Progress, StageFailed, run_pipeline


def write_bundle(client, report: DeployReport, spec: DeploySpec, out: Path) -> Path:
    """Write ``out/<name>/<version>/model.onnx`` + ``config.pbtxt`` (Triton layout); returns the model file.

    The bytes and the config come from the inference service the pipeline loaded and smoke-tested,
    so the bundle holds exactly what was verified; a model with external data gets its data file(s)
    beside ``model.onnx``. An existing bundle gains a new version.
    """
    from modelport import repository

    name = spec.name
    existing = [int(p.name) for p in (out / name).glob("*") if p.is_dir() and p.name.isdigit()]
    version = int(spec.version) if spec.version.isdigit() else max(existing, default=0) + 1
    cfg = client.model_config(name, report.version)
    load = report.stage("load").data
    ref = client.stat(load["digest"], service="inference")
    with tempfile.TemporaryDirectory(prefix="modelport-bundle-") as tmp:
        model = client.download_model(ref, Path(tmp) / "model", service="inference")
        return repository.write_model(out, name, version, model, cfg)


def run_offline(spec: DeploySpec, progress: Progress | None = None, store: Path | None = None) -> DeployReport:
    """The same pipeline against in-process services on loopback; writes the bundle and report.json."""
    from gateway.launcher import in_process_services
    from modelport.client import Client
    from modelport.errors import ModelportError

    out = Path(spec.output or f"./{spec.name}-repository").resolve()
    with tempfile.TemporaryDirectory(prefix="modelport-offline-") as tmp, \
            in_process_services(Path(store or Path(tmp) / "store")) as addrs, Client(**addrs) as client:
        try:
            report = run_pipeline(client, spec, progress)
        except StageFailed as e:
            _write_report(out, e.report)
            raise
        rep = report.stage("bundle")
        if progress:
            progress.start("bundle")
        t0 = time.perf_counter()
        try:
            model_file = write_bundle(client, report, spec, out)
        except (OSError, ModelportError) as e:
            code = e.status if isinstance(e, ModelportError) else "INTERNAL"
            rep.status, rep.detail = "failed", f"{code}: {e}"
            report.ok, report.failed_stage = False, "bundle"
            report.error = {"stage": "bundle", "code": str(code), "message": str(e)}
            _write_report(out, report)
            raise StageFailed("bundle", str(code), str(e), report) from None
        rep.status, rep.seconds = "ok", time.perf_counter() - t0
        rep.format, rep.size_bytes = "model-repository", sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        rep.detail = str(model_file.relative_to(out))
        rep.data = {"model_file": str(model_file), "config": str(model_file.parent.parent / "config.pbtxt")}
        report.bundle = str(out)
        report.endpoint = f"modelport-inference --repository {out}"
        if progress:
            progress.finish("bundle", rep)
        _write_report(out, report)
    return report


def _write_report(out: Path, report: DeployReport) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".report.json.tmp"
    tmp.write_text(report.to_json())
    tmp.replace(out / "report.json")
