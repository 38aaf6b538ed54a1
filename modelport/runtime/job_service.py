"""The base of the services that run jobs in worker processes (converter, optimizer).

A ``JobService`` owns the worker pool, the job cache and the shared job settings; a subclass
supplies only its plan: how a request becomes a ``Job`` (key, worker function, arguments) and
which tool versions its results depend on. ``run`` streams the job's ``JobEvent``s (a cached
result at once), and every ``ArtifactRef`` in the result names this service as its origin.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from google.protobuf.message import Message
from pydantic import AliasChoices, Field, model_validator

from modelport import tmpfiles
from modelport.runtime.job_cache import Job, JobCache, tool_versions
from modelport.runtime.job_events import job_events
from modelport.runtime.server import Service
from modelport.runtime.settings import ServiceSettings
from modelport.runtime.sniffing import sniff_in, sniffer_pool
from modelport.runtime.workers import WorkerPool
from modelport.v1 import artifacts_pb2, jobs_pb2

log = logging.getLogger("modelport.runtime.job_service")


class JobServiceSettings(ServiceSettings):
    """Settings every job service has (one name per setting across services)."""

    max_concurrent_jobs: int = 1
    """Jobs running at once (one worker process each); further jobs queue and say so."""
    job_timeout_s: float = 1800.0
    """Per-job limit in seconds; a job past it is stopped (DEADLINE_EXCEEDED)."""
    worker_max_jobs: int = 1
    """Jobs a worker runs before it exits and a warm spare replaces it (memory goes back); 0 = reuse
    forever. ``max_jobs_per_worker`` (and its environment name) is the old optimizer name, still accepted."""
    warm_workers: int = 1
    """Workers started (their libraries pre-imported) before the service reports SERVING."""
    sniff_timeout_s: float = 120.0
    """Limit in seconds for reading an upload's format in a sniffer process before a job is queued."""
    allow_remote_code: bool = False
    """Let requests with trust_remote_code=true run a model's own Python code (Keras Lambda layers, custom
    objects, SavedModel graphs that read or write files). Off: such requests get PERMISSION_DENIED whatever
    they ask. Turn it on only for a service that converts models from trusted sources (the service process then
    makes itself non-dumpable: model code in its workers cannot read its environment or memory)."""
    memory_limit_bytes: int = Field(0, ge=0, validation_alias=AliasChoices("memory_limit_bytes",
                                                                           "MODELPORT_MEMORY_LIMIT_BYTES"))
    """Most memory one job may use, in bytes (0 = what the machine or container has left: the cgroup limit
    minus its use, or MemAvailable). Jobs whose estimate (weight bytes x the technique's factor) passes it
    are refused with RESOURCE_EXHAUSTED before they start, or under ``auto`` skipped. Environment:
    ``MODELPORT_MEMORY_LIMIT_BYTES`` (one name for every service)."""

    def worker_environment(self) -> dict[str, str]:
        """Settings the job code in the workers reads from its environment (``modelport.memory``)."""
        return {"MODELPORT_MEMORY_LIMIT_BYTES": str(self.memory_limit_bytes)} if self.memory_limit_bytes else {}

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        """Accept the old name ``max_jobs_per_worker`` (keyword or ``<PREFIX>MAX_JOBS_PER_WORKER``)."""
        if not isinstance(data, dict):
            return data
        old = data.pop("max_jobs_per_worker", None)
        if old is None:
            prefix = str(cls.model_config.get("env_prefix", "")).upper()
            old = next((v for k, v in os.environ.items() if k.upper() == f"{prefix}MAX_JOBS_PER_WORKER"), None)
        if old is not None and "worker_max_jobs" not in data:
            data["worker_max_jobs"] = old
        return data


def stamp_origin(msg: Message, origin: str) -> None:
    """Set ``origin`` on every ArtifactRef with a digest inside ``msg`` (cached results too)."""
    for fd, value in msg.ListFields():
        values = value if fd.is_repeated else [value]
        if fd.message_type is None:
            continue
        for v in values:
            if isinstance(v, artifacts_pb2.ArtifactRef):
                if v.digest:
                    v.origin = origin
            elif isinstance(v, Message):
                stamp_origin(v, origin)


class JobService(Service):
    """A service whose work runs as jobs in worker processes; subclasses set the class attributes."""

    settings: JobServiceSettings
    worker_env: ClassVar[dict[str, str]] = {}
    """Environment of the worker processes (on top of the scrubbed parent environment)."""
    worker_preload: ClassVar[tuple[str, ...]] = ()
    """Modules each worker imports before it reports ready, so jobs start warm."""
    tool_packages: ClassVar[tuple[str, ...]] = ()
    """Distributions whose versions are part of every job key."""
    job_version: ClassVar[str] = "1"
    """Bump when this service's job code changes its results (invalidates cached jobs)."""
    result_field: ClassVar[str] = ""
    """The ``JobEvent`` field the final result travels in."""
    sniff_job: ClassVar[str] = ""
    """Sniffer function ("module:function", args ``store_root``, ``digest``) returning a model's format."""
    sniff_preload: ClassVar[tuple[str, ...]] = ()
    """Modules a sniffer process imports when it starts."""

    def __init__(self, settings: JobServiceSettings):
        super().__init__(settings)
        # Uploaded bytes are parsed in sniffer processes, never here (modelport.runtime.sniffing).
        self.sniffer = sniffer_pool(self.name, self.sniff_preload)
        self.cache = JobCache(self.store.root)
        self.pool = WorkerPool(size=settings.max_concurrent_jobs, env={**self.worker_env,
                                                                       **settings.worker_environment()},
                               preload=self.worker_preload, max_jobs_per_worker=settings.worker_max_jobs,
                               name=f"{self.name}-worker", on_worker_lost=self._worker_lost)
        self.versions = {f"modelport-{self.name}": self.job_version, **tool_versions(self.tool_packages)}

    def _worker_lost(self, pid: int) -> None:
        """A worker was killed mid-job (the client went away, the job timed out) or died: its job's work folder in
        the store's tmp/ goes now, not at the next restart."""
        removed = tmpfiles.remove_worker_entries(self.store.tmp_dir, pid)
        if removed:
            log.info("removed %d temp entr%s of %s worker %d", removed, "y" if removed == 1 else "ies", self.name, pid)

    async def startup(self) -> None:
        await self.sniffer.start(warm=0)  # started on the first request
        await self.pool.start(warm=self.settings.warm_workers)

    async def shutdown(self) -> None:
        await self.sniffer.close()
        await self.pool.close()

    async def sniff(self, digest: str) -> str:
        """The format of a stored (local) artifact, read in a sniffer process under a memory bound; archives
        are unpacked there. Raises the domain error the client must see (``sniffing.sniff_in``)."""
        return await sniff_in(self.sniffer, self.sniff_job, {"store_root": str(self.store.root), "digest": digest},
                              self.settings.sniff_timeout_s)

    def run(self, job: Job) -> AsyncIterator[jobs_pb2.JobEvent]:
        """The JobEvents of ``job``: queued, progress, then the result (or an error and the RPC fails)."""
        return job_events(pool=self.pool, cache=self.cache, store=self.store, key=job.key, func=job.func,
                          kwargs=job.kwargs, result_field=self.result_field, timeout=self.settings.job_timeout_s,
                          finish_result=lambda result: stamp_origin(result, self.address))
