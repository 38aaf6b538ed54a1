"""gRPC servicers of the inference service: KServe v2 GRPCInferenceService and modelport.v1.ModelControl.

Thin: each RPC decodes the protobuf (``modelport.kserve.codec``, ``inference_svc.protocol``), calls
``ModelManager`` and encodes the answer. Requests that point tensors into registered system shared
memory go through ``inference_svc.shm`` (which maps the regions and reads/writes the tensors). Domain
errors become status codes in the shared interceptor.
"""

from __future__ import annotations

import asyncio
import logging
import time

import modelport
from inference_svc import fast_infer, generation_protocol, protocol
from inference_svc.idle_spin import IdleSpin
from inference_svc.manager import ModelManager
from inference_svc.repository_loading import resolve_artifact
from inference_svc.shm import SharedMemoryRegistry
from modelport import cpuinfo
from modelport.errors import InvalidArgument, ModelportError, Unimplemented
from modelport.kserve import codec
from modelport.kserve import shm as kshm
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from modelport.memory import release_freed_memory
from modelport.trust import check_model_name, redact
from modelport.v1 import serving_pb2, serving_pb2_grpc

log = logging.getLogger("modelport.inference")

EXTENSIONS = ["model_repository", "model_repository(unload_dependents)", "model_configuration", "statistics",
              "schedule_policy"]
SHM_EXTENSION = "system_shared_memory"
_REQUEST_DONE = object()  # ModelStreamInfer: a request's responses are all queued (its in-flight slot frees)
NO_CUDA = ("CUDA shared memory is not supported: this server has no GPU build; use system shared memory "
           "(register_system_shared_memory) or send tensors in the request")


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol as Triton's clients expect it."""

    def __init__(self, manager: ModelManager, is_ready, shm: SharedMemoryRegistry | None = None,
                 max_stream_inflight: int = 64, idle_spin: IdleSpin | None = None):
        self.manager = manager
        # ModelInfer counts itself in and out: when none is in flight, the loop spins for a moment (idle_spin).
        self.idle_spin = idle_spin if idle_spin is not None else IdleSpin(0)
        self.max_stream_inflight = max(1, max_stream_inflight)
        self._is_ready = is_ready
        self.shm = shm if shm is not None else SharedMemoryRegistry(enabled=False)
        # The CPU's kernel-relevant flags ride along as one more extension entry, written like Triton's
        # "model_repository(unload_dependents)", so the deploy report can compare them with the flags the
        # optimizer measured on while Triton/KServe clients just list it.
        self.extensions = (EXTENSIONS + ([SHM_EXTENSION] if self.shm.enabled else [])
                           + [cpuinfo.extension_entry()])
        # ModelInfer on request bytes (fast_infer.add_inference_servicer): accepted request headers and the
        # response writer.
        self._memo = fast_infer.RequestMemo()
        self._encoder = fast_infer.ResponseEncoder()

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._is_ready())

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.manager.is_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="modelport-inference", version=modelport.__version__,
                                         extensions=self.extensions)

    async def ModelMetadata(self, request, context):
        return protocol.model_metadata(self.manager, self.manager.get(request.name, request.version))

    async def _infer(self, request, deadline, data: bytes | None = None):
        """One request; with ``data`` (the bytes ``request`` was parsed from) an accepted request of tensors in
        the message is remembered for ``fast_infer`` and the response comes back as bytes where it can."""
        mv = self.manager.get(request.model_name, request.model_version)
        requested = [o.name for o in request.outputs]
        # What the request declares is checked against the model (and the request size cap) before any
        # tensor is decoded or any shared memory is touched; the decoded tensors are what it declared, so
        # infer does not check them again.
        elements = self.manager.precheck(mv, [(t.name, t.datatype, t.shape) for t in request.inputs], requested)
        if not kshm.uses_shm(request):  # most requests: tensors in the message, no shared memory to hold
            inputs = codec.decode_inputs(request)
            if data is not None and not mv.text_inputs:
                self._memo.learn(data, request, inputs, mv, requested, elements)
            outputs = await self.manager.infer(mv, inputs, requested, deadline, elements=elements)
            if data is not None:
                encoded = self._encoder.encode(mv.name, mv.label, outputs, request.id)
                if encoded is not None:
                    return encoded
            return codec.make_infer_response(mv.name, mv.label, outputs, request.id)
        # The lease holds the shared memory regions the request uses until its response is built.
        with self.shm.lease(request) as lease:
            inputs = lease.decode_inputs()
            outputs = await self.manager.infer(mv, inputs, requested, deadline, elements=elements)
            return lease.response(mv.name, mv.label, outputs, request.id)

    async def ModelInfer(self, request, context):
        spin = self.idle_spin
        spin.enter()
        try:
            return await self._model_infer(request, context)
        finally:
            spin.leave()

    async def _model_infer(self, request, context):
        if type(request) is not bytes:  # a message (called directly, not through the raw registration)
            return await self._infer(request, _deadline(context))
        r = self._memo.match(request)
        if r is not None:
            mv = self.manager.get(r.model_name, r.model_version)
            if mv is r.mv():  # still the version it reaches
                outputs = await self.manager.infer(mv, fast_infer.views(request, r), r.requested, _deadline(context),
                                                   elements=r.elements)
                return self._encoder.encode(mv.name, mv.label, outputs) or codec.make_infer_response(
                    mv.name, mv.label, outputs)
            self._memo.forget(r)
        try:
            parsed = pb.ModelInferRequest.FromString(request)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError (its module differs between implementations)
            raise InvalidArgument("the request is not a valid ModelInferRequest message; send one serialized by a "
                                  "KServe v2 / Triton client") from None
        return await self._infer(parsed, _deadline(context), request)

    async def ModelStreamInfer(self, request_iterator, context):
        # Requests run concurrently; each response carries its request's id. At most max_stream_inflight
        # requests of a stream are read and not yet answered: the next one is read only when a request's last
        # response went out (a generation's final token, not each token), so a client that floods the stream
        # (or never reads) is held back by flow control. When the stream ends or the client goes away, every
        # request still running is cancelled (a generation frees its sequence).
        results: asyncio.Queue = asyncio.Queue()
        deadline = _deadline(context)
        slots = asyncio.Semaphore(self.max_stream_inflight)
        tasks: set[asyncio.Task] = set()

        async def one(req):
            self.idle_spin.enter()
            try:
                mv = self.manager.get(req.model_name, req.model_version)
                if mv.generator is not None:  # decoupled: one response per token, then the final flag
                    generation = self.manager.generate(mv, generation_protocol.params_from_request(req, mv.name))
                    try:
                        async for item in generation_protocol.stream_responses(generation, req, mv.name, mv.label):
                            await results.put(item)
                    finally:  # cancelled before or while streaming: the engine frees the sequence
                        generation.cancel()
                    return
                await results.put(pb.ModelStreamInferResponse(infer_response=await self._infer(req, deadline)))
            except ModelportError as exc:
                await results.put(pb.ModelStreamInferResponse(
                    error_message=redact(exc.message), infer_response=pb.ModelInferResponse(id=req.id)))
            except Exception:  # noqa: BLE001 - one bad request must not end the stream
                log.exception("stream request %s failed", req.id)
                await results.put(pb.ModelStreamInferResponse(
                    error_message="Internal server error (logged on the server)",
                    infer_response=pb.ModelInferResponse(id=req.id)))
            finally:  # after this request's last response: its slot goes back once that response went out
                self.idle_spin.leave()
                results.put_nowait(_REQUEST_DONE)

        async def reader():
            requests = request_iterator.__aiter__()
            while True:
                await slots.acquire()
                try:
                    req = await requests.__anext__()
                except StopAsyncIteration:
                    slots.release()
                    break
                task = asyncio.create_task(one(req))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
            await results.put(None)

        feed = asyncio.create_task(reader())
        try:
            while (item := await results.get()) is not None:
                if item is _REQUEST_DONE:
                    slots.release()
                    continue
                yield item
            await feed
        finally:  # the stream ended or was cancelled: stop every request still running (generations too)
            feed.cancel()
            for task in list(tasks):
                task.cancel()

    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=protocol.model_config(self.manager.get(request.name, request.version)))

    async def ModelStatistics(self, request, context):
        return protocol.statistics(self.manager, request.name, request.version)

    async def RepositoryIndex(self, request, context):
        return protocol.repository_index(self.manager, request.ready)

    async def RepositoryModelLoad(self, request, context):
        await self.manager.load_from_repository(request.model_name, protocol.config_override(request))
        await asyncio.to_thread(release_freed_memory)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        await self.manager.unload(request.model_name)
        await asyncio.to_thread(release_freed_memory)
        return pb.RepositoryModelUnloadResponse()

    async def SystemSharedMemoryStatus(self, request, context):
        return self.shm.status_response(request.name)

    async def SystemSharedMemoryRegister(self, request, context):
        self.shm.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context):
        self.shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request, context):
        raise Unimplemented(NO_CUDA)

    async def CudaSharedMemoryRegister(self, request, context):
        raise Unimplemented(NO_CUDA)

    async def CudaSharedMemoryUnregister(self, request, context):
        raise Unimplemented(NO_CUDA)


class ModelControlServicer(serving_pb2_grpc.ModelControlServicer):
    """modelport.v1.ModelControl: load from an artifact with provider and batching settings."""

    def __init__(self, manager: ModelManager, service):
        self.manager = manager
        self.service = service

    async def LoadModel(self, request, context):
        check_model_name(request.name)  # before pulling or unpacking anything
        opts = protocol.load_options(request, self.manager.defaults)
        version = protocol.parse_version(request.version)
        stored = await self.service.pull(request.model)
        # Off the event loop: unpacking and reading a caller's config.pbtxt (bounded) never stall inference.
        path, config = await asyncio.to_thread(resolve_artifact, self.service.store, stored, request.name)
        await self.service.check_caller_model(path)  # the caller's bytes: parsed in a sniffer first, bounded
        mv = await self.manager.load(request.name, path, version, config=config, options=opts,
                                     keep_versions=request.keep_versions, artifact=request.model)
        await asyncio.to_thread(release_freed_memory)  # the load probe's sessions, a replaced version
        return serving_pb2.LoadModelResponse(model=protocol.served_model(mv), warnings=mv.warnings)

    async def UnloadModel(self, request, context):
        await self.manager.unload(request.name, request.version)
        await asyncio.to_thread(release_freed_memory)
        return serving_pb2.UnloadModelResponse()

    async def ListModels(self, request, context):
        return serving_pb2.ListModelsResponse(
            models=[protocol.served_model(mv) for mv in self.manager.all_versions()])
