"""Reading untrusted uploaded bytes outside the service process: the sniffer pool and its memory bound.

A service decides a request's format (magic bytes, an ONNX protobuf parse, a TFLite flatbuffer walk,
a zip's central directory, tar headers) and unpacks archives before it queues a job, so a bad
request still fails at once. That parsing happens in a small pool of sniffer subprocesses (no
TensorFlow, started on demand), never in the service process: a file that makes a parser allocate
without end, hang or crash costs one sniffer, and the service keeps answering.

Each sniff runs under an address-space bound (``memory_bound``) proportional to the file: a model
parses in a few times its size, while a hostile protobuf of empty repeated messages asks ~75 bytes
of memory per file byte. Past the bound the parser fails cleanly (upb: "Arena alloc failed";
Python: MemoryError) and the request gets INVALID_ARGUMENT naming the bound.

This module never imports grpc.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from typing import Any

from modelport.errors import DeadlineExceeded, Internal, InvalidArgument
from modelport.memory import fmt_bytes
from modelport.runtime.workers import WorkerPool

SNIFF_MEMORY_FACTOR = 8
"""Address space a sniff may add, per byte of the file it reads..."""
SNIFF_MEMORY_BASE = 256 << 20
"""...plus this much (the parser's own working memory)."""
SNIFF_WORKERS = 2


def sniff_memory_budget(file_bytes: int) -> int:
    """Bytes of address space a sniff of a ``file_bytes`` file may add to its process."""
    return SNIFF_MEMORY_FACTOR * max(0, file_bytes) + SNIFF_MEMORY_BASE


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def memory_bound(extra_bytes: int) -> Iterator[int]:
    """Limit this process's address space to what it uses now plus ``extra_bytes`` (RLIMIT_AS, soft
    limit only), restored on exit. For sniffer processes only: the service process never calls it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def bounded_read(path: str | os.PathLike) -> Iterator[None]:
    """Read ``path`` (parse, list, unpack) under ``memory_bound``; a read that reaches the bound is
    INVALID_ARGUMENT naming the bound and the file's size."""
    size = os.path.getsize(path)
    budget = sniff_memory_budget(size)
    try:
        with memory_bound(budget):
            yield
    except MemoryError:
        raise InvalidArgument(
            f"reading the model took more than the {fmt_bytes(budget)} of memory allowed for a "
            f"{fmt_bytes(size)} upload ({SNIFF_MEMORY_FACTOR}x its size + {fmt_bytes(SNIFF_MEMORY_BASE)}): a model "
            "parses in a few times its size, so this file is malformed or built to exhaust memory; re-export the "
            "model and upload it again", {"bound_bytes": str(budget), "size_bytes": str(size)}) from None


def sniffer_pool(service_name: str, preload: tuple[str, ...] = ()) -> WorkerPool:
    """The pool of a service's sniffer processes: started on demand, reused, scrubbed like every worker."""
    return WorkerPool(size=SNIFF_WORKERS, preload=preload, max_jobs_per_worker=0, name=f"{service_name}-sniffer")


async def sniff_in(pool: WorkerPool, func: str, kwargs: dict[str, Any], timeout: float) -> Any:
    """Run one sniff in ``pool``; raises the domain error the client must see. A sniffer killed by a signal
    (a parser crashed on the file) is INVALID_ARGUMENT naming it, one past ``timeout`` DEADLINE_EXCEEDED naming
    ``sniff_timeout_s``; an unexpected exception in the sniff code itself stays INTERNAL."""
    try:
        return await pool.run(func, kwargs, timeout=timeout)
    except Internal as e:
        if "exit" not in e.details:  # not a dead process: a real INTERNAL
            raise
        raise InvalidArgument(
            f"reading the model's format crashed the process that reads uploads ({e.details['exit']}); the "
            "file is malformed or built to crash a parser: re-export the model and upload it again. The "
            "service is unaffected.", {"exit": e.details["exit"]}) from None
    except DeadlineExceeded:
        raise DeadlineExceeded(
            f"reading the model's format took longer than {timeout:g}s and was stopped; the file is malformed or "
            "built to hang a parser (raise the service's sniff_timeout_s setting for a model that is genuinely "
            "this slow to read)") from None
