"""Triton ``config.pbtxt`` (``ModelConfig``) mapped onto how a version is loaded and scheduled.

``policy_for`` decides the batching policy (load options, then config, then what the model's
shapes allow); ``options_from_config`` applies the config's accelerators, graph level and GPUs to
the server defaults; ``check_config`` refuses a config naming tensors the model lacks.
"""

from __future__ import annotations

from inference_svc.batching import BatchPolicy
from inference_svc.sessions import LoadOptions, TensorSpec
from inference_svc.tuning import AUTO_MAX_BATCH
from modelport.errors import InvalidArgument
from modelport.kserve.v2 import model_config_pb2 as mc

# Upper bounds on the numbers a config.pbtxt, a RepositoryModelLoad override or a LoadModel request sets:
# each becomes threads, queue slots or waiting time on this server, so none may be arbitrary.
LIMITS = {
    "instance_group count": 64,
    "max_batch_size": 1 << 20,
    "max_queue_size": 1 << 20,
    "max_queue_delay_microseconds": 60_000_000,
    "preferred_batch_size entries": 64,
    "intra_op_threads": 256,
    "inter_op_threads": 256,
    "device_id": 1024,
    "keep_versions": 1024,
}


def check_limit(what: str, value: int) -> None:
    """InvalidArgument when a config number is negative or above its LIMITS entry."""
    limit = LIMITS[what]
    if value < 0 or value > limit:
        raise InvalidArgument(f"{what} {value} is outside 0..{limit} (the most this server accepts); lower it",
                              {"field": what.replace(" ", "_"), "limit": str(limit)})


def check_limits(config: mc.ModelConfig, opts: LoadOptions) -> None:
    """Every number of a config and its load options within LIMITS (before any session is built)."""
    db = config.dynamic_batching
    check_limit("instance_group count", max(opts.instances or 0, sum(g.count for g in config.instance_group)))
    check_limit("max_batch_size", max(opts.max_batch_size or 0, config.max_batch_size))
    check_limit("max_queue_size", max(opts.max_queue_size or 0, db.default_queue_policy.max_queue_size))
    check_limit("max_queue_delay_microseconds", max(opts.max_queue_delay_us or 0, db.max_queue_delay_microseconds))
    check_limit("preferred_batch_size entries", max(len(opts.preferred_batch_sizes), len(db.preferred_batch_size)))
    check_limit("intra_op_threads", opts.intra_op_threads)
    check_limit("inter_op_threads", opts.inter_op_threads)
    check_limit("device_id", max([opts.device_id, *(g for grp in config.instance_group for g in grp.gpus)]))


def batching_left_open(config: mc.ModelConfig, opts: LoadOptions) -> bool:
    """Neither the load request nor config.pbtxt says anything about batching (automatic batching may apply)."""
    return (opts.max_batch_size is None and opts.dynamic_batching is None and not config.max_batch_size
            and not config.HasField("dynamic_batching"))


def instances_left_open(config: mc.ModelConfig, opts: LoadOptions) -> bool:
    """Neither the load request nor config.pbtxt sets the instance count."""
    return not opts.instances and not any(g.count for g in config.instance_group)


def policy_for(config: mc.ModelConfig, opts: LoadOptions, inputs: list[TensorSpec], outputs: list[TensorSpec],
               default_max_batch: int, default_queue: int, *, auto_batching: bool = False,
               auto_instances: int = 0) -> BatchPolicy:
    """Batching policy from load options, then config.pbtxt, then what the model allows.

    ``auto_batching`` (batching left open and measured to pay at load): dynamic batching without queue
    delay up to ``default_max_batch`` (or ``AUTO_MAX_BATCH``); larger requests are accepted and run alone.
    ``auto_instances``: the instance count chosen at load when nothing configured it (0 = one).
    """
    batchable = all(t.shape and t.shape[0] == -1 for t in inputs + outputs)
    if auto_batching and batchable:
        queue = opts.max_queue_size or default_queue
        instances = opts.instances or sum(g.count for g in config.instance_group) or 1
        return BatchPolicy(max_batch_size=default_max_batch or AUTO_MAX_BATCH, dynamic=True, max_queue_delay_us=0,
                           max_queue_size=int(queue), instances=int(instances), enforce_max_batch=False,
                           eager=True)
    if opts.max_batch_size is not None:
        mbs = opts.max_batch_size
    elif config.max_batch_size:
        mbs = config.max_batch_size
    else:
        mbs = default_max_batch if batchable else 0
    if mbs > 0 and not batchable:
        raise InvalidArgument(
            f"max_batch_size {mbs} needs a dynamic first dimension on every input and output, but the model "
            f"has inputs {', '.join(t.describe() for t in inputs)} and outputs "
            f"{', '.join(t.describe() for t in outputs)}; set max_batch_size 0",
        )
    has_db = config.HasField("dynamic_batching")
    dynamic = opts.dynamic_batching if opts.dynamic_batching is not None else has_db
    delay = opts.max_queue_delay_us or (config.dynamic_batching.max_queue_delay_microseconds if has_db else 0)
    preferred = tuple(opts.preferred_batch_sizes) or tuple(config.dynamic_batching.preferred_batch_size)
    for p in preferred:
        if mbs and p > mbs:
            raise InvalidArgument(f"preferred batch size {p} exceeds max_batch_size {mbs}; lower it or raise "
                                  "max_batch_size")
    queue = opts.max_queue_size or config.dynamic_batching.default_queue_policy.max_queue_size or default_queue
    instances = opts.instances or sum(g.count for g in config.instance_group) or auto_instances or 1
    return BatchPolicy(max_batch_size=mbs, dynamic=bool(dynamic and mbs > 0), max_queue_delay_us=int(delay),
                       preferred_batch_sizes=preferred, max_queue_size=int(queue), instances=int(instances))


def options_from_config(config: mc.ModelConfig, base: LoadOptions) -> LoadOptions:
    """Apply config.pbtxt's execution accelerators and graph level to the server defaults."""
    opts = LoadOptions(**{**base.__dict__})
    acc = config.optimization.execution_accelerators
    names = [a.name.lower() for a in list(acc.gpu_execution_accelerator) + list(acc.cpu_execution_accelerator)]
    if names:
        opts.execution_provider = names[0]
    elif any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in config.instance_group):
        opts.execution_provider = "cuda"
    elif any(g.kind == mc.ModelInstanceGroup.KIND_CPU for g in config.instance_group):
        opts.execution_provider = "cpu"
    if config.optimization.HasField("graph"):
        lvl = config.optimization.graph.level
        opts.graph_optimization_level = "disable" if lvl < 0 else "all" if lvl in (0,) or lvl >= 2 else "extended"
    gpus = [g for grp in config.instance_group for g in grp.gpus]
    if gpus:
        opts.device_id = gpus[0]
    return opts


def check_config(name: str, config: mc.ModelConfig, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """InvalidArgument when config.pbtxt names an input or output the model does not have."""
    have_in = {t.name for t in inputs}
    have_out = {t.name for t in outputs}
    for i in config.input:
        if i.name not in have_in:
            raise InvalidArgument(
                f"config.pbtxt of '{name}' names input '{i.name}' but the model's inputs are "
                f"{', '.join(sorted(have_in))}; fix the config", {"model": name})
    for o in config.output:
        if o.name not in have_out:
            raise InvalidArgument(
                f"config.pbtxt of '{name}' names output '{o.name}' but the model's outputs are "
                f"{', '.join(sorted(have_out))}; fix the config", {"model": name})

