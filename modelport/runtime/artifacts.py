"""The Artifacts gRPC service (embedded in every service) and the client helpers that move
artifacts between a file, a store and a remote service with bounded memory."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import grpc

from modelport.errors import Cancelled, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from modelport.store import DEFAULT_CHUNK, ArtifactStore, StoredArtifact, check_digest
from modelport.trust import OriginPolicy
from modelport.v1 import artifacts_pb2, artifacts_pb2_grpc

log = logging.getLogger("modelport.artifacts")

MAX_CHUNK = 4 << 20


def download_chunk_size(requested: int) -> int:
    """The chunk size a Download streams with: the default for 0 or less, never above MAX_CHUNK."""
    return DEFAULT_CHUNK if requested <= 0 else min(requested, MAX_CHUNK)


def to_ref(art: StoredArtifact, origin: str = "") -> artifacts_pb2.ArtifactRef:
    return artifacts_pb2.ArtifactRef(digest=art.digest, size=art.size, media_type=art.media_type, origin=origin)


class ArtifactsServicer(artifacts_pb2_grpc.ArtifactsServicer):
    """Upload/Download/Stat over a local ArtifactStore."""

    def __init__(self, store: ArtifactStore, advertise: str = ""):
        self.store = store
        self.advertise = advertise

    async def Upload(self, request_iterator, context):
        first = None
        async for msg in request_iterator:
            first = msg
            break
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("the first Upload message must be an UploadHeader (media type, optional digest)")
        h = first.header
        with self.store.writer(h.media_type, h.expected_digest, h.expected_size) as w:
            committed = False
            async for msg in request_iterator:
                part = msg.WhichOneof("part")
                if part == "chunk" and not committed:
                    w.write(msg.chunk)
                elif part == "commit" and msg.commit:
                    committed = True
                else:
                    raise InvalidArgument("after the UploadHeader send chunks, then one final commit message")
            if not committed:
                # A cancelled client stream can end the iterator normally: never publish it.
                raise Cancelled("upload ended without its final commit message (cancelled?); nothing was stored")
            art = w.commit()
        log.info("stored %s (%d bytes, %s)", art.digest, art.size, art.media_type)
        return to_ref(art, self.advertise)

    async def Download(self, request, context):
        art = self.store.stat(request.digest)
        size = download_chunk_size(request.chunk_size)  # read from disk chunk by chunk, never whole
        first = True
        for block in self.store.iter_chunks(request.digest, request.offset, size):
            yield artifacts_pb2.DownloadChunk(ref=to_ref(art, self.advertise) if first else None, data=block)
            first = False
        if first:  # empty artifact (or offset at end): still send the ref
            yield artifacts_pb2.DownloadChunk(ref=to_ref(art, self.advertise))

    async def Stat(self, request, context):
        return to_ref(self.store.stat(request.digest), self.advertise)


ByteProgress = Callable[[int, int], None]
"""Called with (bytes moved so far, total bytes) as a transfer goes."""


def stream_requests(chunks: Iterable[bytes], size: int, media_type: str, expected_digest: str = "",
                    progress: ByteProgress | None = None) -> Iterator[artifacts_pb2.UploadRequest]:
    """The request stream for Upload from lazily produced chunks of ``size`` bytes in all."""
    yield artifacts_pb2.UploadRequest(
        header=artifacts_pb2.UploadHeader(media_type=media_type, expected_digest=expected_digest, expected_size=size)
    )
    done = 0
    if progress is not None:
        progress(0, size)
    for block in chunks:
        yield artifacts_pb2.UploadRequest(chunk=block)
        done += len(block)
        if progress is not None:
            progress(done, size)
    yield artifacts_pb2.UploadRequest(commit=True)


def file_chunks(path: str | os.PathLike, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
    """A file's bytes, read lazily chunk by chunk."""
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            yield block


def upload_requests(path: str | os.PathLike, media_type: str, expected_digest: str = "",
                    chunk_size: int = DEFAULT_CHUNK, progress: ByteProgress | None = None,
                    ) -> Iterator[artifacts_pb2.UploadRequest]:
    """The request stream for Upload from a file, read lazily chunk by chunk."""
    return stream_requests(file_chunks(path, chunk_size), os.path.getsize(path), media_type, expected_digest,
                           progress)


def download_to_file(stub: artifacts_pb2_grpc.ArtifactsStub, digest: str, out: str | os.PathLike,
                     timeout: float | None = None, metadata=(), progress: ByteProgress | None = None,
                     size: int = 0) -> artifacts_pb2.ArtifactRef:
    """Download an artifact into ``out`` atomically (sync client); verifies the digest.

    ``progress`` gets (bytes so far, total): the total is ``size`` or else the size the first chunk's ref names.
    """
    import hashlib

    check_digest(digest)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    h = hashlib.sha256()
    ref = None
    done = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in stub.Download(artifacts_pb2.DownloadRequest(digest=digest), timeout=timeout, metadata=metadata):
                if chunk.HasField("ref"):
                    ref = chunk.ref
                    size = size or ref.size
                h.update(chunk.data)
                f.write(chunk.data)
                done += len(chunk.data)
                if progress is not None:
                    progress(done, size)
        if "sha256:" + h.hexdigest() != digest:
            raise InvalidArgument(f"downloaded bytes do not hash to {digest}")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return ref


async def ensure_local(store: ArtifactStore, ref: artifacts_pb2.ArtifactRef, *, channel_factory=None,
                       timeout: float = 3600, origins: OriginPolicy | None = None) -> StoredArtifact:
    """Return the artifact from the local store, pulling it once from ``ref.origin`` if absent.

    With ``origins`` (what services pass) an origin outside the policy is refused before any
    connection. ``ref.size``, when set, is enforced while pulling (an origin that sends more is cut
    off); the digest is verified before the artifact becomes visible. Errors name the origin and the
    status code only, never what the origin said. ``channel_factory(address)`` returns a grpc.aio
    channel (TLS/token aware); by default an insecure one.
    """
    if not ref.digest:
        raise InvalidArgument("an ArtifactRef is required (empty digest); upload the model first")
    check_digest(ref.digest)
    if store.has(ref.digest):
        return store.stat(ref.digest)
    if not ref.origin:
        raise NotFound(
            f"artifact {ref.digest} is not in this service's store and the ref names no origin; "
            "upload it to this service or set ArtifactRef.origin"
        )
    if origins is not None:
        origins.check(ref.origin)
    if ref.size < 0:
        raise InvalidArgument(f"ArtifactRef.size must be >= 0 (0 = unknown), got {ref.size}")
    from modelport.runtime.channels import make_channel

    log.info("pulling %s from %s", ref.digest, ref.origin)
    # The writer refuses a size past the store's cap before we connect, and the announced size while pulling.
    writer = store.writer(ref.media_type, expected_digest=ref.digest, expected_size=ref.size)
    channel = channel_factory(ref.origin) if channel_factory else make_channel(ref.origin, aio=True)
    try:
        stub = artifacts_pb2_grpc.ArtifactsStub(channel)
        with writer as w:
            media_type = ref.media_type
            async for chunk in stub.Download(artifacts_pb2.DownloadRequest(digest=ref.digest), timeout=timeout):
                if chunk.HasField("ref") and chunk.ref.media_type:
                    media_type = chunk.ref.media_type
                try:
                    w.write(chunk.data)
                except InvalidArgument:
                    raise InvalidArgument(
                        f"origin {ref.origin} sent more than ArtifactRef.size ({ref.size} bytes) for {ref.digest}; "
                        "the pull was stopped and nothing was stored (fix the ref's size)") from None
            w.media_type = media_type
            try:
                return w.commit()
            except InvalidArgument:
                raise InvalidArgument(
                    f"what origin {ref.origin} sent for {ref.digest} does not match the ref (its size "
                    f"{ref.size or 'unknown'} or its digest); nothing was stored") from None
    except ResourceExhausted:
        raise
    except grpc.aio.AioRpcError as e:
        # Name the status code only: what the origin said (its details) is not ours to relay.
        if e.code() == grpc.StatusCode.NOT_FOUND:
            raise NotFound(f"artifact {ref.digest} is not at its origin {ref.origin} either") from None
        raise Unavailable(
            f"could not pull {ref.digest} from origin {ref.origin} ({e.code().name}); check the origin "
            "is up and reachable from this service, or upload the artifact here"
        ) from None
    finally:
        writer.abort()  # no-op after a commit; otherwise the temp file goes
        await channel.close()
