"""The CPU features that decide which kernels onnxruntime runs, and whether two machines share them.

The optimizer ranks candidates by timing them on its own CPU; the ranking carries over to the
serving machine only when that machine has the same instruction-set extensions (INT8 pays on a CPU
with VNNI and can lose to FP32 on one without). ``read_flags`` reads them (Linux ``/proc/cpuinfo``),
``relevant_flags`` keeps those that change the kernels, ``compare`` says how two sets differ (a
pure function, so the deploy report and the tests share it), and ``extension_entry`` /
``flags_from_extensions`` carry the set in a KServe ``ServerMetadata`` extensions list.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

#: Flags that select onnxruntime/MLAS kernels (x86) or their ARM counterparts, in report order.
RELEVANT = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx_vnni", "avx_vnni_int8", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
    "asimd", "asimddp", "i8mm", "sve", "sve2", "bf16", "fphp", "asimdhp",
)
#: Flags that give INT8 dot products (u8 x s8 accumulate into int32 without int16 saturation).
INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
#: Prefix of the ServerMetadata extension entry that carries the flags ("cpu_flags(avx2 fma ...)").
EXTENSION_PREFIX = "cpu_flags"


def read_flags(cpuinfo: str | None = None) -> list[str]:
    """Every feature flag of the first CPU listed in ``/proc/cpuinfo`` (``cpuinfo`` passes the text).

    x86 lists them under ``flags``, ARM under ``Features``; an unreadable file gives an empty list.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return value.split()
    return []


def relevant_flags(flags: Iterable[str] | None = None) -> list[str]:
    """The flags (of ``flags``, else of this machine) that change inference kernels, in RELEVANT order."""
    have = set(read_flags() if flags is None else flags)
    return [f for f in RELEVANT if f in have]


def has_int8_dot(flags: Iterable[str]) -> bool:
    """Whether the CPU has INT8 dot-product instructions (x86 VNNI/AMX, ARM dotprod/i8mm)."""
    return bool(set(flags) & set(INT8_DOT))


def is_x86(flags: Iterable[str]) -> bool:
    """Whether the flags are an x86 CPU's (SSE/AVX present)."""
    return bool(set(flags) & {"sse4_1", "sse4_2", "avx", "avx2"})


def format_flags(flags: Iterable[str]) -> str:
    """One space-separated string (what ``details["cpu_flags"]`` holds)."""
    return " ".join(flags)


def parse_flags(text: str) -> list[str]:
    """The inverse of ``format_flags`` (commas are accepted too)."""
    return text.replace(",", " ").split()


def extension_entry(flags: Iterable[str] | None = None) -> str:
    """A KServe ServerMetadata extension naming this machine's relevant flags: ``cpu_flags(avx2 fma ...)``.

    Written like Triton's own ``model_repository(unload_dependents)`` entry, so clients that list
    extensions (tritonclient, KServe) show it and ignore it.
    """
    return f"{EXTENSION_PREFIX}({format_flags(relevant_flags(flags))})"


def flags_from_extensions(extensions: Iterable[str]) -> list[str] | None:
    """The flags a server reported in its extensions, or None when it reported none (another server)."""
    for e in extensions:
        if e.startswith(EXTENSION_PREFIX + "(") and e.endswith(")"):
            return parse_flags(e[len(EXTENSION_PREFIX) + 1:-1])
    return None


def compare(measured_on: Iterable[str] | str, serving: Iterable[str] | str) -> str | None:
    """None when both sets of relevant flags are equal, else a warning naming what differs.

    ``measured_on``: the flags the optimizer ranked its candidates on; ``serving``: the inference
    service's. Both are lists or space-separated strings; only RELEVANT flags are compared.
    """
    a = set(relevant_flags(parse_flags(measured_on) if isinstance(measured_on, str) else measured_on))
    b = set(relevant_flags(parse_flags(serving) if isinstance(serving, str) else serving))
    if a == b:
        return None
    missing = [f for f in RELEVANT if f in a - b]
    extra = [f for f in RELEVANT if f in b - a]
    parts = []
    if missing:
        parts.append(f"lacks {', '.join(missing)}")
    if extra:
        parts.append(f"adds {', '.join(extra)}")
    int8 = [f for f in missing + extra if f in INT8_DOT]
    why = ("INT8 speed-ups in particular depend on " + ", ".join(int8) if int8
           else "kernel choices, and so the ranking, can differ")
    return (f"the inference service's CPU {' and '.join(parts)} compared with the CPU the optimizer measured on: "
            f"{why}; the chosen model may not be the fastest there (run the optimizer on a machine like the "
            "serving one, or compare with `modelport optimize` there)")


def serving_warning(measured_on: str | None, extensions: Iterable[str]) -> str | None:
    """The deploy report's warning, from the optimizer's ``details["cpu_flags"]`` and the inference
    service's ServerMetadata extensions; None when they agree or either side did not report flags
    (an older optimizer, another KServe server, a machine without /proc/cpuinfo)."""
    serving = flags_from_extensions(extensions)
    if not measured_on or not serving:
        return None
    return compare(measured_on, serving)
