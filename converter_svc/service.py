"""The converter service: wires its servicer into the shared runtime and owns the worker pool."""

from __future__ import annotations

import asyncio

from converter_svc.settings import ConverterSettings
from modelport import formats
from modelport.jobs import JobCache
from modelport.runtime.server import Registration, Service
from modelport.v1 import converter_pb2, converter_pb2_grpc, jobs_pb2
from modelport.workers import WorkerPool

CONVERTER_SERVICE = converter_pb2.DESCRIPTOR.services_by_name["Converter"].full_name

# Imported once per worker before it reports ready, so jobs start warm.
WORKER_PRELOAD = ("tensorflow", "tf2onnx", "onnxruntime", "keras", "modelport.conversion.convert",
                  "modelport.conversion.models", "converter_svc.jobs")
# TF_ONEDNN_USE_SYSTEM_ALLOCATOR: oneDNN's own pool allocator never gives freed tensors back, so a worker
# would keep the source model's memory while the converted one runs parity (modelport.conversion.large_export).
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "TF_USE_LEGACY_KERAS": "0",
              "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1"}


class ConverterService(Service):
    name = "converter"
    settings: ConverterSettings
    # Worker function run per Convert job ("module:function").
    convert_job = "converter_svc.jobs:convert"

    def __init__(self, settings: ConverterSettings):
        super().__init__(settings)
        self.cache = JobCache(self.store.root)
        self.pool = WorkerPool(size=settings.max_concurrent_jobs, env=WORKER_ENV, preload=WORKER_PRELOAD,
                               max_jobs_per_worker=settings.worker_max_jobs, name="converter-worker")

    def registrations(self) -> list[Registration]:
        from converter_svc.servicer import ConverterServicer

        return [Registration(converter_pb2_grpc.add_ConverterServicer_to_server, ConverterServicer(self),
                             CONVERTER_SERVICE)]

    def mutating_methods(self) -> set[str]:
        return {f"/{CONVERTER_SERVICE}/Convert"}

    async def startup(self) -> None:
        await self.pool.start(warm=self.settings.warm_workers)

    async def shutdown(self) -> None:
        await self.pool.close()

    async def inspect(self, digest: str, trust_remote_code: bool) -> jobs_pb2.ModelInfo:
        """ModelInfo of a local artifact: ONNX in this process, TensorFlow formats in a worker."""
        path = self.store.path(digest)
        fmt = await asyncio.to_thread(formats.detect_format, path)
        if fmt == formats.ONNX:
            from modelport.conversion.convert import inspect_model

            return await asyncio.to_thread(inspect_model, self.store, digest)
        if fmt == formats.SAVEDMODEL:
            await asyncio.to_thread(self.store.unpacked, digest)
        data = await self.pool.run("converter_svc.jobs:inspect",
                                   {"store_root": str(self.store.root), "digest": digest,
                                    "trust_remote_code": trust_remote_code},
                                   timeout=self.settings.job_timeout_s)
        return jobs_pb2.ModelInfo.FromString(data)
