"""Large models through the optimizer: graph, fp16, int8-static and int8-dynamic on multi-GB ONNX with external
data, each in an optimizer service of its own, with the peak RSS of its process tree over the weight bytes, beside
the optimizer's admission estimate (issue 13).

``bench_large`` converts the 1.33 GB and 2.34 GB transformer LMs and runs int8-dynamic and serving on them; this
benchmark takes the same converted artifacts through every optimizer technique that makes sense at this size:

- the model is built and converted exactly as in ``bench_large`` (converter service subprocess, folder artifact of
  ``model.onnx`` + ``model.onnx.data``);
- each technique is one ``Optimize`` request (8 generated eval samples, also the calibration set of int8-static)
  to a fresh optimizer service subprocess sharing the store: peak RSS of its tree per job stage, sampled every
  50 ms, against the FP32 weight bytes, beside the optimizer's admission estimate for that technique
  (``optimizer_svc/admission.py``: the figure it refuses a job on), the candidate's size, its max abs diff and
  cosine against FP32 on the eval samples, and its paired latency ratio (3 timed runs: indicative).

One multi-GB process tree at a time; wall times are from a shared 2-core machine.

    .venv/bin/python -m benchmarks.bench_large_techniques                  # t4 and t9, every technique
    .venv/bin/python -m benchmarks.bench_large_techniques --quick          # t1 (0.73 GB) only
    .venv/bin/python -m benchmarks.bench_large_techniques --models t4 --techniques fp16
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import common
from benchmarks.bench_large import (
    GB,
    MODELS,
    OPTIMIZE_OPTIONS,
    _gb,
    _x,
    modelport_convert,
    modelport_optimize,
    run_capped,
)

TECHNIQUES = ["graph", "fp16", "int8-static", "int8-dynamic"]


def admission_estimate(technique: str, weights: int) -> int:
    """Bytes the optimizer's admission check says ``technique`` needs on an external-data model of ``weights``."""
    from optimizer_svc.admission import estimate

    return estimate(technique, weights, external=True).needed


def measure(names: list[str], techniques: list[str], cap: int) -> dict:
    from modelport.memory import weight_bytes

    results: dict = {"cap_bytes": cap, "techniques": techniques, "models": {}}
    me = [sys.executable, "-m", "benchmarks.bench_large"]
    with tempfile.TemporaryDirectory(prefix="bench-large-tech-", dir=os.environ.get("MODELPORT_BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        for name in names:
            path = tmp / f"{name}.keras"
            rc, _mem, secs, tail = run_capped([*me, "--build", name, str(path)], cap, 3600)
            if rc != 0:
                raise SystemExit(f"building {name} failed ({rc}): {tail}")
            w = weight_bytes(path, "keras")
            print(f"[{name}] built in {secs:.0f}s, {w / GB:.2f} GB of weights", flush=True)
            store = tmp / f"store-{name}"
            conv = modelport_convert(path, store, cap)
            path.unlink()  # the store holds the converted model
            r: dict = {"label": MODELS[name], "weight_bytes": w,
                       "convert": {k: conv.get(k) for k in ("peak_bytes", "convert_s", "error")}, "techniques": {}}
            if not conv.get("artifact"):
                raise SystemExit(f"converting {name} failed: {conv.get('error')}")
            for tech in techniques:
                op = modelport_optimize(store, conv["artifact"], cap, tech)
                op.pop("artifact", None)
                op["admission_bytes"] = admission_estimate(tech, w)
                r["techniques"][tech] = op
                print(f"[{name}] {tech}: peak {_gb(op['peak_bytes'])} ({_x(op['peak_bytes'], w)}), admission "
                      f"{_gb(op['admission_bytes'])}, {op['optimize_s']:.0f}s {op.get('error', '')}", flush=True)
            subprocess.run(["rm", "-rf", str(store)], check=False)
            results["models"][name] = r
    return results


def render(results: dict) -> str:
    techniques = results["techniques"]
    lines = [
        "## Large models: every optimizer technique on multi-GB ONNX with external data",
        "",
        "The converted transformer LMs of *Large models* (converter service, folder artifact of `model.onnx` + "
        "`model.onnx.data`) through each optimizer technique that makes sense at this size "
        "(int8-dynamic again here, measured the same way as the others). Each technique is one `Optimize` request to a fresh optimizer service "
        "subprocess on the same store, 8 generated eval samples (int8-static's calibration set too), options "
        f"{OPTIMIZE_OPTIONS} (few timed runs: the latency ratio is indicative only). *Peak*: RSS of the "
        "optimizer's process tree (service + job worker), sampled every 50 ms, over the FP32 weight bytes; "
        "*admission*: what the optimizer's admission check (`optimizer_svc/admission.py`, as committed with these "
        "figures) estimates the job needs on top of the worker, over the same weight bytes: a job is refused with "
        "RESOURCE_EXHAUSTED before it starts when that is more than the machine can give. The candidate figures are the "
        "optimizer's own report against the FP32 model on the eval samples. Memory cap per process tree: "
        f"{_gb(results['cap_bytes'])}.",
        "",
    ]
    models = sorted(results["models"].values(), key=lambda r: r["weight_bytes"])
    techniques = [t for t in TECHNIQUES if t in techniques] + [t for t in techniques if t not in TECHNIQUES]
    rows = []
    for r in models:
        w = r["weight_bytes"]
        for tech in techniques:
            op = r["techniques"].get(tech)
            if not op:
                continue
            err = op.get("error") or ""
            killed = op.get("killed_at_bytes")
            rows.append([
                r["label"] + (f" [previous run: `{op['previous_run']}`]" if op.get("previous_run") else ""), _gb(w), tech,
                f"killed at {_gb(killed)}" if killed else _x(op.get("peak_bytes"), w),
                _x(admission_estimate(tech, w), w),
                f"{op['optimize_s']:.0f}",
                f"{op['size_bytes'] / op['baseline_bytes']:.2f}" if op.get("size_bytes") and op.get("baseline_bytes")
                else "-",
                f"{op['max_abs_diff']:.2g}" if op.get("max_abs_diff") is not None and not err else "-",
                str(op.get("cosine") or "-"), str(op.get("latency_ratio") or "-"),
                err[:160] or (op.get("note") or "")[:160],
            ])
    lines += [common.markdown_table(
        ["model", "weights", "technique", "peak / weights", "admission estimate / weights", "job s",
         "size / FP32", "max abs diff", "cosine", "latency / FP32 (paired)", "error or note"], rows), ""]
    per_stage = []
    for r in models:
        w = r["weight_bytes"]
        for tech in techniques:
            op = r["techniques"].get(tech)
            if op and op.get("stage_peaks"):
                per_stage.append([r["label"].split(" (")[0], tech, ", ".join(
                    f"{stage} {_x(peak, w)} / {op.get('stages_s', {}).get(stage, 0):.0f}s"
                    for stage, peak in op["stage_peaks"].items() if stage)])
    if per_stage:
        lines += ["Per job stage (peak RSS of the tree / weights, the stage's seconds):", "",
                  common.markdown_table(["model", "technique", "stages"], per_stage), ""]
    lines += [f"Command: `{results.get('command', '')}`", "", common.system_info_markdown(results.get("system"))]
    return "\n".join(lines)


def main() -> None:
    p = common.bench_args(__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated subset of: " + ", ".join(MODELS))
    p.add_argument("--techniques", default=",".join(TECHNIQUES), help="comma-separated optimizer techniques")
    p.add_argument("--cap-gb", type=float, default=0.0,
                   help="memory cap per measured process tree (default: MemAvailable minus 3 GB, at most 18 GB)")
    p.add_argument("--render", action="store_true", help="re-render the section from results/large_techniques.json")
    args = p.parse_args()
    if args.render:
        results = json.loads((common.RESULTS_DIR / "large_techniques.json").read_text())
        md = render(results)
        common.write_section("large_techniques", md, results)
        return print(md)

    from modelport.memory import available_bytes

    names = [n for n in (args.models.split(",") if args.models else (["t1"] if args.quick else ["t4", "t9"])) if n]
    techniques = [t for t in args.techniques.split(",") if t]
    cap = int(args.cap_gb * GB) if args.cap_gb else int(min(18 * GB, available_bytes().available - 3 * GB))
    results = measure(names, techniques, cap)
    results["command"], results["system"] = common.command_line(), common.system_info()
    # Rows not re-run keep the last run's figures, marked with its command (a focused re-run of one technique
    # does not drop the others).
    last = common.RESULTS_DIR / "large_techniques.json"
    previous = json.loads(last.read_text()) if last.is_file() else {}
    for name, r in previous.get("models", {}).items():
        mine = results["models"].setdefault(name, {**r, "techniques": {}})
        for tech, op in r.get("techniques", {}).items():
            if tech not in mine["techniques"]:
                mine["techniques"][tech] = {**op, "previous_run": op.get("previous_run") or previous.get("command", "")}
    results["techniques"] = [*techniques, *(t for t in previous.get("techniques", []) if t not in techniques)]
    md = render(results)
    common.write_section("large_techniques", md, results)
    print(md)


if __name__ == "__main__":
    main()
