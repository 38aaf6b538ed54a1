"""The model manager of the inference service: versions, load/unload, hot swap, validation, inference.

``ModelManager`` owns every loaded model version (an onnxruntime session behind a
``batching.Scheduler``). Loading builds the session on the chosen execution provider (falling
back to CPU when the provider cannot take the model), warms it up, and only then makes the
version routable, so a new version replaces the old one without a failed request; unloading
first stops routing to a version, then drains its accepted requests. Requests are validated
against the model's inputs and outputs with messages that name the tensor and what was
expected. Never imports grpc (domain errors only) and never TensorFlow.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference_svc import generation_protocol
from inference_svc.batching import BatchPolicy, Scheduler
from inference_svc.config_mapping import (
    batching_left_open,
    check_config,
    check_limits,
    instances_left_open,
    policy_for,
)
from inference_svc.generation import Generation, GenerationEngine, GenerationParams
from inference_svc.repository_loading import LOADING, READY, UNAVAILABLE, UNLOADING, RepositoryLoading
from inference_svc.sessions import LoadOptions, TensorSpec, make_runner, tensor_specs, warmup_inputs
from inference_svc.stats import VersionStats
from inference_svc.tuning import INLINE_DEMOTE_FACTOR, plan_execution
from modelport import providers as eps
from modelport.dtypes import KSERVE_TO_NUMPY, to_kserve
from modelport.errors import InvalidArgument, ModelportError, NotFound, Unavailable
from modelport.generation_model import is_generation_folder
from modelport.kserve.codec import utf8_strings
from modelport.kserve.v2 import model_config_pb2 as mc
from modelport.trust import check_model_name, check_version

log = logging.getLogger("modelport.inference.models")

DEFAULT_MAX_REQUEST_BYTES = 1 << 30

__all__ = ["LOADING", "READY", "UNAVAILABLE", "UNLOADING", "LoadOptions", "ModelManager", "ModelVersion", "TensorSpec"]


@dataclass
class ModelVersion:
    """A loaded model version: session, I/O specs, scheduler, statistics."""

    name: str
    version: int
    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    providers: list[str]
    policy: BatchPolicy
    scheduler: Scheduler
    stats: VersionStats
    options: LoadOptions
    warnings: list[str] = field(default_factory=list)
    state: str = LOADING
    reason: str = ""
    artifact: object | None = None
    session: object | None = None
    config: mc.ModelConfig | None = None
    """The config.pbtxt it was loaded with (empty when none)."""
    tuning: str = ""
    """How it runs and what was measured at load to choose that (empty when not tuned)."""
    generator: GenerationEngine | None = None
    """Set for a generation model (decoupled: answered over ModelStreamInfer, one response per token)."""

    def __post_init__(self):
        # What every request is checked against, built once (inputs and outputs never change after load).
        self._specs = {t.name: t for t in self.inputs}
        self._output_names = [t.name for t in self.outputs]
        self._itemsizes = {t.name: _itemsize(t.datatype) for t in self.inputs}
        self.text_inputs = tuple(t.name for t in self.inputs if t.datatype == "BYTES")
        """Inputs that reach onnxruntime as str arrays (BYTES)."""

    @property
    def provider(self) -> str:
        """The execution provider the session mainly runs on."""
        return self.providers[0]

    @property
    def label(self) -> str:
        """The version as KServe spells it (a string)."""
        return str(self.version)

    def input_map(self) -> dict[str, TensorSpec]:
        """Inputs by name."""
        return {t.name: t for t in self.inputs}

    def output_names(self) -> list[str]:
        """Output names in model order."""
        return [t.name for t in self.outputs]


def _itemsize(datatype: str) -> int:
    """Bytes per element a shape of this datatype claims (BYTES: 1 per element, its length prefix aside)."""
    dt = KSERVE_TO_NUMPY.get(datatype)
    return dt.itemsize if dt is not None and dt.kind != "O" else 1


class ModelManager(RepositoryLoading):
    """All loaded model versions, by name then version number."""

    def __init__(self, *, repository_root: Path | None = None, defaults: LoadOptions | None = None,
                 default_max_batch_size: int = 0, default_queue_size: int = 1024,
                 available_providers: list[str] | None = None, drain_timeout_s: float = 60.0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 tune: bool = False, inline_max_us: int = 500):
        self.repository_root = Path(repository_root) if repository_root else None
        self.defaults = defaults or LoadOptions()
        self.default_max_batch_size = default_max_batch_size
        self.default_queue_size = default_queue_size
        self.available_providers = available_providers
        self.drain_timeout_s = drain_timeout_s
        self.max_request_bytes = max_request_bytes
        self.tune = tune
        """Measure each version at load to choose its threads, inline execution and automatic batching."""
        self.inline_max_us = inline_max_us
        self._models: dict[str, dict[int, ModelVersion]] = {}
        # name -> reason of its last failed load (cleared when a version of it loads). Shown in the
        # repository index and, while no version of the model serves, it makes the server unready
        # under strict readiness (``unavailable``).
        self._failed: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # --- lookup -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the loaded models."""
        return sorted(self._models)

    def versions(self, name: str) -> dict[int, ModelVersion]:
        """Loaded versions of a model (empty when none)."""
        return self._models.get(name, {})

    def all_versions(self) -> list[ModelVersion]:
        """Every loaded version of every model, sorted."""
        return [v for n in sorted(self._models) for _, v in sorted(self._models[n].items())]

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The requested (or newest ready) version; NotFound naming what exists."""
        versions = self._models.get(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise NotFound(f"model '{name}' is not loaded (loaded models: {known}); load it first or fix the name",
                           {"model": name})
        if not version:
            return versions[max(versions)]
        try:
            v = int(version)
        except ValueError:
            raise NotFound(f"model '{name}' has no version '{version}' (versions are integers: "
                           f"{', '.join(map(str, sorted(versions)))})", {"model": name}) from None
        if v not in versions:
            raise NotFound(f"model '{name}' has no version {version} loaded (loaded: "
                           f"{', '.join(map(str, sorted(versions)))})", {"model": name, "version": version})
        return versions[v]

    def is_ready(self, name: str, version: str = "") -> bool:
        """Whether the version (newest when empty) is loaded and READY."""
        try:
            return self.get(name, version).state == READY
        except NotFound:
            return False

    def unavailable(self) -> dict[str, str]:
        """Models the server was told to load that serve no version because their last load failed.

        name -> reason. Strict readiness (Triton's ``--strict-readiness``) is false while this is not
        empty. Models unloaded on request are not in it; a model that failed at the startup scan, in
        RepositoryModelLoad or in LoadModel is, until a version of it loads.
        """
        return {n: r for n, r in sorted(self._failed.items()) if not self._models.get(n)}

    # --- inference ----------------------------------------------------------------------------

    def check_request(self, mv: ModelVersion, declared: list[tuple[str, str, list[int]]], requested: list[str]) -> int:
        """Check what a request *declares* (name, datatype, shape per input; requested outputs) against the
        model before any tensor is decoded; returns the batch element count.

        Names, datatypes, ranks, fixed dimensions and the batch size must fit the model, and the bytes the
        shapes claim are capped (``max_request_bytes``): a tiny request claiming a huge shape is refused
        here, at once, before anything is allocated or read.
        """
        specs = mv._specs
        seen: set[str] = set()
        for name, _, _ in declared:
            if name not in specs:
                raise InvalidArgument(
                    f"model '{mv.name}' has no input '{name[:128]}'; its inputs are: "
                    f"{', '.join(t.describe() for t in mv.inputs)}",
                    {"tensor": name[:128]},
                )
            if name in seen:
                raise InvalidArgument(f"input '{name}' appears twice in the request", {"tensor": name})
            seen.add(name)
        for t in mv.inputs:
            if t.name not in seen:
                raise InvalidArgument(
                    f"input '{t.name}' is missing; model '{mv.name}' expects {t.describe()}",
                    {"tensor": t.name},
                )
        batch = None
        claimed = 0
        by_name = {name: (datatype, shape) for name, datatype, shape in declared}
        for t in mv.inputs:
            datatype, shape = by_name[t.name]
            got = (datatype or "").upper()
            if got != t.datatype:
                raise InvalidArgument(
                    f"input '{t.name}': datatype {got[:32] or '(none)'} does not match the model's {t.datatype}; "
                    f"send {t.datatype} data",
                    {"tensor": t.name, "expected": t.datatype, "got": got[:32]},
                )
            shape = [int(d) for d in shape]
            ok = len(shape) == len(t.shape) and all(e < 0 or e == g for e, g in zip(t.shape, shape, strict=True))
            if not ok or any(d < 0 for d in shape):
                raise InvalidArgument(
                    f"input '{t.name}': shape {shape[:16]} does not match the model's {list(t.shape)} "
                    "(-1 = any size)",
                    {"tensor": t.name, "expected": str(list(t.shape)), "got": str(shape[:16])},
                )
            elements = 1
            for d in shape:  # a 0 dimension does not excuse the others: (0, 2**62) is refused too
                elements *= max(d, 1)
                if elements > self.max_request_bytes:  # stop multiplying: the shape is absurd
                    break
            claimed += elements * mv._itemsizes[t.name]
            if claimed > self.max_request_bytes:
                raise InvalidArgument(
                    f"input '{t.name}': shape {shape[:16]} of {t.datatype} claims more than the "
                    f"{self.max_request_bytes} bytes a request may hold on this server (--max-request-bytes); "
                    "send smaller requests",
                    {"tensor": t.name, "limit_bytes": str(self.max_request_bytes)},
                )
            if mv.policy.max_batch_size > 0:
                n = shape[0]
                if batch is not None and n != batch:
                    raise InvalidArgument(
                        f"input '{t.name}': batch size {n} differs from the other inputs' {batch}; all inputs "
                        "need the same first dimension",
                        {"tensor": t.name},
                    )
                batch = n
                if n > mv.policy.max_batch_size and mv.policy.enforce_max_batch:
                    raise InvalidArgument(
                        f"input '{t.name}': batch size {n} exceeds max_batch_size {mv.policy.max_batch_size} "
                        f"of model '{mv.name}'; split the request",
                        {"tensor": t.name},
                    )
                if n == 0:
                    raise InvalidArgument(f"input '{t.name}': batch size is 0; send at least one element",
                                          {"tensor": t.name})
        outs = mv._output_names
        for o in requested:
            if o not in outs:
                raise InvalidArgument(
                    f"model '{mv.name}' has no output '{o[:128]}'; its outputs are: "
                    f"{', '.join(t.describe() for t in mv.outputs)}",
                    {"tensor": o[:128]},
                )
        return batch if batch is not None else 1

    def precheck(self, mv: ModelVersion, declared: list[tuple[str, str, list[int]]], requested: list[str]) -> int:
        """``check_request`` for a request not yet decoded (returns its batch element count, for ``infer``); a
        refusal counts as a failed request in the version's statistics and metrics, as one refused later in
        ``infer`` does."""
        start = time.perf_counter_ns()
        try:
            return self.check_request(mv, declared, requested)
        except ModelportError as exc:
            total = time.perf_counter_ns() - start
            mv.stats.record_request(False, total)
            mv.scheduler.metrics.request(exc.status, total / 1e9)
            raise

    def validate(self, mv: ModelVersion, inputs: dict[str, np.ndarray], requested: list[str]) -> int:
        """Check decoded inputs and requested outputs against the model; returns the batch element count."""
        return self.check_request(mv, [(n, to_kserve(a.dtype), list(a.shape)) for n, a in inputs.items()], requested)

    async def infer(self, mv: ModelVersion, inputs: dict[str, np.ndarray], requested: list[str],
                    deadline: float | None = None, *, elements: int | None = None) -> dict[str, np.ndarray]:
        """Validate and run one request through the version's scheduler; records stats and metrics.

        ``deadline`` is a ``time.monotonic()`` instant after which a queued request is dropped. ``elements``
        is given when ``inputs`` were decoded from a request that ``precheck`` accepted (its names, datatypes
        and shapes, which decoding reproduces): the batch element count it returned, and the inputs are not
        checked a second time.
        """
        if mv.generator is not None:
            raise InvalidArgument(f"model '{mv.name}' is a decoupled generation model: ModelInfer does not serve "
                                  "it; use ModelStreamInfer (tritonclient start_stream + async_stream_infer)",
                                  {"model": mv.name})
        start = time.perf_counter_ns()
        status = "OK"
        try:
            if mv.state != READY:
                raise Unavailable(f"model '{mv.name}' version {mv.version} is {mv.state}; retry shortly",
                                  {"model": mv.name})
            if elements is None:
                elements = self.validate(mv, inputs, requested)
            feeds = inputs
            if mv.text_inputs:  # ORT takes str arrays for tensor(string): strict UTF-8, or the error
                feeds = dict(inputs)
                for name in mv.text_inputs:
                    feeds[name] = utf8_strings(name, inputs[name])
            out, _queue_ns = await mv.scheduler.submit(feeds, list(requested), elements, deadline)
            return out
        except ModelportError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            # A loaded model that fails on a request failed on *this* input (shape or values the graph
            # cannot take): the caller gets onnxruntime's reason. Anything else is our bug: INTERNAL.
            if type(exc).__module__.startswith("onnxruntime"):
                status = "INVALID_ARGUMENT"
                raise InvalidArgument(f"model '{mv.name}' rejected the input: {exc}; check the input values "
                                      "against the model", {"model": mv.name}) from None
            status = "INTERNAL"
            log.error("model %s version %s failed", mv.name, mv.version, exc_info=exc)
            raise
        finally:
            total = time.perf_counter_ns() - start
            mv.stats.record_request(status == "OK", total)
            mv.scheduler.metrics.request(status, total / 1e9)

    def generate(self, mv: ModelVersion, params: GenerationParams) -> Generation:
        """Start one generation on a decoupled model; its tokens arrive through the returned Generation."""
        if mv.generator is None:
            raise InvalidArgument(f"model '{mv.name}' is not a generation model; send it ModelInfer requests",
                                  {"model": mv.name})
        if mv.state != READY:
            raise Unavailable(f"model '{mv.name}' version {mv.version} is {mv.state}; retry shortly", {"model": mv.name})
        return mv.generator.submit(params)

    # --- loading ------------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str, path: Path, version: int | None = None, *,
                   config: mc.ModelConfig | None = None, options: LoadOptions | None = None,
                   keep_versions: int = 0, artifact=None) -> ModelVersion:
        """Load one version (session, warm-up), make it routable, then retire old versions.

        ``version=None`` picks one more than the highest loaded. With ``keep_versions=N`` only
        the N newest versions stay; older ones are drained and unloaded after the new one is ready.
        """
        check_model_name(name)
        async with self._lock(name):
            current = self._models.get(name, {})
            if version is None:
                version = max(current, default=0) + 1
            if version < 1:
                raise InvalidArgument(f"version {version} must be >= 1")
            try:
                mv = await self._create(name, Path(path), version, config or mc.ModelConfig(),
                                        options or self.defaults, artifact)
            except ModelportError as exc:
                self._failed[name] = exc.message
                raise
            old = current.get(version)
            self._models.setdefault(name, {})[version] = mv
            self._failed.pop(name, None)
            mv.state = READY
            log.info("model %s version %d READY on %s (batching: max %d, dynamic %s, delay %dus, instances %d)",
                     name, version, mv.provider, mv.policy.max_batch_size, mv.policy.dynamic,
                     mv.policy.max_queue_delay_us, mv.policy.instances)
            if mv.tuning:
                log.info("model %s version %d runs with %s", name, version, mv.tuning)
            for w in mv.warnings:
                log.warning("model %s version %d: %s", name, version, w)
            retire = [old] if old is not None else []
            if keep_versions > 0:
                versions = sorted(self._models[name])
                for v in versions[:-keep_versions]:
                    retire.append(self._models[name].pop(v))
            for r in retire:
                await self._retire(r)
            return mv

    async def _create(self, name: str, path: Path, version: int, config: mc.ModelConfig, opts: LoadOptions,
                      artifact) -> ModelVersion:
        check_limits(config, opts)  # before a session is built: thread and queue numbers are bounded
        if not path.is_file():
            raise NotFound(f"the model file of '{name}' version {version} ({path.name}) does not exist",
                           {"model": name})
        if is_generation_folder(path.parent):
            return await self._create_generation(name, path, version, config, opts, artifact)
        loop = asyncio.get_running_loop()
        plan = await loop.run_in_executor(None, functools.partial(
            plan_execution, path, opts, self.available_providers, tune=self.tune and opts.warmup,
            may_auto_batch=batching_left_open(config, opts), inline_max_us=self.inline_max_us,
            may_add_instances=instances_left_open(config, opts)))
        session, warnings = plan.session, plan.warnings
        opts = dataclasses.replace(opts, intra_op_threads=plan.intra_op_threads)
        inputs = tensor_specs(session.get_inputs())
        outputs = tensor_specs(session.get_outputs())
        check_config(name, config, inputs, outputs)
        policy = policy_for(config, opts, inputs, outputs, self.default_max_batch_size, self.default_queue_size,
                            auto_batching=plan.auto_batching, auto_instances=plan.instances)
        stats = VersionStats()
        concurrent = plan.concurrent_session
        scheduler = Scheduler(name, str(version), make_runner(concurrent or session), policy, stats,
                              inline=plan.inline, inline_limit_s=INLINE_DEMOTE_FACTOR * self.inline_max_us / 1e6,
                              solo_run=make_runner(session) if concurrent is not None else None)
        mv = ModelVersion(name, version, path, inputs, outputs, list(session.get_providers()), policy, scheduler,
                          stats, opts, warnings, artifact=artifact, session=session, config=config,
                          tuning=plan.describe() if self.tune else "")
        if opts.warmup:
            feeds = warmup_inputs(inputs, 1)
            try:
                await loop.run_in_executor(None, scheduler.run_sync, feeds, [])
            except Exception as exc:  # noqa: BLE001 - a model may need real-looking data; not fatal
                mv.warnings.append(f"warm-up with zero inputs failed ({exc}); the model is served anyway")
        scheduler.start()
        return mv

    async def _create_generation(self, name: str, path: Path, version: int, config: mc.ModelConfig,
                                 opts: LoadOptions, artifact) -> ModelVersion:
        """A generation folder (model.onnx + generation.json): a GenerationEngine instead of a Scheduler."""
        loop = asyncio.get_running_loop()
        choice = eps.choose(opts.execution_provider, self.available_providers, opts.device_id)
        so = eps.session_options(opts.intra_op_threads, opts.inter_op_threads, opts.graph_optimization_level,
                                 opts.allow_spinning)
        engine = await loop.run_in_executor(None, lambda: GenerationEngine.open(
            path.parent, name, str(version), providers=choice.providers, session_options=so))
        inputs = generation_protocol.INPUTS + generation_protocol.OPTIONAL_INPUTS
        check_config(name, config, inputs, generation_protocol.OUTPUTS)
        policy = BatchPolicy(max_batch_size=engine.max_batch, dynamic=False, max_queue_size=engine.max_queue)
        mv = ModelVersion(name, version, path, generation_protocol.INPUTS, generation_protocol.OUTPUTS,
                          list(engine.step.session.get_providers()), policy, engine, engine.stats, opts,
                          list(choice.warnings), artifact=artifact, session=engine.step.session, config=config,
                          generator=engine)
        if opts.warmup:
            await loop.run_in_executor(None, engine.warmup)
        engine.start()
        return mv

    async def _retire(self, mv: ModelVersion) -> None:
        """Drain a version no longer routable, then stop it."""
        mv.state = UNLOADING
        try:
            await mv.scheduler.drain(self.drain_timeout_s)
        except TimeoutError:
            log.warning("model %s version %d: drain timed out with %d requests in flight", mv.name, mv.version,
                        mv.scheduler.inflight)
        await mv.scheduler.stop()
        mv.state = UNAVAILABLE
        mv.session = None
        log.info("model %s version %d unloaded", mv.name, mv.version)

    async def unload(self, name: str, version: str = "") -> list[ModelVersion]:
        """Stop routing to a version (or all versions) of a model, drain, and release it."""
        check_model_name(name)
        if version:
            check_version(version)
        async with self._lock(name):
            versions = self._models.get(name)
            if not versions:
                if name in self._failed:  # as in Triton, only a successful load clears a failed model
                    raise NotFound(
                        f"model '{name}' is not loaded; nothing to unload (its last load failed: "
                        f"{self._failed[name]}); fix it and load it again", {"model": name})
                raise NotFound(f"model '{name}' is not loaded; nothing to unload", {"model": name})
            if version:
                mv = self.get(name, version)
                retire = [versions.pop(mv.version)]
            else:
                retire = list(versions.values())
                versions.clear()
            if not versions:
                self._models.pop(name, None)
                self._failed.pop(name, None)  # unloaded on request: an earlier failed reload no longer counts
            for r in retire:
                await self._retire(r)
            return retire

    async def close(self) -> None:
        """Drain and unload everything (service shutdown)."""
        for name in list(self._models):
            try:
                await self.unload(name)
            except NotFound:
                pass
