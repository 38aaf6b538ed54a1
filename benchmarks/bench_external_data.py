"""Memory of ONNX models with external data: served resident memory against the weight bytes, and the
client's memory while it uploads a file far larger than that memory.

A 1.6 GB float32 model (six embedding tables summed into a dense layer, ``model.onnx`` +
``model.onnx.data``, built tensor by tensor) is served by the inference service running in its own
process, (a) from a Triton-layout repository and (b) loaded from its artifact store after an upload as a
folder. Its resident set size is recorded after it loads and after every
row of every table is read once by inference (batches of 4096 ids, so every page of the data file is
touched). The baseline is a bare onnxruntime ``InferenceSession`` of the same model doing the same reads in
its own process (same run). Peaks are the kernel's high-water marks (VmHWM), loading included. Then a
2.5 GiB sparse file is uploaded with ``Client.upload`` from a separate
process whose peak RSS growth is recorded.

    .venv/bin/python -m benchmarks.bench_external_data [--quick]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from benchmarks import common

ROOT = common.REPO_ROOT
DIM, OUT, VOCAB = 1024, 16, 65_600
BATCH = 4096

_BARE_ORT = textwrap.dedent("""
    import json, sys
    import numpy as np, onnxruntime as ort
    path, vocab, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    def kb(field):
        return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
    so = ort.SessionOptions(); so.log_severity_level = 3
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    loaded = kb("VmRSS")
    for start in range(0, vocab, batch):
        s.run(None, {"ids": np.arange(start, min(start + batch, vocab), dtype=np.int64)[None, :]})
    print(json.dumps({"after_load": loaded, "after_reads": kb("VmRSS"), "peak": kb("VmHWM")}))
""")

_UPLOAD = textwrap.dedent("""
    import json, sys
    from modelport import Client, media
    def kb(field):
        return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
    path, address = sys.argv[1], sys.argv[2]
    with Client(converter=address) as c:
        before = kb("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
        ref = c.upload(path, media_type=media.OCTET)
        print(json.dumps({"before": before, "peak": kb("VmHWM"), "size": ref.size}))
""")


def _sweep(client, name: str, vocab: int) -> None:
    import numpy as np

    for start in range(0, vocab, BATCH):
        client.infer(name, {"ids": np.arange(start, min(start + BATCH, vocab), dtype=np.int64)[None, :]})


def _status(pid: int, field: str) -> int:
    """VmRSS / VmHWM (peak) of a process, in bytes."""
    return int(Path(f"/proc/{pid}/status").read_text().split(field + ":")[1].split()[0]) * 1024


def _served(model: Path, work: Path, vocab: int, how: str) -> dict:
    """Serve ``model`` from a repository or from the store; RSS after loading and after every row was read."""
    from modelport import Client, repository

    store = work / f"store-{how}"
    args: list[str] = []
    if how == "repository":
        repository.write_model(work / "repo", "emb", 1, model)
        args = ["--repository", str(work / "repo")]
    t0 = time.perf_counter()
    proc, address = common.start_service_subprocess("inference_svc", *args, store=store, log_dir=work / "logs")
    try:
        with Client(inference=address) as client:
            if how == "store":
                client.load_model("emb", client.upload(model.parent, service="inference"))
            assert [m.state for m in client.list_models()] == ["READY"]
            after_load = _status(proc.pid, "VmRSS")
            _sweep(client, "emb", vocab)
            return {"how": how, "after_load": after_load, "after_reads": _status(proc.pid, "VmRSS"),
                    "peak": _status(proc.pid, "VmHWM"), "seconds": time.perf_counter() - t0}
    finally:
        common.stop_service_subprocess(proc)
        shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    args = common.bench_args(__doc__.splitlines()[0]).parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from extdata_fixtures import embedding_model, weight_bytes

    tables = 1 if args.quick else 6
    upload_bytes = (256 << 20) if args.quick else int(2.5 * 2**30)
    work = Path(tempfile.mkdtemp(prefix="bench-extdata-"))
    try:
        model = embedding_model(work / "model", VOCAB, DIM, OUT, tables=tables)
        weights = weight_bytes(VOCAB, DIM, OUT, tables)
        bare = json.loads(subprocess.run([sys.executable, "-c", _BARE_ORT, str(model), str(VOCAB), str(BATCH)],
                                         capture_output=True, text=True, check=True).stdout)
        served = [_served(model, work, VOCAB, how) for how in ("repository", "store")]

        big = work / "upload.bin"
        with open(big, "wb") as f:
            f.truncate(upload_bytes)
        proc, address = common.start_service_subprocess("inference_svc", store=work / "store-upload",
                                                        log_dir=work / "logs")
        try:
            t0 = time.perf_counter()
            up = json.loads(subprocess.run([sys.executable, "-c", _UPLOAD, str(big), address], capture_output=True,
                                           text=True, check=True, cwd=ROOT).stdout)
            up["seconds"] = time.perf_counter() - t0
        finally:
            common.stop_service_subprocess(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mib = 2**20
    rows = [["bare onnxruntime session (baseline)", f"{bare['after_load'] / mib:.0f}", f"{bare['after_reads'] / mib:.0f}",
             f"{bare['peak'] / mib:.0f}", f"{bare['peak'] / weights:.2f}×", "1.00×"]]
    for s in served:
        rows.append([f"inference service, from its {s['how']}", f"{s['after_load'] / mib:.0f}",
                     f"{s['after_reads'] / mib:.0f}", f"{s['peak'] / mib:.0f}", f"{s['peak'] / weights:.2f}×",
                     common.fmt_ratio(common.ratio(s["peak"], bare["peak"]))])
    worst = max(s["peak"] for s in served) / weights
    md = "\n".join([
        "## External data: served memory and upload memory",
        "",
        f"A {weights / 1e9:.2f} GB float32 ONNX model with external data ({tables} embedding table(s) of "
        f"{VOCAB}×{DIM} summed into a {DIM}×{OUT} dense layer; `model.onnx` + `model.onnx.data`) served by "
        "`modelport-inference` in its own process, from a Triton-layout repository and from its artifact store "
        "(uploaded as a folder artifact, unpacked once, `LoadModel`). RSS (/proc VmRSS; peak = VmHWM, loading included) after "
        f"loading and after every row of every table was read once by inference (batches of {BATCH} ids: every "
        "page of the data file touched). onnxruntime memory-maps the external data, so pages are resident only "
        "once read and are file-backed (reclaimable). Baseline: a bare onnxruntime session doing the same "
        "reads in its own process, same run.",
        "",
        common.markdown_table(["process", "RSS after load (MiB)", "RSS after reading every row (MiB)",
                               "peak RSS (MiB)", "peak / weight bytes", "peak vs baseline"], rows),
        "",
        f"- Served peak RSS is {worst:.2f}× the weight bytes (target ≤ 1.5×).",
        f"- Client upload of a {upload_bytes / 2**30:.1f} GiB file (`Client.upload`, 1 MiB chunks, streamed): the "
        f"uploading process grew by {(up['peak'] - up['before']) / mib:.1f} MiB at its peak "
        f"({up['before'] / mib:.0f} MiB before); {upload_bytes / up['seconds'] / 1e6:.0f} MB/s to the inference "
        "service's store in another process (sparse source file: this measures memory, not the disk).",
        "",
        common.system_info_markdown(),
        "",
        "Command:",
        "",
        f"    {common.command_line()}",
    ])
    common.write_section("external_data", md, {"weights": weights, "bare": bare, "served": served, "upload": up,
                                               "quick": args.quick})
    print(md)


if __name__ == "__main__":
    main()
