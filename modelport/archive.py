"""Multi-file models as one artifact: deterministic tar packing and a defensive unpacker.

Packing streams: ``TarStream`` yields the archive chunk by chunk with its exact size known up
front, so a multi-GB folder goes to a store or over an Upload stream without a temp archive and
without holding any file in memory. Its bytes are what ``tarfile`` writes for the same members.
The unpacker refuses absolute paths, ``..`` components, links that leave the folder,
device files, and archives whose unpacked size or file count passes a cap. The caps apply while the
headers are read, one member at a time: an archive of millions of tiny headers (or a compressed one
that inflates to them) is refused after ``max_files`` members, never listed whole into memory.
Each member also passes ``tarfile.data_filter`` (the standard library's rules for untrusted data).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from modelport.errors import InvalidArgument, ResourceExhausted

CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


def _clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class TarStream:
    """An uncompressed PAX tar of (TarInfo, file or None) entries, produced lazily.

    ``size`` is the archive's exact length before any byte is produced; iterating yields chunks of
    ``chunk`` bytes, give or take a header (headers, file contents read a chunk at a time, padding,
    end blocks), so memory stays at about one chunk whatever the files' sizes.
    A file that changes size while it is streamed raises InvalidArgument.
    """

    def __init__(self, entries: Iterable[tuple[tarfile.TarInfo, Path | None]], chunk: int = CHUNK):
        self.chunk = chunk
        self._entries = [(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"), info, path)
                         for info, path in entries]
        body = sum(len(h) + (-(-info.size // _BLOCK) * _BLOCK if info.isreg() else 0)
                   for h, info, _ in self._entries) + 2 * _BLOCK
        self.size = -(-body // _RECORD) * _RECORD

    @classmethod
    def of_files(cls, files: Iterable[tuple[str, Path]], chunk: int = CHUNK) -> TarStream:
        """Regular files under archive names, with normalized metadata (0644, owner 0, mtime 0), so the
        same content always packs to the same bytes wherever it comes from."""
        entries = []
        for arcname, path in files:
            info = tarfile.TarInfo(arcname)
            info.size = Path(path).stat().st_size
            info.mode = 0o644
            entries.append((_clean(info), Path(path)))
        return cls(entries, chunk)

    @classmethod
    def of_dir(cls, directory: Path, chunk: int = CHUNK) -> TarStream:
        """Every entry under ``directory`` (sorted names, file modes kept, owner and times zeroed)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise InvalidArgument(f"{directory} is not a folder")
        maker = tarfile.TarFile(fileobj=io.BytesIO(), mode="w", format=tarfile.PAX_FORMAT)
        entries = []
        for path in sorted(directory.rglob("*")):
            info = _clean(maker.gettarinfo(str(path), arcname=path.relative_to(directory).as_posix()))
            entries.append((info, path if info.isreg() else None))
        return cls(entries, chunk)

    def __iter__(self) -> Iterator[bytes]:
        buf = bytearray()
        total = 0  # bytes appended to buf so far
        for header, info, path in self._entries:
            buf += header
            total += len(header)
            if path is None or not info.isreg():
                continue
            left = info.size
            with open(path, "rb") as f:
                while left:
                    if len(buf) >= self.chunk:
                        yield bytes(buf)
                        buf.clear()
                    block = f.read(min(self.chunk, left))
                    if not block:
                        raise InvalidArgument(f"{path} shrank while it was being packed; pack it again")
                    buf += block
                    left -= len(block)
            pad = -info.size % _BLOCK
            buf += b"\0" * pad
            total += info.size + pad
        buf += b"\0" * (self.size - total)  # two end blocks, then zeros up to a whole record
        for start in range(0, len(buf), self.chunk):
            yield bytes(buf[start:start + self.chunk])

    def write_to(self, out: Path) -> None:
        """Write the whole archive to a file."""
        with open(out, "wb") as f:
            for block in self:
                f.write(block)


def is_tar(path: str | os.PathLike) -> bool:
    """Whether a file is a (ustar/PAX/GNU) tar archive, from its first header block."""
    with open(path, "rb") as f:
        head = f.read(_BLOCK)
    return len(head) == _BLOCK and head[257:262] == b"ustar"


def pack_dir(directory: Path, out: Path) -> None:
    """Write ``directory`` as an uncompressed tar with sorted names and zeroed metadata."""
    TarStream.of_dir(Path(directory)).write_to(Path(out))


def _check_member(m: tarfile.TarInfo) -> None:
    p = PurePosixPath(m.name)
    if m.name.startswith("/") or p.is_absolute() or (len(m.name) > 1 and m.name[1] == ":"):
        raise InvalidArgument(f"archive member {m.name!r} has an absolute path; refusing to unpack")
    if ".." in p.parts:
        raise InvalidArgument(f"archive member {m.name!r} contains '..'; refusing to unpack")
    if m.isdev() or m.isfifo():
        raise InvalidArgument(f"archive member {m.name!r} is a device or fifo; refusing to unpack")
    if m.issym() or m.islnk():
        target = PurePosixPath(m.linkname)
        if target.is_absolute():
            raise InvalidArgument(f"link {m.name!r} points to absolute path {m.linkname!r}; refusing to unpack")
        base = p.parent if m.issym() else PurePosixPath(".")
        depth = 0
        for part in (base / target).parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                raise InvalidArgument(
                    f"link {m.name!r} -> {m.linkname!r} leaves the archive folder; refusing to unpack"
                )


def scan_members(tar: tarfile.TarFile, dest: Path, max_bytes: int, max_files: int) -> list[tarfile.TarInfo]:
    """Read the members' headers one at a time, checking each (our rules, then ``tarfile.data_filter``)
    and the running count and size against the caps before the next header is read."""
    members: list[tarfile.TarInfo] = []
    total = 0
    while True:
        try:
            m = tar.next()
        except tarfile.TarError as e:
            raise InvalidArgument(f"the archive is damaged after {len(members)} entries ({e}); re-pack it") from None
        if m is None:
            return members
        if len(members) >= max_files:
            raise ResourceExhausted(f"archive has more than {max_files} entries (the cap); pack fewer files",
                                    {"limit": str(max_files)})
        _check_member(m)
        try:
            tarfile.data_filter(m, str(dest))
        except tarfile.FilterError as e:
            raise InvalidArgument(f"archive member {m.name[:200]!r} is refused ({type(e).__name__}); pack plain "
                                  "files and folders only") from None
        total += max(m.size, 0)
        if total > max_bytes:
            raise ResourceExhausted(f"archive unpacks to more than the cap of {max_bytes} bytes",
                                    {"limit": str(max_bytes)})
        members.append(m)


def safe_unpack(archive: Path, dest: Path, max_bytes: int, max_files: int) -> None:
    """Unpack a tar into ``dest`` after checking every member; raise on the first violation."""
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.TarError as e:
        raise InvalidArgument(f"artifact is not a readable tar archive ({e}); pack folders with tar") from None
    with tar:
        members = scan_members(tar, dest, max_bytes, max_files)
        dest.mkdir(parents=True, exist_ok=True)
        tar.extractall(dest, members=members, filter="data")
    # Second line of defence: nothing may resolve outside dest.
    root = dest.resolve()
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            real = (Path(dirpath) / name).resolve()
            if root != real and root not in real.parents:
                raise InvalidArgument(f"archive entry {name!r} resolves outside the folder; refusing")
