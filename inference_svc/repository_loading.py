"""Loading from a Triton-layout model repository, and models that arrive as artifacts.

``RepositoryLoading`` is the repository half of the ``ModelManager`` (scan, load one model with
its version policy, load all at startup, the repository index); ``resolve_artifact`` finds the
ONNX file (and config) inside a stored artifact. Never imports grpc.
"""

from __future__ import annotations

import logging
from pathlib import Path

from inference_svc.config_mapping import options_from_config
from modelport import repository
from modelport.errors import FailedPrecondition, InvalidArgument, ModelportError, NotFound
from modelport.kserve.v2 import model_config_pb2 as mc
from modelport.trust import check_model_name

log = logging.getLogger("modelport.inference.models")

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"


class RepositoryLoading:
    """The model-repository operations of ``ModelManager`` (which provides ``load``, ``unload``,
    ``versions``, ``repository_root``, ``defaults``, ``_models`` and ``_failed``)."""


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
        check_model_name(name)  # before any path: '..', '/etc', '' never reach the file system
        root = self._repo()
        folder = root / name
        if not folder.is_dir():
            # Not a model of the repository: refused without a trace (never listed, never makes us unready).
            raise NotFound(f"model '{name}' is not in the repository (RepositoryIndex lists its models)",
                           {"model": name})
        try:
            return await self._load_folder(name, folder, config_override)
        except ModelportError as exc:  # a model of the repository that does not load: unavailable
            self._failed[name] = exc.message
            raise

    async def _load_folder(self, name: str, folder: Path, config_override: mc.ModelConfig | None) -> list[int]:
        rm = repository.read_model(folder)
        config = rm.config
        if config_override is not None:  # Triton: an override replaces the repository's config
            config = mc.ModelConfig()
            config.CopyFrom(config_override)
            config.name = name
        if not rm.versions:
            raise NotFound(f"model '{name}' of the repository has no version folder holding "
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

    A plain ONNX artifact is used as is; an archive (an ONNX model with external data, a
    model-repository bundle) is unpacked once in the store and searched for
    ``<name>/<version>/model.onnx`` (highest version), else its only .onnx file. onnxruntime then
    reads (memory-maps) the external data files from beside that file.
    """
    from modelport import media
    from modelport.archive import is_tar

    is_archive = (stored.media_type.endswith("+tar") or stored.media_type == media.TAR
                  or is_tar(stored.path))
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
