"""The Optimizer gRPC servicer: decode the request, make its artifacts local, stream the job's events."""

from __future__ import annotations

from modelport.trust import remote_code_allowed
from modelport.v1 import optimizer_pb2_grpc
from optimizer_svc.plan import plan_optimize, request_refs


class OptimizerServicer(optimizer_pb2_grpc.OptimizerServicer):
    """Optimize(OptimizeRequest) -> stream JobEvent."""

    def __init__(self, service):
        self.service = service

    async def Optimize(self, request, context):
        svc = self.service
        # Refuse what the server does not allow before anything is pulled or stored.
        remote_code_allowed(request.trust_remote_code, svc.settings.allow_remote_code, svc.name)
        for ref in request_refs(request):
            await svc.pull(ref)
        async for event in svc.run(await plan_optimize(svc, request)):
            yield event
