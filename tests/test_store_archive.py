"""Store and archive safety, without a server."""

from __future__ import annotations

import io
import tarfile
import threading

import pytest

from modelport.errors import InvalidArgument, ResourceExhausted
from modelport.store import ArtifactStore, check_digest


def _tar(tmp_path, members):
    """members: list of (TarInfo, bytes|None)."""
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    i = tarfile.TarInfo(name)
    i.size = len(data)
    return i, data


def _link(name, target, sym=True):
    i = tarfile.TarInfo(name)
    i.type = tarfile.SYMTYPE if sym else tarfile.LNKTYPE
    i.linkname = target
    return i, None


def test_digest_format_is_checked():
    with pytest.raises(InvalidArgument, match="malformed digest '../etc'"):
        check_digest("../etc")
    assert check_digest("sha256:" + "a" * 64) == "a" * 64


def test_put_dir_round_trip_and_determinism(tmp_path):
    store = ArtifactStore(tmp_path / "s")
    src = tmp_path / "saved"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"pb")
    (src / "variables" / "v.data").write_bytes(b"data" * 100)
    a = store.put_dir(src, "application/x-tar")
    b = store.put_dir(src, "application/x-tar")
    assert a.digest == b.digest  # deterministic packing
    out = store.unpacked(a.digest)
    assert (out / "saved_model.pb").read_bytes() == b"pb"
    assert (out / "variables" / "v.data").read_bytes() == b"data" * 100


@pytest.mark.parametrize(
    "members, message",
    [
        ([_file("/etc/evil")], "absolute path"),
        ([_file("a/../../evil")], "contains '..'"),
        ([_link("l", "/etc/passwd")], "points to absolute path"),
        ([_link("d/l", "../../outside")], "leaves the archive folder"),
        ([_link("h", "../x", sym=False)], "contains '..'|leaves the archive folder"),
    ],
)
def test_archive_attacks_are_refused(tmp_path, members, message):
    store = ArtifactStore(tmp_path / "s")
    art = store.put_file(_tar(tmp_path, members), "application/x-tar")
    with pytest.raises(InvalidArgument, match=message):
        store.unpacked(art.digest)
    assert list((tmp_path / "s" / "unpacked" / "sha256").iterdir()) == []
    assert list((tmp_path / "s" / "tmp").iterdir()) == []


def test_archive_caps(tmp_path):
    store = ArtifactStore(tmp_path / "s")
    many = store.put_file(_tar(tmp_path, [_file(f"f{i}") for i in range(20)]), "application/x-tar")
    with pytest.raises(ResourceExhausted, match=r"more than 10 entries \(the cap\)"):
        store.unpacked(many.digest, max_files=10)
    (tmp_path / "a.tar").unlink()
    big = store.put_file(_tar(tmp_path, [_file("big", b"0" * 5000)]), "application/x-tar")
    with pytest.raises(ResourceExhausted, match="more than the cap of 1000 bytes"):
        store.unpacked(big.digest, max_bytes=1000)


def test_not_a_tar_is_invalid(tmp_path):
    store = ArtifactStore(tmp_path / "s")
    art = store.put_bytes(b"definitely not a tar" * 50, "application/x-tar")
    with pytest.raises(InvalidArgument, match="not a readable tar archive"):
        store.unpacked(art.digest)


def test_concurrent_identical_writes_are_safe(tmp_path):
    store = ArtifactStore(tmp_path / "s")
    data = b"same" * 100_000
    results, errors = [], []

    def put():
        try:
            results.append(store.put_chunks([data[i:i + 4096] for i in range(0, len(data), 4096)], "x").digest)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1
    assert len(list(store.blob_dir.iterdir())) == 1
    assert list(store.tmp_dir.iterdir()) == []
    assert store.path(results[0]).read_bytes() == data
