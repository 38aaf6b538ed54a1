"""The Optimizer gRPC servicer: decode the request, make its artifacts local, stream the job's events."""

from __future__ import annotations

from modelport.runtime.artifacts import ensure_local
from modelport.runtime.jobs import job_events
from modelport.v1 import optimizer_pb2_grpc
from optimizer_svc.job_spec import OptimizeJobs


class OptimizerServicer(optimizer_pb2_grpc.OptimizerServicer):
    """Optimize(OptimizeRequest) -> stream JobEvent."""

    def __init__(self, jobs: OptimizeJobs):
        self.jobs = jobs

    async def Optimize(self, request, context):
        svc = self.jobs.service
        for ref in self.jobs.refs(request):
            await ensure_local(svc.store, ref, channel_factory=svc.channel)
        spec = self.jobs.prepare(request)
        async for event in job_events(pool=self.jobs.pool, cache=self.jobs.cache, store=svc.store, key=spec.key,
                                      func="optimizer_svc.jobs:optimize_job", kwargs=spec.kwargs,
                                      result_field="optimize_result", timeout=svc.settings.job_timeout_s,
                                      finish_result=spec.finish):
            yield event
