"""Protobuf <-> domain mapping for the inference service (KServe v2 and modelport.v1 messages).

Encodes loaded model versions as ModelMetadata, ModelConfig, ModelStatistics, RepositoryIndex
and ServedModel messages, and decodes LoadModel / RepositoryModelLoad options into
``LoadOptions``. protobuf only: no grpc.
"""

from __future__ import annotations

from google.protobuf import json_format

from inference_svc.config_mapping import check_limit
from inference_svc.manager import LoadOptions, ModelManager, ModelVersion
from modelport import providers as eps
from modelport import repository
from modelport.errors import InvalidArgument
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import model_config_pb2 as mc
from modelport.trust import check_version
from modelport.v1 import serving_pb2

GPU_PROVIDERS = {eps.CUDA: "cuda", eps.TENSORRT: "tensorrt"}


def model_metadata(manager: ModelManager, mv: ModelVersion) -> pb.ModelMetadataResponse:
    """KServe ModelMetadata: datatype strings, -1 for dynamic dims, every loaded version."""
    resp = pb.ModelMetadataResponse(name=mv.name, platform=repository.PLATFORM,
                                    versions=[str(v) for v in sorted(manager.versions(mv.name))])
    for t in mv.inputs:
        resp.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
    for t in mv.outputs:
        resp.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
    return resp


def model_config(mv: ModelVersion) -> mc.ModelConfig:
    """The effective Triton ModelConfig of a version, including the execution provider in use."""
    p = mv.policy
    cfg = mc.ModelConfig(name=mv.name, platform=repository.PLATFORM, backend=repository.BACKEND,
                         max_batch_size=p.max_batch_size)
    if mv.config is not None and mv.config.HasField("version_policy"):
        cfg.version_policy.CopyFrom(mv.config.version_policy)
    else:
        cfg.version_policy.latest.num_versions = 1
    skip = 1 if p.max_batch_size > 0 else 0
    for t in mv.inputs:
        cfg.input.add(name=t.name, data_type=repository.KSERVE_TO_CONFIG[t.datatype], dims=list(t.shape[skip:]))
    for t in mv.outputs:
        cfg.output.add(name=t.name, data_type=repository.KSERVE_TO_CONFIG[t.datatype], dims=list(t.shape[skip:]))
    if p.dynamic:
        cfg.dynamic_batching.preferred_batch_size.extend(p.preferred_batch_sizes)
        cfg.dynamic_batching.max_queue_delay_microseconds = p.max_queue_delay_us
        cfg.dynamic_batching.default_queue_policy.max_queue_size = p.max_queue_size
    on_gpu = mv.provider in GPU_PROVIDERS
    grp = cfg.instance_group.add(name=f"{mv.name}_0", count=p.instances,
                                 kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU)
    if on_gpu:
        grp.gpus.append(mv.options.device_id)
    acc = cfg.optimization.execution_accelerators
    for name in mv.providers:
        if name in GPU_PROVIDERS:
            acc.gpu_execution_accelerator.add(name=GPU_PROVIDERS[name])
        elif name == eps.OPENVINO:
            acc.cpu_execution_accelerator.add(name="openvino")
    level = (mv.options.graph_optimization_level or "all").lower()
    cfg.optimization.graph.level = {"disable": -1, "basic": 1, "extended": 1, "all": 0}.get(level, 0)
    params = {
        "execution_provider": mv.provider,
        "execution_providers": ",".join(mv.providers),
        "requested_execution_provider": mv.options.execution_provider or "auto",
        "device_id": str(mv.options.device_id),
        "intra_op_thread_count": str(mv.options.intra_op_threads),
        "inter_op_thread_count": str(mv.options.inter_op_threads),
        "graph_optimization_level": level,
        "max_queue_size": str(p.max_queue_size),
        "execution": ("generation engine thread" if mv.generator is not None  # no Scheduler: its own decode loop
                      else "inline" if mv.scheduler.inline else "executor"),
        "auto_batching": "on" if p.dynamic and not p.enforce_max_batch else "off",
    }
    if mv.tuning:
        params["tuning"] = mv.tuning
    if mv.generator is not None:  # a generation model streams one response per token
        cfg.model_transaction_policy.decoupled = True
        gen = mv.generator.config
        params.update({"generation_architecture": gen.architecture, "max_context": str(mv.generator.max_context),
                       "max_concurrent_generations": str(mv.generator.max_batch)})
    for k, v in params.items():
        cfg.parameters[k].string_value = v
    return cfg


def _duration(d) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def model_statistics(mv: ModelVersion) -> pb.ModelStatistics:
    """Triton ModelStatistics of one version."""
    s = mv.stats
    out = pb.ModelStatistics(name=mv.name, version=mv.label, last_inference=s.last_inference_ms,
                             inference_count=s.inference_count, execution_count=s.execution_count)
    st = out.inference_stats
    st.success.CopyFrom(_duration(s.success))
    st.fail.CopyFrom(_duration(s.fail))
    st.queue.CopyFrom(_duration(s.queue))
    st.compute_input.CopyFrom(_duration(s.compute_input))
    st.compute_infer.CopyFrom(_duration(s.compute_infer))
    st.compute_output.CopyFrom(_duration(s.compute_output))
    for size, b in sorted(s.batches.items()):
        out.batch_stats.add(batch_size=size, compute_input=_duration(b.compute_input),
                            compute_infer=_duration(b.compute_infer), compute_output=_duration(b.compute_output))
    return out


def statistics(manager: ModelManager, name: str, version: str) -> pb.ModelStatisticsResponse:
    """Statistics of all models, of all versions of one model, or of one version."""
    resp = pb.ModelStatisticsResponse()
    if not name:
        targets = manager.all_versions()
    elif version:
        targets = [manager.get(name, version)]
    else:
        manager.get(name)  # NotFound when unknown
        targets = [v for _, v in sorted(manager.versions(name).items())]
    for mv in targets:
        resp.model_stats.append(model_statistics(mv))
    return resp


def repository_index(manager: ModelManager, ready_only: bool) -> pb.RepositoryIndexResponse:
    """RepositoryIndex of loaded versions and repository folders."""
    resp = pb.RepositoryIndexResponse()
    for name, version, state, reason in manager.index(ready_only):
        resp.models.add(name=name, version=version, state=state, reason=reason)
    return resp


def batching_config(mv: ModelVersion) -> serving_pb2.BatchingConfig:
    """A version's batching policy as a BatchingConfig."""
    p = mv.policy
    return serving_pb2.BatchingConfig(max_batch_size=p.max_batch_size, max_queue_delay_us=p.max_queue_delay_us,
                                      preferred_batch_sizes=list(p.preferred_batch_sizes),
                                      max_queue_size=p.max_queue_size, enabled=p.dynamic)


def served_model(mv: ModelVersion) -> serving_pb2.ServedModel:
    """A loaded version as ListModels/LoadModel report it."""
    out = serving_pb2.ServedModel(name=mv.name, version=mv.label, state=mv.state, execution_provider=mv.provider,
                                  reason=mv.reason, batching=batching_config(mv))
    if mv.artifact is not None:
        out.artifact.CopyFrom(mv.artifact)
    return out


def load_options(request: serving_pb2.LoadModelRequest, defaults: LoadOptions) -> LoadOptions:
    """LoadOptions from a LoadModelRequest over the server defaults; InvalidArgument on bad values."""
    opts = LoadOptions(**{**defaults.__dict__})
    if request.execution_provider:
        opts.execution_provider = request.execution_provider
    try:
        eps.normalize(opts.execution_provider)
    except ValueError as exc:
        raise InvalidArgument(str(exc), {"field": "execution_provider"}) from None
    opts.device_id = request.device_id or defaults.device_id
    opts.intra_op_threads = request.intra_op_threads or defaults.intra_op_threads
    opts.inter_op_threads = request.inter_op_threads or defaults.inter_op_threads
    if request.graph_optimization_level:
        lvl = request.graph_optimization_level.lower()
        if lvl not in eps.GRAPH_OPT_LEVELS:
            raise InvalidArgument(f"unknown graph_optimization_level {request.graph_optimization_level!r}; use "
                                  f"one of {', '.join(eps.GRAPH_OPT_LEVELS)}", {"field": "graph_optimization_level"})
        opts.graph_optimization_level = lvl
    for name, value in (("device_id", request.device_id), ("intra_op_threads", request.intra_op_threads),
                        ("inter_op_threads", request.inter_op_threads), ("keep_versions", request.keep_versions)):
        if value < 0:
            raise InvalidArgument(f"{name} must be >= 0, got {value}", {"field": name})
        check_limit(name, value)
    if request.HasField("batching"):
        b = request.batching
        if b.max_batch_size < 0 or b.max_queue_delay_us < 0 or b.max_queue_size < 0:
            raise InvalidArgument("batching values must be >= 0", {"field": "batching"})
        if any(p <= 0 for p in b.preferred_batch_sizes):
            raise InvalidArgument("preferred_batch_sizes must be positive", {"field": "batching"})
        if b.max_batch_size > 0:
            opts.max_batch_size = b.max_batch_size
        opts.dynamic_batching = b.enabled
        opts.max_queue_delay_us = int(b.max_queue_delay_us)
        opts.preferred_batch_sizes = tuple(b.preferred_batch_sizes)
        opts.max_queue_size = b.max_queue_size
    return opts


def parse_version(version: str) -> int | None:
    """LoadModel's version string as a positive int64 (None when empty); InvalidArgument otherwise."""
    return check_version(version)


def config_override(request: pb.RepositoryModelLoadRequest) -> mc.ModelConfig | None:
    """Triton's RepositoryModelLoad 'config' parameter: a JSON ModelConfig replacing config.pbtxt."""
    p = request.parameters.get("config")
    if p is None:
        return None
    text = p.string_param or p.bytes_param.decode("utf-8", "replace")
    repository.check_config_size(len(text.encode("utf-8", "surrogatepass")), "parameter 'config'")
    cfg = mc.ModelConfig()
    try:
        json_format.Parse(text, cfg, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"parameter 'config' is not a valid JSON ModelConfig: {exc}",
                              {"parameter": "config"}) from None
    return cfg
