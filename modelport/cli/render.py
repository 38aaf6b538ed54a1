"""Rich rendering for the CLI: live per-stage progress bars fed by JobEvents, and report tables."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelport.pipeline import DeployReport, StageReport
from modelport.pipeline import Progress as PipelineProgress


def human_size(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'."""
    if not n:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) or x == 0 else f"{x:.2f} ms"


def fmt_acc(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x * 100:.2f}%"


class RichProgress(PipelineProgress):
    """One live progress bar per pipeline stage, on stderr so --json stdout stays clean."""

    def __init__(self, console: Console):
        self.bars = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[stage]:<9}"), BarColumn(),
                             TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                             TextColumn("{task.description}"), console=console, transient=False)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def start(self, stage: str, message: str = "") -> None:
        self.tasks[stage] = self.bars.add_task(message, total=1.0, stage=stage)

    def update(self, stage: str, fraction: float, message: str = "") -> None:
        if stage not in self.tasks:
            self.start(stage)
        self.bars.update(self.tasks[stage], completed=max(0.0, min(fraction, 1.0)), description=message[:70])

    def finish(self, stage: str, report: StageReport) -> None:
        if stage not in self.tasks:
            self.start(stage)
        mark = {"ok": "[green]done", "skipped": "[dim]skipped", "failed": "[red]FAILED"}.get(report.status, "")
        detail = report.detail if report.status == "failed" else (report.parity or report.detail)
        self.bars.update(self.tasks[stage], completed=1.0 if report.status != "failed" else None,
                         description=f"{mark}[/] {detail[:80]}")
        self.bars.stop_task(self.tasks[stage])


def stage_table(report: DeployReport) -> Table:
    """One row per stage: status, format, size, latency, accuracy, parity/detail, time."""
    t = Table(title=f"deploy {report.name}", title_justify="left")
    for col, kw in (("stage", {}), ("status", {}), ("format", {}), ("size", {"justify": "right"}),
                    ("latency", {"justify": "right"}), ("accuracy", {"justify": "right"}),
                    ("parity / detail", {"overflow": "fold"}), ("time", {"justify": "right"})):
        t.add_column(col, **kw)
    colors = {"ok": "green", "failed": "red", "skipped": "dim", "pending": "dim"}
    for s in report.stages:
        detail = s.parity if s.parity and s.stage != "verify" else ""
        detail = "; ".join(x for x in (detail, s.parity if s.stage == "verify" else "", s.detail) if x)
        t.add_row(s.stage, f"[{colors.get(s.status, 'white')}]{s.status}[/]", s.format or "-",
                  human_size(s.size_bytes), fmt_ms(s.latency_ms), fmt_acc(s.accuracy), detail,
                  f"{s.seconds:.1f} s")
    return t


def candidates_table(report: DeployReport) -> Table | None:
    """The optimizer's ranked candidates beside the baseline, when the optimize stage ran."""
    data = next((s.data for s in report.stages if s.stage == "optimize" and s.status == "ok"), None)
    if not data or not data.get("candidates") and not data.get("baseline"):
        return None
    t = Table(title="optimization candidates (best first)", title_justify="left")
    for col in ("technique", "format", "size", "gzip", "p50", "p90", "accuracy", "agreement", "budget", "note"):
        t.add_column(col, justify="right" if col in ("size", "gzip", "p50", "p90", "accuracy", "agreement") else "left",
                     overflow="fold")
    rows = [data["baseline"]] if data.get("baseline") else []
    rows += [c for c in data.get("candidates", []) if c["technique"] != "baseline"]
    for c in rows:
        name = ("* " if c.get("chosen") else "  ") + c["technique"]
        t.add_row(f"[bold green]{name}[/]" if c.get("chosen") else name, c.get("format") or "-",
                  human_size(c.get("size_bytes")), human_size(c.get("gzip_size_bytes")),
                  fmt_ms(c.get("latency_p50_ms")), fmt_ms(c.get("latency_p90_ms")), fmt_acc(c.get("accuracy")),
                  fmt_acc(c.get("agreement")), "ok" if c.get("within_budget") else "over",
                  (c.get("note") or "")[:60])
    return t


def print_report(console: Console, report: DeployReport) -> None:
    """The final per-stage table, the candidate table, warnings and where the model is served."""
    console.print(stage_table(report))
    cands = candidates_table(report)
    if cands is not None:
        console.print(cands)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    if report.ok:
        where = report.bundle and f"bundle written to {report.bundle} (serve it with " \
                                  f"`modelport-inference --repository {report.bundle}`)"
        console.print(f"[bold green]deployed[/] {report.name} v{report.version} on "
                      f"{report.execution_provider or '?'} — {where or report.endpoint} in {report.seconds:.1f} s")
    elif report.error:
        e = report.error
        console.print(f"[bold red]deploy failed[/] at stage [bold]{e.get('stage')}[/]: {e.get('code')}: "
                      f"{e.get('message')}")
