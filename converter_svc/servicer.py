"""gRPC servicer of modelport.v1.Converter: decode, call the converter domain, encode."""

from __future__ import annotations

from converter_svc.plan import plan_convert
from modelport.runtime.artifacts import ensure_local
from modelport.runtime.jobs import job_events
from modelport.v1 import converter_pb2, converter_pb2_grpc, jobs_pb2


class ConverterServicer(converter_pb2_grpc.ConverterServicer):
    """Convert streams JobEvents of a worker job; Inspect answers a ModelInfo."""

    def __init__(self, service):
        self.service = service

    async def Convert(self, request: converter_pb2.ConvertRequest, context):
        svc = self.service
        await ensure_local(svc.store, request.source, channel_factory=svc.channel)
        if request.parity.samples.digest:
            await ensure_local(svc.store, request.parity.samples, channel_factory=svc.channel)
        plan = await plan_convert(svc.store, request, svc.settings.onnx2tf_python)

        def finish(result: jobs_pb2.ConvertResult) -> None:
            result.artifact.origin = svc.address

        async for event in job_events(
            pool=svc.pool, cache=svc.cache, store=svc.store, key=plan.key, func=svc.convert_job,
            kwargs={"store_root": str(svc.store.root), "request": request.SerializeToString(),
                    "max_artifact_bytes": svc.settings.max_artifact_bytes,
                    "onnx2tf_python": svc.settings.onnx2tf_python},
            result_field="convert_result", timeout=svc.settings.job_timeout_s, finish_result=finish,
        ):
            yield event

    async def Inspect(self, request: converter_pb2.InspectRequest, context) -> jobs_pb2.ModelInfo:
        svc = self.service
        await ensure_local(svc.store, request.artifact, channel_factory=svc.channel)
        return await svc.inspect(request.artifact.digest, request.trust_remote_code)
