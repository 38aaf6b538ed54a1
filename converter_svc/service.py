"""The converter service: a job service (shared worker pool, job cache, settings) with the converter's plan."""

from __future__ import annotations

from converter_svc.settings import ConverterSettings
from modelport.runtime.job_service import JobService
from modelport.runtime.server import Registration
from modelport.trust import remote_code_allowed
from modelport.v1 import converter_pb2, converter_pb2_grpc, jobs_pb2

CONVERTER_SERVICE = converter_pb2.DESCRIPTOR.services_by_name["Converter"].full_name



class ConverterService(JobService):
    name = "converter"
    settings: ConverterSettings
    worker_preload = ("tensorflow", "tf2onnx", "onnxruntime", "keras", "modelport.conversion.convert",
                      "modelport.conversion.models", "converter_svc.worker")
    # TF_ONEDNN_USE_SYSTEM_ALLOCATOR: oneDNN's own pool allocator never gives freed tensors back, so a worker
    # would keep the source model's memory while the converted one runs parity (modelport.conversion.large_export).
    worker_env = {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "TF_USE_LEGACY_KERAS": "0",
                  "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1"}
    tool_packages = ("tensorflow", "tf2onnx", "onnx", "keras", "onnxruntime")
    job_version = "1"  # bump when conversion code changes results (invalidates cached jobs)
    result_field = "convert_result"
    # Worker function run per Convert job ("module:function"); tests may point it elsewhere.
    convert_job = "converter_svc.worker:convert"
    sniff_job = "converter_svc.sniff:sniff"
    sniff_preload = ("onnx", "converter_svc.sniff")

    def registrations(self) -> list[Registration]:
        from converter_svc.servicer import ConverterServicer

        return [Registration(converter_pb2_grpc.add_ConverterServicer_to_server, ConverterServicer(self),
                             CONVERTER_SERVICE)]

    def mutating_methods(self) -> set[str]:
        """Both RPCs need the token: each may pull from an origin into the store and loads the model
        (Inspect of a Keras model builds it, which is where a Lambda layer's code would run)."""
        return {f"/{CONVERTER_SERVICE}/Convert", f"/{CONVERTER_SERVICE}/Inspect"}

    async def inspect(self, digest: str, trust_remote_code: bool) -> jobs_pb2.ModelInfo:
        """ModelInfo of a local artifact, read in a worker: the model is untrusted input (an ONNX file is
        parsed and handed to onnxruntime, a Keras model built), so the service process never parses it
        (its format is sniffed in a sniffer process, the model read in a converter worker)."""
        trusted = remote_code_allowed(trust_remote_code, self.settings.allow_remote_code, self.name)
        await self.sniff(digest)  # the format, and an archive unpacked, in a sniffer process: errors before a job
        data = await self.pool.run("converter_svc.worker:inspect",
                                   {"store_root": str(self.store.root), "digest": digest,
                                    "trust_remote_code": trusted},
                                   timeout=self.settings.job_timeout_s)
        return jobs_pb2.ModelInfo.FromString(data)
