"""Settings of the inference service (env prefix MODELPORT_INFERENCE_, flags override)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modelport.runtime.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    """modelport inference service: KServe v2 / Triton gRPC on onnxruntime."""

    # use_attribute_docstrings: the docstring under each field becomes its --help text.
    model_config = SettingsConfigDict(env_prefix="MODELPORT_INFERENCE_", extra="ignore",
                                      use_attribute_docstrings=True)

    port: int = 8001
    """gRPC port (0 picks a free one)."""
    repository: Path | None = None
    """Triton-layout model repository (<repo>/<model>/<version>/model.onnx + config.pbtxt) loaded at start."""
    execution_provider: str = "auto"
    """Default execution provider: auto (TensorRT -> CUDA -> OpenVINO -> CPU), cpu, cuda, tensorrt, openvino."""
    device_id: int = 0
    """GPU device id for CUDA/TensorRT."""
    intra_op_threads: int = 0
    """onnxruntime intra-op threads per session (0 = auto: one per core, or one thread for a model that runs
    as fast on one, measured at load)."""
    inter_op_threads: int = 0
    """onnxruntime inter-op threads (0 = sequential execution)."""
    graph_optimization_level: str = "all"
    """onnxruntime graph optimization: disable, basic, extended, all."""
    default_max_batch_size: int = 0
    """max_batch_size for models without config.pbtxt whose inputs/outputs all have a dynamic first dim (0 = none,
    or 32 when automatic batching switches dynamic batching on)."""
    max_queue_size: int = 1024
    """Requests queued per model version before new ones get UNAVAILABLE."""
    ort_allow_spinning: bool = True
    """Let onnxruntime's intra-op threads spin-wait between the parallel sections of a run (much faster
    hand-offs inside a run). Spinning stops as soon as a run returns (session.force_spinning_stop), so idle
    threads never steal the cores the gRPC server and its clients need. --no-ort-allow-spinning for a
    machine so oversubscribed that even in-run spinning hurts."""
    idle_spin_us: Annotated[int, Field(ge=0)] = 2000
    """After the last request in flight finished, keep the event loop polling (busy) for up to this many
    microseconds before it sleeps, when requests have lately come back within that time, so the next one is read
    at once by an awake core with warm caches (inference_svc.idle_spin; never while a request runs, and only in
    a server process of its own). 0 turns it off: a host whose cores are all needed by other work."""
    auto_tune: bool = True
    """Measure each model version at load (on zero inputs, a fraction of a second) and choose what its
    settings leave open: one intra-op thread for a model that runs as fast on one; running short models on
    the event loop instead of an executor thread (see --inline-max-us); dynamic batching without queue delay
    for models with a dynamic batch dimension, no batching settings (config.pbtxt or LoadModel) and a batch
    that costs less per item than single runs. --no-auto-tune: no measurement, settings as given."""
    inline_max_us: int = 500
    """With --auto-tune, models whose longest run (batch 1, or the largest automatic batch) takes at most this
    many microseconds run on the event loop: the executor hop would cost more than the run."""
    strict_readiness: bool = True
    """Triton's --strict-readiness: ServerReady (KServe v2) answers ready only when the server has started AND
    no model it was told to load is unavailable (its last load failed and no version of it serves). Models
    unloaded on request do not count. --no-strict-readiness: ready just means started. The grpc.health.v1
    status is not affected (SERVING once started, so liveness probes never restart a pod for a bad model)."""
    warmup: bool = True
    """Run one zero-filled inference per version before it is marked READY."""
    drain_timeout_s: float = 60.0
    """How long an unloaded (or replaced) version may take to finish its accepted requests."""
    shared_memory: bool = True
    """Triton's system shared memory extension: same-host clients register POSIX segments (/dev/shm) and pass
    tensors through them instead of the gRPC message. --no-shared-memory refuses registrations."""
    max_request_bytes: int = 1 << 30
    """Most bytes the input tensors of one inference request may claim (shape x element size, in the message
    or in shared memory); a request claiming more is refused with INVALID_ARGUMENT before anything is read."""
    max_stream_inflight: int = 64
    """Requests of one ModelStreamInfer stream being processed at once; the server reads no further request
    from that stream until one finishes, i.e. its last response went out (a generation counts once, until its
    final token); gRPC flow control then holds the client back."""
    max_shm_regions: int = 256
    """Most shared memory regions registered at once (each holds a file descriptor and a mapping); one more
    is refused with RESOURCE_EXHAUSTED."""
    sniff_timeout_s: float = 120.0
    """Limit in seconds for parsing a caller's ONNX model in the sniffer process before onnxruntime loads it
    (LoadModel of an uploaded or pulled artifact; DEADLINE_EXCEEDED past it)."""
