"""gRPC servicer of modelport.v1.Converter: decode, call the converter domain, encode."""

from __future__ import annotations

from converter_svc.plan import plan_convert
from modelport.trust import remote_code_allowed
from modelport.v1 import converter_pb2, converter_pb2_grpc, jobs_pb2


class ConverterServicer(converter_pb2_grpc.ConverterServicer):
    """Convert streams JobEvents of a worker job; Inspect answers a ModelInfo."""

    def __init__(self, service):
        self.service = service

    async def Convert(self, request: converter_pb2.ConvertRequest, context):
        svc = self.service
        # Refuse what the server does not allow before anything is pulled or stored.
        remote_code_allowed(request.trust_remote_code, svc.settings.allow_remote_code, svc.name)
        await svc.pull(request.source)
        if request.parity.samples.digest:
            await svc.pull(request.parity.samples)
        plan = await plan_convert(svc, request)
        async for event in svc.run(plan.job):
            yield event

    async def Inspect(self, request: converter_pb2.InspectRequest, context) -> jobs_pb2.ModelInfo:
        svc = self.service
        remote_code_allowed(request.trust_remote_code, svc.settings.allow_remote_code, svc.name)
        await svc.pull(request.artifact)
        return await svc.inspect(request.artifact.digest, request.trust_remote_code)
