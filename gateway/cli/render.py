"""Rich rendering for the CLI: live per-stage progress bars fed by JobEvents, and report tables."""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelport.deploy import DeployReport, StageReport
from modelport.deploy import Progress as PipelineProgress


def human_size(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'."""
    if not n:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) or x == 0 else f"{x:.3g} ms"


def fmt_acc(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x * 100:.{digits}f}%"


class RichProgress(PipelineProgress):
    """One live progress bar per pipeline stage, on stderr so --json stdout stays clean."""

    def __init__(self, console: Console):
        self.bars = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[stage]:<8}"), BarColumn(bar_width=24),
                             TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                             TextColumn("{task.description}"), console=console,
                             transient=False)
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
        self.bars.update(self.tasks[stage], completed=max(0.0, min(fraction, 1.0)), description=message[:48])

    def transfer(self, stage: str, done: int, total: int, label: str = "") -> None:
        """Bytes so far of an upload or download, as 'label 1.2 GiB / 2.1 GiB'."""
        if stage not in self.tasks:
            self.start(stage)
        text = f"{label} {human_size(done) if done else '0 B'} / {human_size(total)}".strip()
        self.bars.update(self.tasks[stage], completed=done / total if total else 1.0, description=escape(text[:48]))

    def finish(self, stage: str, report: StageReport) -> None:
        if stage not in self.tasks:
            self.start(stage)
        mark = {"ok": "[green]done", "skipped": "[dim]skipped", "failed": "[red]FAILED"}.get(report.status, "")
        detail = report.detail if report.status == "failed" else (report.parity or report.detail)
        self.bars.update(self.tasks[stage], completed=1.0 if report.status != "failed" else None,
                         description=f"{mark}[/] {escape(detail[:40])}")
        self.bars.stop_task(self.tasks[stage])


def stage_table(report: DeployReport) -> Table:
    """One row per stage: status, format, size, latency, accuracy, time (details listed below it)."""
    t = Table(title=f"deploy {report.name}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("stage", "status", "format", "size", "latency", "accuracy", "time"):
        t.add_column(col, justify="right" if col in ("size", "latency", "accuracy", "time") else "left",
                     no_wrap=True)
    colors = {"ok": "green", "failed": "red", "skipped": "dim", "pending": "dim"}
    for s in report.stages:
        status = f"{s.status} (cached)" if s.cached and s.status == "ok" else s.status
        t.add_row(s.stage, f"[{colors.get(s.status, 'white')}]{status}[/]", s.format or "-",
                  human_size(s.size_bytes), fmt_ms(s.latency_ms), fmt_acc(s.accuracy), f"{s.seconds:.1f} s")
    return t


def stage_details(report: DeployReport) -> list[str]:
    """'stage: parity; detail' lines for the stages that have something to say."""
    lines = []
    for s in report.stages:
        text = "; ".join(x for x in (s.parity, s.detail) if x)
        if text:
            lines.append(f"[bold]{s.stage}[/]: {text}")
    return lines


def candidates_table(report: DeployReport) -> Table | None:
    """The optimizer's measured candidates beside the baseline, when the optimize stage ran."""
    data = next((s.data for s in report.stages if s.stage == "optimize" and s.status == "ok"), None)
    if not data or not data.get("candidates") and not data.get("baseline"):
        return None
    rows = [data["baseline"]] if data.get("baseline") else []
    rows += [c for c in data.get("candidates", []) if c["technique"] != "baseline" and c.get("size_bytes")]
    show_format = len({c.get("format") for c in rows}) > 1
    t = Table(title="optimization candidates (best first, * = chosen)", title_justify="left", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True)
    cols = ["technique", *(["fmt"] if show_format else []), "size", "gzip", "p50 ms", "acc", "agree", "budget"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("technique", "format", "budget") else "right", no_wrap=True)
    num = lambda x: "-" if not x or not math.isfinite(x) else f"{x:.3f}"  # noqa: E731
    for c in rows:
        name = ("* " if c.get("chosen") else "  ") + c["technique"]
        t.add_row(f"[bold green]{name}[/]" if c.get("chosen") else name,
                  *([c.get("format") or "-"] if show_format else []),
                  human_size(c.get("size_bytes")), human_size(c.get("gzip_size_bytes")),
                  num(c.get("latency_p50_ms")), fmt_acc(c.get("accuracy"), 1), fmt_acc(c.get("agreement"), 1),
                  "ok" if c.get("within_budget") else "over")
    return t


def candidate_notes(report: DeployReport) -> list[str]:
    """Why each candidate was chosen or dropped; candidates that produced nothing are grouped."""
    data = next((s.data for s in report.stages if s.stage == "optimize" and s.status == "ok"), None) or {}
    lines, not_run = [], {}
    if (data.get("baseline") or {}).get("note"):
        lines.append(f"  baseline: {data['baseline']['note']}")
    for c in data.get("candidates", []):
        if c["technique"] == "baseline":
            continue
        if c.get("size_bytes"):
            if c.get("note"):
                lines.append(f"  {c['technique']}: {c['note']}")
        else:
            note = (c.get("note") or "no result").removeprefix(c["technique"] + " ").removeprefix(c["technique"] + ": ")
            not_run.setdefault(note, []).append(c["technique"])
    for note, names in not_run.items():
        lines.append(f"  not run ({', '.join(names)}): {note}")
    return lines


def print_report(console: Console, report: DeployReport) -> None:
    """The final per-stage table, the candidate table, warnings and where the model is served."""
    console.print(stage_table(report))
    for line in stage_details(report):
        console.print(line, highlight=False)
    if report.cached_stages():
        console.print(f"[dim]from cache (done by an earlier run):[/] {', '.join(report.cached_stages())}",
                      highlight=False)
    cands = candidates_table(report)
    if cands is not None:
        console.print(cands)
        for line in candidate_notes(report):
            console.print(line, highlight=False, markup=False)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    if report.ok:
        where = report.bundle and f"bundle written to {report.bundle} (serve it with " \
                                  f"`modelport-inference --repository {report.bundle}`)"
        console.print(f"[bold green]deployed[/] {report.name} v{report.version} on "
                      f"{report.execution_provider or '?'} — {where or report.endpoint} in {report.seconds:.1f} s")
        if report.target == "generation":
            console.print(f"a generation model: stream tokens with `modelport generate {report.name} --input-ids 1,2,3 "
                          "--max-tokens 32` (or tritonclient's start_stream, TensorRT-LLM tensor names)", highlight=False)
    elif report.error:
        e = report.error
        console.print(f"[bold red]deploy failed[/] at stage [bold]{e.get('stage')}[/]: {e.get('code')}: "
                      f"{e.get('message')}")
