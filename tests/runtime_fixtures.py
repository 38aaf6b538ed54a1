"""A tiny test-only service that exercises the shared runtime (no TensorFlow)."""

from __future__ import annotations

import asyncio

from modelport import errors
from modelport.runtime.server import Registration, Service
from modelport.v1 import converter_pb2, converter_pb2_grpc, jobs_pb2, serving_pb2, serving_pb2_grpc

ERRORS = {
    "invalid": errors.InvalidArgument("bad option 'x': use 'y'"),
    "missing": errors.NotFound("model 'm' not found"),
    "precondition": errors.FailedPrecondition("parity failed"),
    "exhausted": errors.ResourceExhausted("queue full"),
    "unavailable": errors.Unavailable("try later"),
    "deadline": errors.DeadlineExceeded("too slow"),
    "boom": RuntimeError("secret internal detail /etc/passwd"),
}


class ProbeControl(serving_pb2_grpc.ModelControlServicer):
    """LoadModel raises the error named by request.name."""

    async def LoadModel(self, request, context):
        if request.name in ERRORS:
            raise ERRORS[request.name]
        return serving_pb2.LoadModelResponse(model=serving_pb2.ServedModel(name=request.name, state="READY"))


class ProbeConverter(converter_pb2_grpc.ConverterServicer):
    """Convert streams two events, waiting on ``release`` in between (for drain tests)."""

    def __init__(self):
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def Convert(self, request, context):
        yield jobs_pb2.JobEvent(job_id="j", stage="loading", progress=0.1)
        if request.target_format == "fail":
            raise errors.InvalidArgument("unsupported target 'fail': use onnx, tflite or savedmodel")
        self.started.set()
        await self.release.wait()
        yield jobs_pb2.JobEvent(job_id="j", stage="done", progress=1.0)


class ProbeService(Service):
    name = "probe"

    def __init__(self, settings):
        super().__init__(settings)
        self.control = ProbeControl()
        self.converter = ProbeConverter()
        self.startup_gate: asyncio.Event | None = None

    def registrations(self):
        return [
            Registration(serving_pb2_grpc.add_ModelControlServicer_to_server, self.control,
                         "modelport.v1.ModelControl"),
            Registration(converter_pb2_grpc.add_ConverterServicer_to_server, self.converter,
                         "modelport.v1.Converter"),
        ]

    def mutating_methods(self):
        return {"/modelport.v1.ModelControl/LoadModel"}


def convert_request(target: str = "onnx") -> converter_pb2.ConvertRequest:
    return converter_pb2.ConvertRequest(target_format=target)
