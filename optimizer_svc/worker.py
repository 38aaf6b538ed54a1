"""The optimizer's worker entry point: the edge between the job's protobuf and its records.

``optimize_job(progress, store_root, request, origin)`` takes the serialized OptimizeRequest (every
referenced artifact already in the local store) and returns the serialized OptimizeResult, so only
bytes cross the process boundary and the job cache keeps the wire form. ``optimizer_svc.optimize``
runs the job on records (``modelport.runtime.job_codec`` translates). This module never imports grpc.
"""

from __future__ import annotations

import shutil

from modelport.runtime import job_codec
from modelport.store import ArtifactStore
from modelport.v1 import optimizer_pb2
from optimizer_svc.optimize import optimize


def optimize_job(progress, store_root: str, request: bytes, origin: str = "", int8_search_s: float = 60.0) -> bytes:
    """Run one OptimizeRequest in a scratch folder of the store; ``int8_search_s`` bounds the int8-static search."""
    job = job_codec.optimize_job(optimizer_pb2.OptimizeRequest.FromString(request))
    store = ArtifactStore(store_root)
    work = store.mkdtemp("optimize")
    try:
        return job_codec.optimize_result_bytes(optimize(progress, store, job, origin, work, int8_search_s))
    finally:
        shutil.rmtree(work, ignore_errors=True)
