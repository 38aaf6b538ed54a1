"""The inference service: wires its servicers into the shared runtime, loads the repository at start."""

from __future__ import annotations

import logging

from inference_svc.fast_infer import MODEL_INFER, add_inference_servicer
from inference_svc.idle_spin import IdleSpin
from inference_svc.manager import LoadOptions, ModelManager
from inference_svc.servicer import InferenceServicer, ModelControlServicer
from inference_svc.settings import InferenceSettings
from inference_svc.shm import SharedMemoryRegistry
from modelport import providers as eps
from modelport.kserve.v2 import grpc_service_pb2
from modelport.runtime.server import Registration, Service
from modelport.runtime.sniffing import sniff_in, sniffer_pool
from modelport.v1 import serving_pb2, serving_pb2_grpc

log = logging.getLogger("modelport.inference")

KSERVE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
CONTROL = serving_pb2.DESCRIPTOR.services_by_name["ModelControl"].full_name


class InferenceService(Service):
    """KServe v2 inference over onnxruntime, plus modelport's ModelControl."""

    name = "inference"

    def __init__(self, settings: InferenceSettings, available_providers: list[str] | None = None):
        super().__init__(settings)
        eps.normalize(settings.execution_provider)  # fail fast on a typo
        eps.graph_optimization_level(settings.graph_optimization_level)
        defaults = LoadOptions(
            execution_provider=settings.execution_provider,
            device_id=settings.device_id,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            graph_optimization_level=settings.graph_optimization_level,
            warmup=settings.warmup,
            allow_spinning=settings.ort_allow_spinning,
        )
        self.manager = ModelManager(
            repository_root=settings.repository,
            defaults=defaults,
            default_max_batch_size=settings.default_max_batch_size,
            default_queue_size=settings.max_queue_size,
            available_providers=available_providers,
            drain_timeout_s=settings.drain_timeout_s,
            max_request_bytes=settings.max_request_bytes,
            tune=settings.auto_tune,
            inline_max_us=settings.inline_max_us,
        )
        self.shm = SharedMemoryRegistry(enabled=settings.shared_memory, max_regions=settings.max_shm_regions)
        # A caller's model is parsed once in a sniffer process before onnxruntime sees it (model_check).
        self.sniffer = sniffer_pool(self.name, ("onnx", "inference_svc.model_check"))
        self.idle_spin = IdleSpin(settings.idle_spin_us)
        self.ready = False

    def registrations(self) -> list[Registration]:
        """GRPCInferenceService and ModelControl."""
        return [
            Registration(add_inference_servicer,
                         InferenceServicer(self.manager, self.is_ready, self.shm,
                                           max_stream_inflight=self.settings.max_stream_inflight,
                                           idle_spin=self.idle_spin), KSERVE),
            Registration(serving_pb2_grpc.add_ModelControlServicer_to_server,
                         ModelControlServicer(self.manager, self), CONTROL),
        ]

    def hot_methods(self) -> set[str]:
        """ModelInfer alone is a registered method (``Service.hot_methods``)."""
        return {f"/{KSERVE}/{MODEL_INFER}"}

    def is_ready(self) -> bool:
        """KServe ServerReady: started, and with strict readiness also no model unavailable (failed to load)."""
        if not self.ready:
            return False
        return not (self.settings.strict_readiness and self.manager.unavailable())

    def mutating_methods(self) -> set[str]:
        """Methods guarded by the bearer token."""
        return {
            f"/{CONTROL}/LoadModel",
            f"/{CONTROL}/UnloadModel",
            f"/{KSERVE}/RepositoryModelLoad",
            f"/{KSERVE}/RepositoryModelUnload",
            f"/{KSERVE}/SystemSharedMemoryRegister",
            f"/{KSERVE}/SystemSharedMemoryUnregister",
            f"/{KSERVE}/CudaSharedMemoryRegister",
            f"/{KSERVE}/CudaSharedMemoryUnregister",
        }

    async def check_caller_model(self, path) -> None:
        """Parse a caller's ONNX file in the sniffer under its memory bound (INVALID_ARGUMENT past it)."""
        await sniff_in(self.sniffer, "inference_svc.model_check:check_onnx", {"path": str(path)},
                       self.settings.sniff_timeout_s)

    async def startup(self) -> None:
        """Load and warm up every repository model before health turns SERVING."""
        await self.sniffer.start(warm=0)  # started on the first LoadModel
        if self.settings.repository is not None:
            loaded = await self.manager.load_repository()
            log.info("repository %s: loaded %s", self.settings.repository, ", ".join(loaded) or "no models")
            failed = self.manager.unavailable()
            if failed and self.settings.strict_readiness:
                log.warning("strict readiness: ServerReady answers false while %s cannot load (see "
                            "RepositoryIndex; load a fixed version, or start with --no-strict-readiness)",
                            ", ".join(failed))
        self.ready = True

    async def shutdown(self) -> None:
        """Finish in-flight batches, release every session, then unmap the shared memory regions."""
        self.ready = False
        self.idle_spin.close()
        await self.manager.close()
        self.shm.close()
        await self.sniffer.close()
