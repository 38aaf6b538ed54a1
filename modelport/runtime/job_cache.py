"""Jobs, their keys and the result cache: a finished job's result is returned at once on a re-run.

A key hashes the job kind, input digests, normalized options and tool versions (``tool_versions``), so a change
to any of them is a new job. This module never imports grpc.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger("modelport.runtime.job_cache")


@dataclass(frozen=True)
class Job:
    """One worker job: its content key, the worker function and its keyword arguments."""

    key: str
    func: str
    """``module:function`` run in a worker; it returns the serialized result."""
    kwargs: dict[str, Any] = field(default_factory=dict)


def job_key(kind: str, digests: list[str], options: dict[str, Any], versions: dict[str, str]) -> str:
    """The content key of a job (hex sha256 of its canonical description)."""
    blob = json.dumps(
        {"kind": kind, "inputs": list(digests), "options": options, "versions": versions},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class JobCache:
    """Finished job results (serialized protobuf) keyed by job key, stored beside the artifacts."""

    def __init__(self, root: str | os.PathLike):
        self.dir = Path(root) / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> bytes | None:
        p = self.dir / f"{key}.pb"
        return p.read_bytes() if p.is_file() else None

    def put(self, key: str, result: bytes) -> bool:
        """Remember a finished job's result; False (nothing written, a warning logged) when the disk is full:
        the job's answer stands, a rerun only does the work again."""
        tmp = self.dir / f".{key}.{uuid.uuid4().hex}"
        try:
            tmp.write_bytes(result)
            os.replace(tmp, self.dir / f"{key}.pb")
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("job %s not cached: %s (free space on the store's volume)", key[:16], os.strerror(e.errno))
            return False
        return True


def tool_versions(packages: tuple[str, ...] | list[str], absent: str = "absent") -> dict[str, str]:
    """Installed versions of ``packages`` read from their metadata (nothing is imported)."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = absent
    return out
