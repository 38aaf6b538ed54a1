"""Content-addressed artifact store on the local file system.

Layout under ``root``::

    blobs/sha256/<hex>        the bytes, immutable, visible only once verified
    meta/sha256/<hex>.json    media type and size
    unpacked/sha256/<hex>/    archives unpacked once, on demand
    tmp/                      in-flight writes (temp file + fsync + rename), job work folders; names
                              carry their owner process (``modelport.tmpfiles``) so a restart sweeps
                              what a killed process left

Several processes (a service and its workers, or services sharing a volume) may use one
root at once: every publish is an atomic rename, and identical content lands on one name.
This module never imports grpc.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from modelport import media, tmpfiles
from modelport.errors import InvalidArgument, NotFound, ResourceExhausted

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
DEFAULT_CHUNK = 1 << 20
TMP_MAX_AGE_S = 6 * 3600.0
"""Entries of tmp/ untouched this long are leftovers of a killed process (swept at service start)."""

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: OSError, what: str) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED for a write the store's disk (or quota) has no room for."""
    return ResourceExhausted(
        f"the artifact store's disk is full ({os.strerror(exc.errno)}) while {what}; nothing was stored. "
        "Free space on the store's volume (or make it larger, or move the store: setting store) and retry",
        {"reason": "disk_full"},
    )


_NO_SPACE_TEXT = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


def disk_full_error(exc: BaseException, scratch_root: str = "") -> ResourceExhausted | None:
    """RESOURCE_EXHAUSTED for a job that ran out of disk (an ENOSPC/EDQUOT anywhere in the exception's
    chain, or a library error quoting it), naming where: the worker's temp folder or the artifact store
    (job work folders live in the store's tmp/). None for any other error."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            if scratch_root and str(e.filename or "").startswith(scratch_root):
                return ResourceExhausted(
                    f"the worker's temp folder is full ({os.strerror(e.errno)}) while running the job; nothing "
                    "was stored. Free space where TMPDIR points (or point TMPDIR at a larger volume) and retry",
                    {"reason": "disk_full"})
            return disk_full(e, "running the job")
        if any(t in str(e) for t in _NO_SPACE_TEXT):
            return disk_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "running the job")
        e = e.__cause__ or e.__context__
    return None


def check_digest(digest: str) -> str:
    """Return the hex part of a well-formed ``sha256:<hex>`` digest or raise InvalidArgument."""
    if not _DIGEST_RE.match(digest or ""):
        shown = repr((digest or "")[:80]) + ("..." if len(digest or "") > 80 else "")
        raise InvalidArgument(
            f"malformed digest {shown}: expected 'sha256:' followed by 64 lowercase hex characters"
        )
    return digest.split(":", 1)[1]


def sha256_file(path: Path, chunk: int = DEFAULT_CHUNK) -> str:
    """The ``sha256:<hex>`` digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class StoredArtifact:
    """An artifact present in a store."""

    digest: str
    size: int
    media_type: str
    path: Path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactWriter:
    """Streams bytes into a temp file, hashing as it goes; ``commit`` verifies and publishes.

    Nothing is visible under the digest until ``commit`` succeeds; ``abort`` (or leaving a
    ``with`` block by an exception) removes the temp file.
    """

    def __init__(self, store: ArtifactStore, media_type: str, expected_digest: str = "", expected_size: int = 0):
        if expected_digest:
            check_digest(expected_digest)
        if expected_size < 0:
            raise InvalidArgument(f"expected_size must be >= 0, got {expected_size}")
        if store.max_artifact_bytes and expected_size > store.max_artifact_bytes:
            raise ResourceExhausted(
                f"artifact of {expected_size} bytes exceeds the per-artifact cap of "
                f"{store.max_artifact_bytes} bytes (setting max_artifact_bytes)"
            )
        self._store = store
        self.media_type = media_type or media.OCTET
        self.expected_digest = expected_digest
        self.expected_size = expected_size
        self._hash = hashlib.sha256()
        self.size = 0
        fd, tmp = tempfile.mkstemp(dir=store.tmp_dir, prefix=tmpfiles.prefix("upload"))
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._done = False

    def write(self, chunk: bytes) -> None:
        """Append a chunk; raises ResourceExhausted past the store's cap (and aborts)."""
        if self._done:
            raise InvalidArgument("write after commit/abort")
        self.size += len(chunk)
        cap = self._store.max_artifact_bytes
        if cap and self.size > cap:
            self.abort()
            raise ResourceExhausted(
                f"artifact exceeds the per-artifact cap of {cap} bytes (setting max_artifact_bytes)"
            )
        if self.expected_size and self.size > self.expected_size:
            self.abort()
            raise InvalidArgument(f"received more than the announced {self.expected_size} bytes")
        self._hash.update(chunk)
        try:
            self._file.write(chunk)
        except OSError as e:
            self.abort()
            if e.errno in _DISK_FULL:
                raise disk_full(e, "receiving an artifact") from None
            raise

    def commit(self) -> StoredArtifact:
        """Verify digest and size, fsync, and atomically publish. Returns the stored artifact."""
        if self._done:
            raise InvalidArgument("commit after commit/abort")
        digest = "sha256:" + self._hash.hexdigest()
        try:
            if self.expected_size and self.size != self.expected_size:
                raise InvalidArgument(
                    f"upload ended after {self.size} bytes but {self.expected_size} were announced"
                )
            if self.expected_digest and digest != self.expected_digest:
                raise InvalidArgument(
                    f"content digest {digest} does not match the expected {self.expected_digest}; "
                    "nothing was stored (check the file was not modified or truncated)"
                )
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as e:
            self.abort()
            if e.errno in _DISK_FULL:
                raise disk_full(e, "writing an artifact") from None
            raise
        except BaseException:
            self.abort()
            raise
        self._done = True
        try:
            return self._store._publish(self._tmp, digest, self.size, self.media_type)
        except OSError as e:
            if e.errno in _DISK_FULL:
                raise disk_full(e, "publishing an artifact") from None
            raise
        finally:
            self._tmp.unlink(missing_ok=True)  # published (renamed away) or failed: never left behind

    def abort(self) -> None:
        """Drop everything written so far."""
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


class ArtifactStore:
    """A content-addressed store rooted at a directory (shared safely between processes)."""

    def __init__(self, root: str | os.PathLike, max_artifact_bytes: int = 0):
        self.root = Path(root)
        self.max_artifact_bytes = max_artifact_bytes
        self.blob_dir = self.root / "blobs" / "sha256"
        self.meta_dir = self.root / "meta" / "sha256"
        self.unpacked_dir = self.root / "unpacked" / "sha256"
        self.tmp_dir = self.root / "tmp"
        for d in (self.blob_dir, self.meta_dir, self.unpacked_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ---- reading -------------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        return (self.blob_dir / check_digest(digest)).is_file()

    def stat(self, digest: str) -> StoredArtifact:
        """The stored artifact, or NotFound."""
        hexd = check_digest(digest)
        path = self.blob_dir / hexd
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise NotFound(f"artifact {digest} is not in this store; upload it first") from None
        media_type = media.OCTET
        meta = self.meta_dir / f"{hexd}.json"
        if meta.is_file():
            media_type = json.loads(meta.read_text()).get("media_type", media.OCTET)
        return StoredArtifact(digest=digest, size=size, media_type=media_type, path=path)

    def path(self, digest: str) -> Path:
        return self.stat(digest).path

    def iter_chunks(self, digest: str, offset: int = 0, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """Yield the artifact's bytes from ``offset`` in chunks of at most ``chunk_size``."""
        art = self.stat(digest)
        if offset < 0 or offset > art.size:
            raise InvalidArgument(f"offset {offset} is outside the artifact (size {art.size})")
        with open(art.path, "rb") as f:
            f.seek(offset)
            while block := f.read(chunk_size):
                yield block

    def mkdtemp(self, kind: str) -> Path:
        """A new work folder under tmp/ named for its owner process (swept once that process is gone)."""
        return Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix=tmpfiles.prefix(kind)))

    def sweep_tmp(self, max_age_s: float = TMP_MAX_AGE_S) -> int:
        """Remove what killed processes left in tmp/ (temp blobs, unpack staging, job work folders).

        Run at service start. An entry goes when its name says its owner was a process of this machine
        that no longer runs (``modelport.tmpfiles``), or when it was not modified for ``max_age_s``
        (entries of other machines sharing the volume, or untagged). The in-flight writes of live
        processes sharing this store stay. Returns how many went.
        """
        cutoff = time.time() - max_age_s
        removed = 0
        try:
            entries = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if not tmpfiles.stale(entry.name) and entry.stat(follow_symlinks=False).st_mtime > cutoff:
                    continue
            except OSError:
                continue  # gone meanwhile: nothing to sweep
            removed += tmpfiles.remove_entry(entry)
        return removed

    # ---- writing -------------------------------------------------------------------------
    def writer(self, media_type: str, expected_digest: str = "", expected_size: int = 0) -> ArtifactWriter:
        return ArtifactWriter(self, media_type, expected_digest, expected_size)

    def put_chunks(self, chunks: Iterable[bytes], media_type: str, expected_digest: str = "") -> StoredArtifact:
        with self.writer(media_type, expected_digest) as w:
            for c in chunks:
                w.write(c)
            return w.commit()

    def put_bytes(self, data: bytes, media_type: str) -> StoredArtifact:
        return self.put_chunks([data], media_type)

    def put_file(self, path: str | os.PathLike, media_type: str) -> StoredArtifact:
        """Copy a file into the store (streamed)."""

        def chunks():
            with open(path, "rb") as f:
                while block := f.read(DEFAULT_CHUNK):
                    yield block

        return self.put_chunks(chunks(), media_type)

    def put_dir(self, directory: str | os.PathLike, media_type: str) -> StoredArtifact:
        """Pack a folder (e.g. a SavedModel) as one deterministic tar artifact, streamed (no temp archive)."""
        from modelport.archive import TarStream

        return self.put_chunks(TarStream.of_dir(Path(directory)), media_type)

    def put_onnx(self, model_path: str | os.PathLike) -> StoredArtifact:
        """Store an ONNX model: a self-contained file as ``media.ONNX``; one with external data as one
        folder artifact (``media.ONNX_FOLDER``: ``model.onnx`` + its data files, streamed)."""
        from modelport.archive import TarStream
        from modelport.onnx_files import model_files

        files = model_files(model_path)
        if len(files) == 1:
            return self.put_file(model_path, media.ONNX)
        return self.put_chunks(TarStream.of_files(files), media.ONNX_FOLDER)

    def unpacked(self, digest: str, max_bytes: int = 8 << 30, max_files: int = 10_000) -> Path:
        """Unpack an archive artifact once (safely) and return the folder."""
        from modelport.archive import safe_unpack

        art = self.stat(digest)
        dest = self.unpacked_dir / check_digest(digest)
        if dest.is_dir():
            return dest
        staging = self.mkdtemp("unpack")
        try:
            safe_unpack(art.path, staging, max_bytes=max_bytes, max_files=max_files)
            try:
                os.rename(staging, dest)
            except OSError:
                if not dest.is_dir():  # lost a race to a twin: theirs is identical
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return dest

    def onnx_model(self, digest: str) -> Path:
        """The ONNX file of an artifact: the file itself, or ``model.onnx`` inside an ONNX folder archive
        (unpacked once, its data file(s) beside it)."""
        from modelport.archive import is_tar
        from modelport.onnx_files import find_model_file

        path = self.path(digest)
        return find_model_file(self.unpacked(digest)) if is_tar(path) else path

    def _publish(self, tmp: Path, digest: str, size: int, media_type: str) -> StoredArtifact:
        hexd = check_digest(digest)
        final = self.blob_dir / hexd
        meta = self.meta_dir / f"{hexd}.json"
        if not meta.exists():
            mtmp = self.tmp_dir / f"{tmpfiles.prefix('meta')}{uuid.uuid4().hex}"
            try:
                mtmp.write_text(json.dumps({"media_type": media_type, "size": size}))
                os.replace(mtmp, meta)
            finally:
                mtmp.unlink(missing_ok=True)
        if final.exists():
            tmp.unlink(missing_ok=True)  # same content already published (concurrent twin)
        else:
            os.replace(tmp, final)
            _fsync_dir(self.blob_dir)
        return self.stat(digest)
