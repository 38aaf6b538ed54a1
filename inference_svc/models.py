"""Model management of the inference service: versions, load/unload, hot swap, validation, inference.

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
import logging
import time
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference_svc.batching import BatchPolicy, Scheduler
from inference_svc.stats import VersionStats
from modelport import providers as eps
from modelport import repository
from modelport.dtypes import ORT_TO_KSERVE, to_kserve, to_numpy_dtype
from modelport.errors import FailedPrecondition, InvalidArgument, ModelportError, NotFound, Unavailable
from modelport.kserve.v2 import model_config_pb2 as mc

log = logging.getLogger("modelport.inference.models")

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, KServe datatype, full shape (-1 = any)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        """'name (DATATYPE [dims])' for error messages."""
        return f"{self.name} ({self.datatype} {list(self.shape)})"


@dataclass
class LoadOptions:
    """Everything that decides how a model version is loaded and scheduled."""

    execution_provider: str = "auto"
    device_id: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization_level: str = "all"
    max_batch_size: int | None = None
    """None = taken from config.pbtxt, else derived from the model (default_max_batch_size)."""
    dynamic_batching: bool | None = None
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0
    instances: int = 0
    warmup: bool = True
    allow_spinning: bool = True


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


def _dims(shape) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _build_session(path: Path, opts: LoadOptions, available: list[str] | None = None):
    """Create an InferenceSession on the chosen providers; fall back to CPU if that fails."""
    import onnxruntime as ort

    choice = eps.choose(opts.execution_provider, available, opts.device_id)
    so = eps.session_options(opts.intra_op_threads, opts.inter_op_threads, opts.graph_optimization_level,
                             opts.allow_spinning)
    warnings = list(choice.warnings)
    try:
        with _warnings.catch_warnings():  # onnxruntime's own "provider not available" warning; we report ours
            _warnings.simplefilter("ignore", UserWarning)
            sess = ort.InferenceSession(str(path), sess_options=so, providers=choice.providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        if choice.primary == eps.CPU:
            raise InvalidArgument(
                f"onnxruntime cannot load {path.name}: {exc}; check that the file is a valid ONNX model "
                "whose opset and operators this onnxruntime supports",
                {"path": str(path)},
            ) from None
        warnings.append(f"{choice.primary} failed to load the model ({exc}); using {eps.CPU}")
        try:
            sess = ort.InferenceSession(str(path), sess_options=so, providers=[eps.CPU])
        except Exception as exc2:  # noqa: BLE001
            raise InvalidArgument(f"onnxruntime cannot load {path.name} on any provider: {exc2}",
                                  {"path": str(path)}) from None
    used = sess.get_providers()[0]
    if used != choice.primary and not any(used in w for w in warnings):
        warnings.append(f"{choice.primary} was selected but onnxruntime runs the model on {used}")
    return sess, warnings


def _specs(args) -> list[TensorSpec]:
    return [TensorSpec(a.name, ORT_TO_KSERVE.get(a.type, "FP32"), _dims(a.shape)) for a in args]


def _make_runner(session):
    def run(inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        names = outputs or [o.name for o in session.get_outputs()]
        values = session.run(names, inputs)
        return dict(zip(names, values, strict=True))

    return run


def _warmup_inputs(inputs: list[TensorSpec], batch: int) -> dict[str, np.ndarray]:
    feeds = {}
    for t in inputs:
        shape = [batch if (i == 0 and d < 0) else (1 if d < 0 else d) for i, d in enumerate(t.shape)]
        if t.datatype == "BYTES":
            arr = np.full(shape, "", dtype=object)
        else:
            arr = np.zeros(shape, dtype=to_numpy_dtype(t.datatype))
        feeds[t.name] = arr
    return feeds


def policy_for(config: mc.ModelConfig, opts: LoadOptions, inputs: list[TensorSpec], outputs: list[TensorSpec],
               default_max_batch: int, default_queue: int) -> BatchPolicy:
    """Batching policy from load options, then config.pbtxt, then what the model allows."""
    batchable = all(t.shape and t.shape[0] == -1 for t in inputs + outputs)
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
    instances = opts.instances or sum(g.count for g in config.instance_group) or 1
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


class ModelManager:
    """All loaded model versions, by name then version number."""

    def __init__(self, *, repository_root: Path | None = None, defaults: LoadOptions | None = None,
                 default_max_batch_size: int = 0, default_queue_size: int = 1024,
                 available_providers: list[str] | None = None, drain_timeout_s: float = 60.0):
        self.repository_root = Path(repository_root) if repository_root else None
        self.defaults = defaults or LoadOptions()
        self.default_max_batch_size = default_max_batch_size
        self.default_queue_size = default_queue_size
        self.available_providers = available_providers
        self.drain_timeout_s = drain_timeout_s
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

    def validate(self, mv: ModelVersion, inputs: dict[str, np.ndarray], requested: list[str]) -> int:
        """Check inputs and requested outputs against the model; returns the batch element count."""
        specs = mv.input_map()
        for name in inputs:
            if name not in specs:
                raise InvalidArgument(
                    f"model '{mv.name}' has no input '{name}'; its inputs are: "
                    f"{', '.join(t.describe() for t in mv.inputs)}",
                    {"tensor": name},
                )
        for t in mv.inputs:
            if t.name not in inputs:
                raise InvalidArgument(
                    f"input '{t.name}' is missing; model '{mv.name}' expects {t.describe()}",
                    {"tensor": t.name},
                )
        batch = None
        for t in mv.inputs:
            arr = inputs[t.name]
            got = to_kserve(arr.dtype)
            if got != t.datatype:
                raise InvalidArgument(
                    f"input '{t.name}': datatype {got} does not match the model's {t.datatype}; send "
                    f"{t.datatype} data",
                    {"tensor": t.name, "expected": t.datatype, "got": got},
                )
            shape = arr.shape
            ok = len(shape) == len(t.shape) and all(e < 0 or e == g for e, g in zip(t.shape, shape, strict=True))
            if not ok:
                raise InvalidArgument(
                    f"input '{t.name}': shape {list(shape)} does not match the model's {list(t.shape)} "
                    "(-1 = any size)",
                    {"tensor": t.name, "expected": str(list(t.shape)), "got": str(list(shape))},
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
                if n > mv.policy.max_batch_size:
                    raise InvalidArgument(
                        f"input '{t.name}': batch size {n} exceeds max_batch_size {mv.policy.max_batch_size} "
                        f"of model '{mv.name}'; split the request",
                        {"tensor": t.name},
                    )
                if n == 0:
                    raise InvalidArgument(f"input '{t.name}': batch size is 0; send at least one element",
                                          {"tensor": t.name})
        outs = mv.output_names()
        for o in requested:
            if o not in outs:
                raise InvalidArgument(
                    f"model '{mv.name}' has no output '{o}'; its outputs are: "
                    f"{', '.join(t.describe() for t in mv.outputs)}",
                    {"tensor": o},
                )
        return batch if batch is not None else 1

    async def infer(self, mv: ModelVersion, inputs: dict[str, np.ndarray], requested: list[str],
                    deadline: float | None = None) -> dict[str, np.ndarray]:
        """Validate and run one request through the version's scheduler; records stats and metrics.

        ``deadline`` is a ``time.monotonic()`` instant after which a queued request is dropped.
        """
        start = time.perf_counter_ns()
        status = "OK"
        try:
            if mv.state != READY:
                raise Unavailable(f"model '{mv.name}' version {mv.version} is {mv.state}; retry shortly",
                                  {"model": mv.name})
            elements = self.validate(mv, inputs, requested)
            feeds = {}
            for t in mv.inputs:
                a = inputs[t.name]
                # ORT takes str arrays for tensor(string); bytes objects are decoded as UTF-8.
                if t.datatype == "BYTES":
                    a = np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b,
                                     otypes=[object])(a) if a.size else a.astype(object)
                feeds[t.name] = a
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
        if not name or "/" in name:
            raise InvalidArgument(f"model name {name!r} is not valid; use letters, digits, '-', '_'")
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
        if not path.is_file():
            raise NotFound(f"model file {path} does not exist", {"path": str(path)})
        loop = asyncio.get_running_loop()
        session, warnings = await loop.run_in_executor(None, _build_session, path, opts, self.available_providers)
        inputs = _specs(session.get_inputs())
        outputs = _specs(session.get_outputs())
        self._check_config(name, config, inputs, outputs)
        policy = policy_for(config, opts, inputs, outputs, self.default_max_batch_size, self.default_queue_size)
        stats = VersionStats()
        scheduler = Scheduler(name, str(version), _make_runner(session), policy, stats)
        mv = ModelVersion(name, version, path, inputs, outputs, list(session.get_providers()), policy, scheduler,
                          stats, opts, warnings, artifact=artifact, session=session, config=config)
        if opts.warmup:
            feeds = _warmup_inputs(inputs, 1)
            try:
                await loop.run_in_executor(None, scheduler.run_sync, feeds, [])
            except Exception as exc:  # noqa: BLE001 - a model may need real-looking data; not fatal
                mv.warnings.append(f"warm-up with zero inputs failed ({exc}); the model is served anyway")
        scheduler.start()
        return mv

    @staticmethod
    def _check_config(name: str, config: mc.ModelConfig, inputs: list[TensorSpec],
                      outputs: list[TensorSpec]) -> None:
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

    # --- model repository ---------------------------------------------------------------------

    def _repo(self) -> Path:
        if self.repository_root is None:
            raise FailedPrecondition(
                "this server has no model repository; start it with --repository DIR or load models with "
                "ModelControl.LoadModel")
        return self.repository_root

    def repository_models(self, errors: dict[str, str] | None = None) -> dict[str, repository.RepositoryModel]:
        """The models of the repository folder (empty without one)."""
        if self.repository_root is None:
            return {}
        return repository.scan(self.repository_root, errors)

    async def load_from_repository(self, name: str, config_override: mc.ModelConfig | None = None) -> list[int]:
        """(Re)load a repository model: load the versions its policy selects, unload the others."""
        root = self._repo()
        folder = root / name
        if not folder.is_dir():
            raise NotFound(f"model '{name}' is not in the repository {root}", {"model": name})
        try:
            return await self._load_folder(name, folder, config_override)
        except ModelportError as exc:  # a model of the repository that does not load: unavailable
            self._failed[name] = exc.message
            raise

    async def _load_folder(self, name: str, folder: Path, config_override: mc.ModelConfig | None) -> list[int]:
        root = folder.parent
        rm = repository.read_model(folder)
        config = rm.config
        if config_override is not None:  # Triton: an override replaces the repository's config
            config = mc.ModelConfig()
            config.CopyFrom(config_override)
            config.name = name
        if not rm.versions:
            raise NotFound(f"model '{name}' in {root} has no version folder holding "
                           f"{repository.model_file_name(config)}", {"model": name})
        wanted = repository.select_versions(config.version_policy, list(rm.versions))
        if not wanted:
            raise NotFound(f"the version policy of '{name}' selects none of its versions "
                           f"{sorted(rm.versions)}", {"model": name})
        opts = options_from_config(config, self.defaults)
        loaded = set(self.versions(name))
        # Triton reloads on every call: each version is rebuilt and swapped in without a gap.
        for v in wanted:
            await self.load(name, rm.versions[v], v, config=config, options=opts)
        for v in sorted(loaded - set(wanted)):
            await self.unload(name, str(v))
        return wanted

    async def load_repository(self) -> list[str]:
        """Load every model of the repository (startup); a model that fails is logged, not fatal."""
        names = []
        errors: dict[str, str] = {}
        found = self.repository_models(errors)
        for name, message in errors.items():
            self._failed[name] = message
            log.error("model %s failed to load: %s", name, message)
        for name in found:
            try:
                await self.load_from_repository(name)
                names.append(name)
            except ModelportError as exc:
                self._failed[name] = exc.message
                log.error("model %s failed to load: %s", name, exc.message)
        return names

    def index(self, ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every known model: loaded versions and repository folders."""
        rows: list[tuple[str, str, str, str]] = []
        names = set(self._models) | set(self._failed)
        repo_models = {}
        try:
            repo_models = self.repository_models({})
        except ModelportError:
            pass
        names |= set(repo_models)
        for name in sorted(names):
            versions = self._models.get(name)
            if versions:
                for v, mv in sorted(versions.items()):
                    rows.append((name, str(v), mv.state, mv.reason))
            elif not ready_only:
                rows.append((name, "", UNAVAILABLE, self._failed.get(name, "unloaded")))
        if ready_only:
            rows = [r for r in rows if r[2] == READY]
        return rows


def resolve_artifact(store, stored, name: str) -> tuple[Path, mc.ModelConfig | None]:
    """The ONNX file (and config.pbtxt, if any) inside a stored artifact.

    A plain ONNX artifact is used as is; an archive (model-repository bundle) is unpacked once
    and searched for ``<name>/<version>/model.onnx`` (highest version), else its only .onnx file.
    """
    from modelport import media

    is_archive = stored.media_type.endswith("+tar") or stored.media_type == media.TAR
    if not is_archive:
        return Path(stored.path), None
    folder = Path(store.unpacked(stored.digest))
    files = sorted(folder.rglob("*.onnx"))
    if not files:
        raise InvalidArgument(f"artifact {stored.digest} holds no .onnx file; send an ONNX model or a "
                              "model-repository archive", {"digest": stored.digest})
    named = [f for f in files if f.parent.name.isdigit() and f.parent.parent.name == name]
    if named:
        chosen = max(named, key=lambda f: int(f.parent.name))
    elif len(files) == 1:
        chosen = files[0]
    else:
        raise InvalidArgument(
            f"artifact {stored.digest} holds {len(files)} .onnx files and none at '{name}/<version>/'; name the "
            "model after its repository folder", {"digest": stored.digest})
    cfg_path = chosen.parent.parent / repository.CONFIG_FILE
    return chosen, (repository.read_config(cfg_path) if cfg_path.is_file() else None)
