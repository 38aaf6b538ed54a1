"""Multi-file models as one artifact: deterministic tar packing and a defensive unpacker.

The unpacker refuses absolute paths, ``..`` components, links that leave the folder,
device files, and archives whose unpacked size or file count passes a cap. The caps apply while the
headers are read, one member at a time: an archive of millions of tiny headers (or a compressed one
that inflates to them) is refused after ``max_files`` members, never listed whole into memory.
Each member also passes ``tarfile.data_filter`` (the standard library's rules for untrusted data).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath

from modelport.errors import InvalidArgument, ResourceExhausted


def pack_dir(directory: Path, out: Path) -> None:
    """Write ``directory`` as an uncompressed tar with sorted names and zeroed metadata."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidArgument(f"{directory} is not a folder")

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory).as_posix()
            tar.add(path, arcname=rel, recursive=False, filter=clean)


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
