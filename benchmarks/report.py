"""Assemble ``BENCHMARKS.md`` from the sections under ``benchmarks/results/``.

The report is a header (machine, libraries, exact commands, what ran and how long) followed
by every ``results/*.md`` section in a fixed order; image links inside a section are rewritten
so they resolve from the repository root, and plots a section did not reference are listed
under it.

    .venv/bin/python -m benchmarks.report     # rebuild from the committed results
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from benchmarks import common

#: Sections appear in this order (a section ``X`` or ``X_<anything>`` belongs to ``X``);
#: unknown sections follow alphabetically.
SECTION_ORDER = ["e2e", "serving", "optimize", "convert", "breadth", "artifacts", "reliability"]

INTRO = """\
# modelport benchmarks

Every figure is a ratio to a baseline measured **in the same run on the same machine**:
Keras in TensorFlow for the end-to-end comparison, the Python servers a user would pick instead
(KServe, MLServer) and a do-nothing gRPC server for serving, the unoptimized model for optimization, tf2onnx called directly for conversion,
and a plain local file copy for artifact transfer. Timings are taken
after warm-up over repeated runs and reported as the median with min/max and p50/p90/p99.
Absolute numbers depend on this machine; the ratios are what carry over.
"""


def section_key(stem: str) -> tuple[int, str]:
    """Sort key: position of the section's family in SECTION_ORDER, then its name."""
    for i, fam in enumerate(SECTION_ORDER):
        if stem == fam or stem.startswith(fam + "_"):
            return (i, "" if stem == fam else stem)
    return (len(SECTION_ORDER), stem)


def ordered_sections(results_dir: Path) -> list[Path]:
    """The ``*.md`` sections in report order."""
    return sorted(results_dir.glob("*.md"), key=lambda p: section_key(p.stem))


_IMG_RE = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")


def rewrite_links(markdown: str, prefix: str) -> tuple[str, set[str]]:
    """Point relative image links (``![x](plot.png)``) at ``prefix/plot.png``; return the new
    text and the file names referenced."""
    seen: set[str] = set()

    def fix(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^[a-z]+://", target) or target.startswith("/"):
            return m.group(0)
        name = target.rsplit("/", 1)[-1]
        seen.add(name)
        if "/" in target:  # already repo-relative (benchmarks/results/x.png) or similar
            return m.group(0)
        return f"{m.group(1)}{prefix}/{target}{m.group(3)}"

    return _IMG_RE.sub(fix, markdown), seen


def build_report(run: dict | None, results_dir: Path | None = None, info: dict | None = None) -> str:
    """The full BENCHMARKS.md text. ``run`` is run_all's record (commands, statuses) or None."""
    results_dir = Path(results_dir or common.RESULTS_DIR)
    prefix = _results_prefix(results_dir)
    parts = [INTRO]

    parts.append("## Machine and libraries\n\nOf the last full suite run. A section re-run since on its own carries its "
                 "own machine, commit and load lines, which are the ones that apply to its figures.\n\n"
                 + common.system_info_markdown(info))

    if run:
        cmds = [f"    {run['command']}"]
        lines = ["## How these numbers were produced\n",
                 f"Suite command ({'quick' if run.get('quick') else 'full'} run, started "
                 f"{run.get('started_utc', '?')}, {run.get('elapsed_s', 0) / 60:.1f} min in total):\n",
                 "\n".join(cmds), "",
                 "Each benchmark ran in its own process with a time bound:\n"]
        rows = []
        for r in run.get("benchmarks", []):
            status = r["status"] + (" (re-run)" if r.get("rerun") else "")
            if r["status"] != "ok":
                status = f"**{status}**" + (f" ({r['reason']})" if r.get("reason") else "")
            load = r.get("load_avg_before")
            rows.append([r["name"], f"`{r.get('command', '')}`", status, f"{r.get('elapsed_s', 0):.0f} s",
                         f"{load[0]:.1f}" if load else "—", ", ".join(r.get("sections_written", [])) or "—"])
        lines.append(common.markdown_table(["benchmark", "command", "status", "time", "load avg at start",
                                            "sections written"], rows))
        for rr in run.get("reruns", []):
            lines.append(f"\nRe-run afterwards (started {rr['started_utc']}), replacing those rows:\n\n    {rr['command']}")
        lines.append("\nLoad average = runnable processes over the last minute on this 2-core machine; "
                     "above 2, other work shared the cores while the benchmark ran.")
        failed = [r for r in run.get("benchmarks", []) if r["status"] != "ok"]
        for r in failed:
            lines.append(f"\n`{r['name']}` did not finish ({r['status']}); the end of its log "
                         f"(`{r.get('log', '')}`):\n")
            lines.append("```\n" + (r.get("log_tail") or r.get("reason", "")).strip() + "\n```")
            lines.append("Any section of that name below is from an earlier run.")
        parts.append("\n".join(lines))

    sections = ordered_sections(results_dir)
    if sections:
        toc = ["## Contents\n"]
        for p in sections:
            title = _title(p)
            toc.append(f"- [{title}](#{_anchor(title)})")
        parts.append("\n".join(toc))

    pngs = {p.name for p in results_dir.glob("*.png")}
    referenced_all: set[str] = set()
    bodies = []
    for p in sections:
        text, seen = rewrite_links(p.read_text(), prefix)
        referenced_all |= seen
        bodies.append((p, text.rstrip()))
    # Plots nobody referenced: show each under the section whose name is its longest prefix.
    extra: dict[Path, list[str]] = {}
    for n in sorted(pngs - referenced_all):
        owners = [p for p, _ in bodies if n.startswith(p.stem)]
        if owners:
            extra.setdefault(max(owners, key=lambda q: len(q.stem)), []).append(n)
            referenced_all.add(n)
    for p, text in bodies:
        if extra.get(p):
            text += "\n\n" + "\n\n".join(f"![{n}]({prefix}/{n})" for n in extra[p])
        parts.append(text)
    orphans = sorted(pngs - referenced_all)
    if orphans:
        parts.append("## Other plots\n\n" + "\n\n".join(f"![{n}]({prefix}/{n})" for n in orphans))
    if not sections:
        parts.append("## No results yet\n\nRun `make bench` to produce them.")
    return "\n\n".join(parts).rstrip() + "\n"


def _title(p: Path) -> str:
    for line in p.read_text().splitlines():
        if line.startswith("## "):
            return line[3:].strip()
    return p.stem


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped, spaces to dashes."""
    a = title.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def _results_prefix(results_dir: Path | None = None) -> str:
    """How BENCHMARKS.md links into ``results_dir`` (repo-relative when inside the repo)."""
    results_dir = Path(results_dir or common.RESULTS_DIR)
    try:
        return results_dir.resolve().relative_to(common.REPO_ROOT).as_posix()
    except ValueError:
        return results_dir.as_posix()


REPORT_PATH = common.REPO_ROOT / "BENCHMARKS.md"


def write_report(run: dict | None = None, out: Path | None = None) -> Path:
    """Write BENCHMARKS.md at the repo root (or ``out``) and return its path."""
    out = Path(out or common.REPO_ROOT / "BENCHMARKS.md")
    out.write_text(build_report(run))
    return out


def splice_section(report_text: str, section_text: str) -> str:
    """``report_text`` with the section titled like ``section_text`` (its ``## `` heading) replaced by it, up to
    the next ``## `` heading; appended, with a contents line, when the report has no such section. The rest of
    the report (hand-written notes in the header, other sections) is left as it is."""
    title = _title_of(section_text)
    lines = report_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## ") and line[3:].strip() == title), None)
    body = section_text.strip().splitlines()
    if start is None:
        toc = next((i for i, line in enumerate(lines) if line.strip() == "## Contents"), None)
        if toc is not None:
            end_toc = toc + 1
            while end_toc < len(lines) and (not lines[end_toc].strip() or lines[end_toc].startswith("- [")):
                end_toc += 1
            while lines[end_toc - 1].strip() == "":
                end_toc -= 1
            lines.insert(end_toc, f"- [{title}](#{_anchor(title)})")
        return "\n".join(lines).rstrip() + "\n\n" + "\n".join(body) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = [""] + lines[end:] if end < len(lines) else []
    return "\n".join(lines[:start] + body + tail).rstrip() + "\n"


def _title_of(section_text: str) -> str:
    first = section_text.lstrip().splitlines()[0]
    if not first.startswith("## "):
        raise ValueError("a results section must start with a '## ' heading")
    return first[3:].strip()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Rebuild BENCHMARKS.md from results/, or splice sections into it.")
    p.add_argument("--splice", nargs="+", metavar="NAME",
                   help="replace (or append) only these sections (results/NAME.md) in the existing BENCHMARKS.md, "
                        "keeping everything else, hand-written notes included")
    args = p.parse_args(argv)
    if args.splice:
        text = REPORT_PATH.read_text()
        for name in args.splice:
            section = (common.RESULTS_DIR / f"{name}.md").read_text()
            text = splice_section(text, rewrite_links(section, _results_prefix())[0])
        REPORT_PATH.write_text(text)
        print(f"spliced {', '.join(args.splice)} into {REPORT_PATH}")
        return 0
    run_path = common.RESULTS_DIR / "run_all.json"
    run = json.loads(run_path.read_text()) if run_path.is_file() else None
    path = write_report(run)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
