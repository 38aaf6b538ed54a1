"""What reading uploads outside the service costs: the sniffer subprocess against parsing in-process.

Since the trust work, a service never parses an uploaded model itself: the format is told (an ONNX
protobuf parse, a zip's central directory, a TFLite walk) in a sniffer subprocess under a memory
bound (``modelport.runtime.sniffing``). This measures what that costs a Convert/Optimize request before
its job is queued, against the in-process ``formats.detect_format`` call it replaced (the baseline),
in the same run, on ONNX files of three sizes:

- the first sniff of a fresh service (the sniffer process is spawned on demand and pre-imports onnx);
- a warm sniff (the process reused): the round trip plus the parse;
- the service process's resident memory growth over all the sniffs, against the in-process parse's.

    .venv/bin/python -m benchmarks.bench_sniff [--quick]
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from benchmarks import common, models

MiB = 1 << 20
SIZES = {"MLP 64-256-256-10 (0.3 MB)": (64, 256, 256, 10),
         "MLP 1024-4096-4096-10 (84 MB)": (1024, 4096, 4096, 10),
         "MLP 2048-8192-8192-10 (336 MB)": (2048, 8192, 8192, 10)}
SNIFF_JOB = "converter_svc.sniff:sniff"
PRELOAD = ("onnx", "converter_svc.sniff")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _sniffs(store, digests: dict[str, str], repeats: int) -> dict:
    """First and warm sniff of each file through a fresh sniffer pool; RSS of this process around them."""
    from modelport.runtime.sniffing import sniff_in, sniffer_pool

    pool = sniffer_pool("bench", preload=PRELOAD)
    await pool.start(warm=0)  # as a service starts it: no sniffer until the first request
    rss0 = _rss()
    out: dict[str, dict] = {}
    try:
        for label, digest in digests.items():
            kwargs = {"store_root": str(store.root), "digest": digest}
            t0 = time.perf_counter()
            fmt = await sniff_in(pool, SNIFF_JOB, kwargs, timeout=120)
            first = time.perf_counter() - t0
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                assert await sniff_in(pool, SNIFF_JOB, kwargs, timeout=120) == fmt
                samples.append(time.perf_counter() - t0)
            out[label] = {"format": fmt, "first_s": first, "warm_ms": common.Timing(samples).summary_ms()}
    finally:
        await pool.close()
    return {"by_file": out, "service_rss_growth": _rss() - rss0}


def run(repeats: int, sizes: dict[str, tuple[int, ...]]) -> dict:
    from modelport import formats, media
    from modelport.store import ArtifactStore

    with tempfile.TemporaryDirectory(prefix="bench-sniff-") as tmp:
        store = ArtifactStore(Path(tmp) / "store")
        digests, paths = {}, {}
        for i, (label, dims) in enumerate(sizes.items()):
            p = Path(tmp) / f"m{i}.onnx"
            models.mlp_onnx(p, dims, seed=i)
            ref = store.put_file(p, media.ONNX)
            digests[label], paths[label] = ref.digest, store.path(ref.digest)
        res = asyncio.run(_sniffs(store, digests, repeats))
        # The baseline: the in-process parse the service did before (same files, this process).
        rss0 = _rss()
        for label, path in paths.items():
            t = common.time_callable(lambda p=path: formats.detect_format(p), warmup=1, repeats=repeats)
            row = res["by_file"][label]
            row["inprocess_ms"] = t.summary_ms()
            row["bytes"] = path.stat().st_size
        res["inprocess_rss_growth"] = _rss() - rss0
    return res


def markdown(res: dict, command: str) -> str:
    rows = []
    for label, r in res["by_file"].items():
        warm, base = r["warm_ms"]["p50_ms"] / 1e3, r["inprocess_ms"]["p50_ms"] / 1e3
        rows.append([label, r["format"], common.fmt_ms(base), common.fmt_ms(warm),
                     f"{(warm - base) * 1e3:+.2f}", common.fmt_ratio(common.ratio(warm, base)),
                     common.fmt_ms(r["first_s"])])
    first_label = next(iter(res["by_file"]))
    return "\n".join([
        "## Sniffing uploads: the sniffer subprocess vs parsing in the service",
        "",
        "A service never parses an uploaded model itself: its format is told in a sniffer subprocess under a memory "
        "bound (`modelport/runtime/sniffing.py`, the trust model). Each Convert or Optimize request pays that round "
        "trip before its job is queued. Baseline: the in-process `formats.detect_format` the service called before, "
        f"same files, same run. Medians of {res['repeats']} sniffs per file (p50).",
        "",
        common.markdown_table(["file", "format", "in-process p50 ms", "sniffer p50 ms (warm)",
                               "added per request ms", "vs in-process", "first sniff of a fresh service ms"], rows),
        "",
        f"The first sniff of a fresh service (the {first_label} row) includes spawning the sniffer and importing onnx "
        "in it; the later files' first sniffs reuse that process. Resident memory of the service-side process over "
        f"every sniff: {res['service_rss_growth'] / MiB:+.1f} MiB; the in-process parses of the same files grew "
        f"this process by {res['inprocess_rss_growth'] / MiB:+.1f} MiB (a parse holds the whole protobuf).",
        "",
        common.system_info_markdown(),
        "",
        "Command:",
        "",
        f"    {command}",
    ])


def main(argv: list[str] | None = None) -> int:
    args = common.bench_args(__doc__.splitlines()[0]).parse_args(argv)
    sizes = dict(list(SIZES.items())[:2]) if args.quick else SIZES
    repeats = 5 if args.quick else 20
    res = run(repeats, sizes)
    res["repeats"] = repeats
    md = markdown(res, common.command_line(argv))
    common.write_section("sniff", md, res)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
