"""The Optimizer gRPC servicer: decode the request, make its artifacts local, stream the job's events."""

from __future__ import annotations

from modelport.v1 import optimizer_pb2_grpc
from optimizer_svc.plan import plan_optimize, request_refs


class OptimizerServicer(optimizer_pb2_grpc.OptimizerServicer):
    """Optimize(OptimizeRequest) -> stream JobEvent."""

    def __init__(self, service):
        self.service = service

    async def Optimize(self, request, context):
        svc = self.service
        for ref in request_refs(request):
            await svc.pull(ref)
        async for event in svc.run(plan_optimize(svc, request)):
            yield event
