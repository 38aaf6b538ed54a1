"""modelport's Python SDK: one typed client over the three services (the CLI uses it too).

    from modelport import Client
    with Client(converter="localhost:50051", optimizer="localhost:50052", inference="localhost:8001") as mp:
        report = mp.deploy("model.keras", name="digits", optimize=["auto"], eval="eval.npz")
        outputs = mp.infer("digits", {"input": batch})      # dict name -> numpy array, both ways

Bytes move once: ``upload`` stores a file in one service; every later call passes the returned
``ArtifactRef`` whose ``origin`` lets the next service pull it. Failures raise ``ClientError``
with the gRPC status code name and the server's message.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelport import media
from modelport.errors import InvalidArgument, ModelportError
from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2 as kpb
from modelport.kserve.v2 import grpc_service_pb2_grpc as kgrpc
from modelport.kserve.v2 import model_config_pb2
from modelport.runtime.artifacts import ByteProgress, download_to_file, file_chunks, stream_requests
from modelport.runtime.channels import ClientTLS, balanced_options, balanced_target, make_channel
from modelport.v1 import (
    artifacts_pb2,
    artifacts_pb2_grpc,
    converter_pb2,
    converter_pb2_grpc,
    jobs_pb2,
    optimizer_pb2,
    optimizer_pb2_grpc,
    serving_pb2,
    serving_pb2_grpc,
)

SERVICES = ("converter", "optimizer", "inference")
DEFAULT_ADDRESSES = {"converter": "127.0.0.1:50051", "optimizer": "127.0.0.1:50052", "inference": "127.0.0.1:8001"}

EventCallback = Callable[[jobs_pb2.JobEvent], None]


class ClientError(ModelportError):
    """A failed call: ``code`` (= ``status``) is the gRPC status code name, ``message`` the server's reason.

    A ``ModelportError``, so code above the SDK (the deploy runner, the gateway) handles the
    services' answers and its own domain errors the same way.
    """

    def __init__(self, code: str, message: str, *, service: str = "", details: Mapping[str, str] | None = None,
                 parity: jobs_pb2.ParityReport | None = None):
        super().__init__(message, dict(details or {}))
        self.args = (f"{code}: {message}",)
        self.code = self.status = code
        self.service = service
        self.parity = parity

    def __reduce__(self):
        return (_client_error, (self.code, self.message, self.service, self.details))

    @classmethod
    def from_rpc(cls, err: grpc.RpcError, service: str = "") -> ClientError:
        code = err.code().name if callable(getattr(err, "code", None)) and err.code() else "UNKNOWN"
        details = err.details() if callable(getattr(err, "details", None)) else str(err)
        if code == "UNAVAILABLE" and service:
            details = f"{details} (is the {service} service running? start all three with `modelport up`)"
        return cls(code, details or "", service=service)


def batching_config(max_batch_size: int = 0, max_queue_delay_us: int = 0, preferred_batch_sizes: Iterable[int] = (),
                    max_queue_size: int = 0, enabled: bool | None = None) -> serving_pb2.BatchingConfig:
    """A ``BatchingConfig`` from plain options; enabled when a batch size or a queue delay is given."""
    if enabled is None:
        enabled = max_queue_delay_us > 0 or max_batch_size > 0
    return serving_pb2.BatchingConfig(max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                                      preferred_batch_sizes=list(preferred_batch_sizes),
                                      max_queue_size=max_queue_size, enabled=enabled)


def _client_error(code: str, message: str, service: str, details: dict[str, str]) -> ClientError:
    return ClientError(code, message, service=service, details=details)


def detect_media_type(path: str | os.PathLike) -> str:
    """Best-effort media-type label from the content (the converter re-detects it anyway)."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(512)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return media.H5
    if head[:2] == b"PK":
        return media.NPZ if p.suffix == ".npz" else media.KERAS
    if head[4:8] == b"TFL3":
        return media.TFLITE
    if p.suffix == ".onnx":
        return media.ONNX
    if p.suffix == ".tar":
        return media.SAVEDMODEL
    return media.OCTET


@dataclass(frozen=True)
class UploadSource:
    """What ``Client.upload`` sends for a local path: lazily read chunks, their total size, the media type."""

    chunks: Iterable[bytes]
    size: int
    media_type: str


def upload_source(path: str | os.PathLike, media_type: str | None = None) -> UploadSource:
    """The artifact a local model path becomes, streamed (never read whole).

    A SavedModel folder and an ONNX model with external data (a folder holding it, or its ``.onnx``
    file with the data file(s) beside it) travel as one tar archive; anything else as the file itself.
    Raises InvalidArgument for a folder that is neither, or an ONNX model whose data files are missing.
    """
    from modelport.archive import TarStream
    from modelport.onnx_files import find_model_file, model_files

    p = Path(path)
    if p.is_dir():
        if (p / "saved_model.pb").is_file():
            tar = TarStream.of_dir(p)
            return UploadSource(tar, tar.size, media_type or media.SAVEDMODEL)
        if not any(p.rglob("*.onnx")):
            raise InvalidArgument(f"{p} is a folder without saved_model.pb or a .onnx file; upload a model file, "
                                  "a SavedModel folder or an ONNX model's folder (model.onnx + its data file)")
        p = find_model_file(p)
        media_type = media_type if media_type and media_type != media.ONNX_FOLDER else media.ONNX
    elif not p.is_file():
        raise InvalidArgument(f"{p}: no such file or folder")
    media_type = media_type or detect_media_type(p)
    if media.is_onnx(media_type):
        files = model_files(p, unreadable_ok=True)  # the model and its data; not ONNX: the server says so
        if len(files) > 1:
            tar = TarStream.of_files(files)
            return UploadSource(tar, tar.size, media.ONNX_FOLDER)
        media_type = media.ONNX
    return UploadSource(file_chunks(p), p.stat().st_size, media_type)


@dataclass
class ServiceStatus:
    """Health of one service as its grpc.health.v1 reports it."""

    service: str
    address: str
    status: str  # SERVING, NOT_SERVING, UNKNOWN, UNREACHABLE
    message: str = ""
    latency_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "SERVING"


@dataclass
class Client:
    """Typed client of the converter, optimizer and inference services.

    Addresses default to the ports ``modelport up`` uses; ``inference`` may list several replicas,
    comma-separated, for failover (see ``channel``). ``tls`` (a ``ClientTLS``) and ``token``
    (bearer token for mutating RPCs) apply to every service. ``timeout`` bounds each RPC (jobs
    included), in seconds.
    """

    converter: str = DEFAULT_ADDRESSES["converter"]
    optimizer: str = DEFAULT_ADDRESSES["optimizer"]
    inference: str = DEFAULT_ADDRESSES["inference"]
    tls: ClientTLS | None = None
    token: str | None = None
    timeout: float = 3600.0
    _channels: dict = field(default_factory=dict, repr=False)

    # ---- plumbing -------------------------------------------------------------------------
    def address(self, service: str) -> str:
        """The configured address of ``service`` (converter, optimizer or inference)."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
        return getattr(self, service)

    def channel(self, service: str) -> grpc.Channel:
        """The (cached) sync channel to one service.

        Several inference replicas (``inference="10.0.0.5:8001,10.0.0.6:8001"``, or one DNS name whose
        records list them) get one balanced channel: round_robin over the replicas that report SERVING on
        grpc.health.v1, and gRPC's retry policy for the KServe service (up to 5 attempts, backoff
        0.05 s doubling to 1 s, on UNAVAILABLE and CANCELLED: a replica killed or restarting mid-call),
        so inference calls fail over to another replica. ``modelport.runtime.channels.balanced_options``.
        """
        if service not in self._channels:
            address = self.address(service)
            if service == "inference" and "," in address:
                self._channels[service] = make_channel(balanced_target(address), tls=self.tls, token=self.token,
                                                       options=balanced_options())
            else:
                self._channels[service] = make_channel(address, tls=self.tls, token=self.token)
        return self._channels[service]

    def close(self) -> None:
        """Close every channel (cancels in-flight calls, and with them their jobs)."""
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, service: str, fn, *args, **kwargs):
        try:
            return fn(*args, timeout=kwargs.pop("timeout", self.timeout), **kwargs)
        except grpc.RpcError as e:
            raise ClientError.from_rpc(e, service) from None

    # ---- health ---------------------------------------------------------------------------
    def status(self, services: Iterable[str] = SERVICES, timeout: float = 3.0) -> list[ServiceStatus]:
        """grpc.health.v1 status of each service (UNREACHABLE when it does not answer)."""
        out = []
        for svc in services:
            stub = health_pb2_grpc.HealthStub(self.channel(svc))
            t0 = time.perf_counter()
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
                out.append(ServiceStatus(svc, self.address(svc), name, "",
                                         (time.perf_counter() - t0) * 1000))
            except grpc.RpcError as e:
                unreachable = e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                msg = e.details() or ""
                if unreachable:  # "failed to connect to all addresses; ...: Connection refused" -> the reason
                    msg = msg.rsplit(": ", 1)[-1] if e.code() == grpc.StatusCode.UNAVAILABLE else "no answer"
                out.append(ServiceStatus(svc, self.address(svc), "UNREACHABLE" if unreachable else e.code().name, msg))
        return out

    def wait_ready(self, timeout: float = 60.0, services: Iterable[str] = SERVICES) -> None:
        """Block until every service reports SERVING (ClientError UNAVAILABLE after ``timeout``)."""
        services = list(services)
        for svc in services:
            try:
                grpc.channel_ready_future(self.channel(svc)).result(timeout=timeout)
            except grpc.FutureTimeoutError:
                raise ClientError("UNAVAILABLE", f"{svc} at {self.address(svc)} did not come up in {timeout:.0f}s",
                                  service=svc) from None
        deadline = time.monotonic() + timeout
        for svc in services:
            stub = health_pb2_grpc.HealthStub(self.channel(svc))
            for resp in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=max(deadline - time.monotonic(), 0.1)):
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    break

    # ---- artifacts ------------------------------------------------------------------------
    def upload(self, path: str | os.PathLike, media_type: str | None = None, service: str = "converter",
               progress: ByteProgress | None = None) -> artifacts_pb2.ArtifactRef:
        """Store a local model or data file in ``service``'s artifact store; the ref names that service as origin.

        ``path`` may be a file, a SavedModel folder, or an ONNX model with external data (its folder, or its
        ``.onnx`` file with the data file(s) beside it): folders travel as one archive artifact. Bytes are
        streamed chunk by chunk, never held whole; ``progress(bytes_sent, total)`` follows them.
        """
        try:
            src = upload_source(path, media_type)
        except InvalidArgument as e:
            raise ClientError("INVALID_ARGUMENT", e.message, service=service) from None
        stub = artifacts_pb2_grpc.ArtifactsStub(self.channel(service))
        ref = self._call(service, stub.Upload, stream_requests(src.chunks, src.size, src.media_type, progress=progress))
        if not ref.origin:
            ref.origin = self.address(service)
        return ref

    def find_uploaded(self, path: str | os.PathLike, media_type: str | None = None,
                      service: str = "converter") -> artifacts_pb2.ArtifactRef | None:
        """The ref of ``path``'s bytes when ``service``'s store already holds them, else None.

        The bytes ``upload`` would send are hashed here (read once, nothing sent) and looked up with
        ``Stat``: a rerun after a crash skips what is already stored.
        """
        try:
            src = upload_source(path, media_type)
        except InvalidArgument as e:
            raise ClientError("INVALID_ARGUMENT", e.message, service=service) from None
        h = hashlib.sha256()
        for chunk in src.chunks:
            h.update(chunk)
        try:
            ref = self.stat("sha256:" + h.hexdigest(), service)
        except ClientError as e:
            if e.code == "NOT_FOUND":
                return None
            raise
        if not ref.origin:
            ref.origin = self.address(service)
        return ref

    def stat(self, digest: str, service: str = "converter") -> artifacts_pb2.ArtifactRef:
        """The stored ref of ``digest`` in ``service``'s store (ClientError NOT_FOUND otherwise)."""
        stub = artifacts_pb2_grpc.ArtifactsStub(self.channel(service))
        return self._call(service, stub.Stat, artifacts_pb2.StatRequest(digest=digest))

    def _service_of(self, ref: artifacts_pb2.ArtifactRef | str, service: str | None) -> str:
        if service is not None:
            return service
        origin = "" if isinstance(ref, str) else ref.origin
        return next((s for s in SERVICES if origin and self.address(s) == origin), "converter")

    def download(self, ref: artifacts_pb2.ArtifactRef | str, out: str | os.PathLike,
                 service: str | None = None, progress: ByteProgress | None = None) -> Path:
        """Write an artifact's bytes to ``out`` (atomically, digest verified) from ``service`` or the ref's
        origin; ``progress(bytes_received, total)`` follows them. A folder artifact arrives as its tar
        archive: ``download_model`` unpacks it."""
        digest = ref if isinstance(ref, str) else ref.digest
        service = self._service_of(ref, service)
        stub = artifacts_pb2_grpc.ArtifactsStub(self.channel(service))
        try:
            download_to_file(stub, digest, out, timeout=self.timeout, progress=progress,
                             size=0 if isinstance(ref, str) else ref.size)
        except grpc.RpcError as e:
            raise ClientError.from_rpc(e, service) from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(out, 0o666 & ~umask)  # a user's file, not a private temp file
        return Path(out)

    def download_model(self, ref: artifacts_pb2.ArtifactRef, dest: str | os.PathLike, service: str | None = None,
                       progress: ByteProgress | None = None) -> Path:
        """Write a model artifact as a model on disk; returns the path to load it from.

        A single-file model is written to ``dest``. A folder artifact is unpacked (safely): a SavedModel
        into the folder ``dest``; an ONNX model with external data into the folder ``dest`` (returns
        ``dest/model.onnx``), or, when ``dest`` ends in ``.onnx``, as that file with its data file(s) beside it.
        """
        from modelport.archive import safe_unpack

        dest = Path(dest)
        if ref.media_type not in (media.SAVEDMODEL, media.ONNX_FOLDER, media.GENERATION):
            return self.download(ref, dest, service, progress)
        onnx_file = ref.media_type == media.ONNX_FOLDER and dest.suffix == ".onnx"
        folder = dest.parent if onnx_file else dest
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
            tar = self.download(ref, Path(tmp) / "model.tar", service, progress)
            if ref.media_type in (media.SAVEDMODEL, media.GENERATION):  # whole folders: unpacked as they are
                safe_unpack(tar, folder, max_bytes=tar.stat().st_size, max_files=1_000_000)
                return folder
            staging = Path(tmp) / "unpacked"
            safe_unpack(tar, staging, max_bytes=tar.stat().st_size, max_files=1_000_000)
            tar.unlink()
            from modelport.onnx_files import MODEL_FILE, model_files

            files = model_files(staging / MODEL_FILE)
            for name, src in files[1:]:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, folder / name)
            target = dest if onnx_file else folder / MODEL_FILE
            os.replace(files[0][1], target)
            return target

    # ---- jobs -----------------------------------------------------------------------------
    def _job(self, service: str, call, request, result_field: str, on_event: EventCallback | None):
        error: jobs_pb2.JobError | None = None
        result = None
        try:
            for ev in call(request, timeout=self.timeout):
                if on_event is not None:
                    on_event(ev)
                which = ev.WhichOneof("outcome")
                if which == result_field:
                    result = getattr(ev, result_field)
                elif which == "error":
                    error = ev.error
        except grpc.RpcError as e:
            if error is not None:
                raise ClientError(error.code or e.code().name, error.message, service=service,
                                  details=error.details,
                                  parity=error.parity if error.HasField("parity") else None) from None
            raise ClientError.from_rpc(e, service) from None
        if error is not None:
            raise ClientError(error.code, error.message, service=service, details=error.details)
        if result is None:
            raise ClientError("INTERNAL", f"the {service} job stream ended without a result", service=service)
        return result

    def convert(self, source: artifacts_pb2.ArtifactRef | str | os.PathLike, target: str = "onnx", *,
                opset: int = 0, parity_samples: artifacts_pb2.ArtifactRef | None = None, num_samples: int = 0,
                rtol: float = 0.0, atol: float = 0.0, allow_mismatch: bool = False,
                trust_remote_code: bool = False, fixed_batch_size: int = 0,
                on_event: EventCallback | None = None) -> jobs_pb2.ConvertResult:
        """Convert a model (a ref, or a local path uploaded first) to ``target``; returns the result."""
        if not isinstance(source, artifacts_pb2.ArtifactRef):
            source = self.upload(source, service="converter")
        parity = converter_pb2.ParityOptions(num_samples=num_samples, rtol=rtol, atol=atol,
                                             allow_mismatch=allow_mismatch)
        if parity_samples is not None:
            parity.samples.CopyFrom(parity_samples)
        req = converter_pb2.ConvertRequest(source=source, target_format=target, opset=opset, parity=parity,
                                           trust_remote_code=trust_remote_code, fixed_batch_size=fixed_batch_size)
        stub = converter_pb2_grpc.ConverterStub(self.channel("converter"))
        return self._job("converter", stub.Convert, req, "convert_result", on_event)

    def inspect(self, artifact: artifacts_pb2.ArtifactRef | str | os.PathLike,
                trust_remote_code: bool = False) -> jobs_pb2.ModelInfo:
        """What a model is: format, inputs, outputs, opset, size, parameter count."""
        if not isinstance(artifact, artifacts_pb2.ArtifactRef):
            artifact = self.upload(artifact, service="converter")
        stub = converter_pb2_grpc.ConverterStub(self.channel("converter"))
        return self._call("converter", stub.Inspect,
                          converter_pb2.InspectRequest(artifact=artifact, trust_remote_code=trust_remote_code))

    def optimize(self, model: artifacts_pb2.ArtifactRef | str | os.PathLike, techniques: Iterable[str] = ("auto",), *,
                 goal: str = "latency", max_accuracy_drop: float = 0.01, relative: bool = False,
                 calibration_data: artifacts_pb2.ArtifactRef | None = None,
                 train_data: artifacts_pb2.ArtifactRef | None = None,
                 eval_data: artifacts_pb2.ArtifactRef | None = None, execution_provider: str = "auto",
                 threads: int = 0, options: Mapping[str, str] | None = None, output_format: str = "",
                 on_event: EventCallback | None = None) -> jobs_pb2.OptimizeResult:
        """Optimize a model (ONNX or Keras ref, or a local path) with techniques or ``auto``."""
        if not isinstance(model, artifacts_pb2.ArtifactRef):
            model = self.upload(model, service="optimizer")
        goals = {"latency": optimizer_pb2.GOAL_LATENCY, "size": optimizer_pb2.GOAL_SIZE}
        if goal not in goals:
            raise ValueError(f"goal must be latency or size, not {goal!r}")
        req = optimizer_pb2.OptimizeRequest(
            model=model, techniques=list(techniques), goal=goals[goal],
            budget=optimizer_pb2.AccuracyBudget(max_drop=max_accuracy_drop, relative=relative),
            execution_provider=execution_provider, threads=threads, options=dict(options or {}),
            output_format=output_format)
        for fld, ref in (("calibration_data", calibration_data), ("train_data", train_data), ("eval_data", eval_data)):
            if ref is not None:
                getattr(req, fld).CopyFrom(ref)
        stub = optimizer_pb2_grpc.OptimizerStub(self.channel("optimizer"))
        return self._job("optimizer", stub.Optimize, req, "optimize_result", on_event)

    # ---- serving --------------------------------------------------------------------------
    def load_model(self, name: str, model: artifacts_pb2.ArtifactRef, *, version: str = "",
                   execution_provider: str = "auto",
                   batching: Mapping[str, Any] | serving_pb2.BatchingConfig | None = None,
                   keep_versions: int = 0, intra_op_threads: int = 0) -> serving_pb2.LoadModelResponse:
        """Load an ONNX artifact into the inference service under ``name``.

        ``batching`` turns on dynamic batching: a mapping with ``max_batch_size``,
        ``max_queue_delay_us``, ``preferred_batch_sizes``, ``max_queue_size`` (all optional), or a
        ``BatchingConfig`` message.
        """
        req = serving_pb2.LoadModelRequest(name=name, version=version, model=model,
                                           execution_provider=execution_provider, keep_versions=keep_versions,
                                           intra_op_threads=intra_op_threads)
        if isinstance(batching, serving_pb2.BatchingConfig):
            req.batching.CopyFrom(batching)
        elif batching is not None:
            req.batching.CopyFrom(batching_config(**batching))
        stub = serving_pb2_grpc.ModelControlStub(self.channel("inference"))
        return self._call("inference", stub.LoadModel, req)

    def unload_model(self, name: str, version: str = "") -> None:
        """Unload one version of a model, or all of them when ``version`` is empty."""
        stub = serving_pb2_grpc.ModelControlStub(self.channel("inference"))
        self._call("inference", stub.UnloadModel, serving_pb2.UnloadModelRequest(name=name, version=version))

    def list_models(self) -> list[serving_pb2.ServedModel]:
        """Every model version the inference service holds, with state and provider."""
        stub = serving_pb2_grpc.ModelControlStub(self.channel("inference"))
        return list(self._call("inference", stub.ListModels, serving_pb2.ListModelsRequest()).models)

    def model_config(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        """The served model's Triton ``ModelConfig`` (what ``config.pbtxt`` holds)."""
        stub = kgrpc.GRPCInferenceServiceStub(self.channel("inference"))
        return self._call("inference", stub.ModelConfig, kpb.ModelConfigRequest(name=name, version=version)).config

    def server_metadata(self) -> kpb.ServerMetadataResponse:
        """KServe v2 ServerMetadata: name, version, extensions (modelport adds ``cpu_flags(...)``)."""
        stub = kgrpc.GRPCInferenceServiceStub(self.channel("inference"))
        return self._call("inference", stub.ServerMetadata, kpb.ServerMetadataRequest())

    def model_metadata(self, name: str, version: str = "") -> kpb.ModelMetadataResponse:
        """KServe v2 ModelMetadata: input/output names, datatypes and shapes (-1 = dynamic)."""
        stub = kgrpc.GRPCInferenceServiceStub(self.channel("inference"))
        return self._call("inference", stub.ModelMetadata, kpb.ModelMetadataRequest(name=name, version=version))

    def infer(self, name: str, inputs: Mapping[str, np.ndarray], *, version: str = "",
              outputs: Iterable[str] = (), timeout: float | None = None) -> dict[str, np.ndarray]:
        """Run the model: dict input name -> array in, dict output name -> array out."""
        req = codec.make_infer_request(name, inputs, outputs=list(outputs) or None, model_version=version)
        stub = kgrpc.GRPCInferenceServiceStub(self.channel("inference"))
        resp = self._call("inference", stub.ModelInfer, req, timeout=timeout or self.timeout)
        return codec.decode_outputs(resp)

    def generate(self, name: str, input_ids: Iterable[int], *, max_tokens: int = 32, version: str = "",
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, end_id: int | None = None,
                 timeout: float | None = None) -> Iterator[int]:
        """Generated token ids of a decoupled generation model, yielded as the server streams them.

        One ``ModelStreamInfer`` request with TensorRT-LLM's tensor names (``input_ids``,
        ``input_lengths``, ``request_output_len``; sampling: ``temperature``, ``runtime_top_k``,
        ``runtime_top_p``, ``random_seed``; ``end_id``). Greedy unless ``top_k`` > 1 or ``top_p`` > 0.
        Leaving the loop early cancels the stream, which stops the generation on the server.
        """
        ids = [int(t) for t in input_ids]
        inputs: dict[str, np.ndarray] = {"input_ids": np.asarray([ids], np.int32),
                                         "input_lengths": np.asarray([[len(ids)]], np.int32),
                                         "request_output_len": np.asarray([[max_tokens]], np.int32)}
        optional = (("temperature", temperature, np.float32), ("runtime_top_k", top_k, np.int32),
                    ("runtime_top_p", top_p, np.float32), ("random_seed", seed, np.uint64), ("end_id", end_id, np.int32))
        for key, value, dtype in optional:
            if value is not None:
                inputs[key] = np.asarray([[value]], dtype)
        req = codec.make_infer_request(name, inputs, model_version=version)
        req.parameters["triton_enable_empty_final_response"].bool_param = True
        stub = kgrpc.GRPCInferenceServiceStub(self.channel("inference"))
        call = stub.ModelStreamInfer(iter([req]), timeout=timeout)
        try:
            for resp in call:
                if resp.error_message:
                    raise ClientError("INVALID_ARGUMENT", resp.error_message, service="inference")
                r = resp.infer_response
                if r.outputs:
                    yield from (int(t) for t in codec.decode_outputs(r)["output_ids"].reshape(-1))
                final = r.parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    return
        except grpc.RpcError as e:
            raise ClientError.from_rpc(e, "inference") from None
        finally:
            call.cancel()  # a no-op after the final response; stops the generation when the caller left early

    def deploy(self, model: str | os.PathLike | None = None, *, spec=None, progress=None, **options):
        """Run the deploy pipeline (upload → convert → optimize → verify → load → smoke test).

        Pass a ``modelport.deploy.DeploySpec`` as ``spec``, or the model path plus the same
        options as keyword arguments (``name``, ``optimize``, ``calib``, ``eval``, ...). Returns a
        ``DeployReport``; raises ``modelport.deploy.StageFailed`` naming the failing stage.
        """
        from modelport.deploy import DeploySpec, run_pipeline

        if spec is None:
            spec = DeploySpec(model=model, **options)
        return run_pipeline(self, spec, progress=progress)

