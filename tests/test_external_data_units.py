"""ONNX with external data as files and artifacts, without servers: finding and checking a model's data
files, packing (TarStream), what ``Client.upload`` sends for each kind of path, content detection, the
store, Triton-layout repositories and the optimizer's size measurements."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from extdata_fixtures import DATA, embedding_model, embedding_reference

from modelport import formats, media, repository
from modelport.archive import TarStream, is_tar, pack_dir
from modelport.client import upload_source
from modelport.errors import InvalidArgument
from modelport.onnx_files import (
    copy_data_beside,
    copy_model,
    external_data_files,
    find_model_file,
    model_bytes,
    model_files,
    save,
)
from modelport.store import ArtifactStore
from optimizer_svc import measure as M

VOCAB, DIM, OUT = 3000, 32, 8
IDS = np.array([[1, 5, 2999], [0, 4093 % VOCAB, 3]], np.int64)


@pytest.fixture
def ext_model(tmp_path):
    return embedding_model(tmp_path / "src", VOCAB, DIM, OUT)


def _run(model_path) -> np.ndarray:
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"ids": IDS})[0]


def _sha(chunks) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return "sha256:" + h.hexdigest()


# ---- packing --------------------------------------------------------------------------------------

def test_tar_stream_is_byte_identical_to_tarfile_with_exact_size_and_bounded_chunks(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x.bin").write_bytes(os.urandom(3000))
    (d / "b.txt").write_text("hi")
    (d / "empty").write_bytes(b"")
    (d / "big").write_bytes(os.urandom(300_000 + 7))
    (d / ("n" * 150)).write_text("a name longer than ustar's 100 characters")
    os.symlink("b.txt", d / "link")
    ref = tmp_path / "ref.tar"

    def clean(info):
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with tarfile.open(ref, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(d.rglob("*")):
            tar.add(path, arcname=path.relative_to(d).as_posix(), recursive=False, filter=clean)
    stream = TarStream.of_dir(d, chunk=64 * 1024)
    chunks = list(stream)
    assert b"".join(chunks) == ref.read_bytes() and stream.size == ref.stat().st_size
    assert max(len(c) for c in chunks) <= 64 * 1024 + 4 * tarfile.BLOCKSIZE  # a chunk plus at most a header
    pack_dir(d, tmp_path / "packed.tar")
    assert (tmp_path / "packed.tar").read_bytes() == ref.read_bytes()
    assert is_tar(ref) and not is_tar(d / "b.txt")


def test_tar_stream_refuses_a_file_that_shrinks_while_streamed(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 5000)
    stream = TarStream.of_files([("w.bin", f)], chunk=1024)
    f.write_bytes(b"x" * 10)
    with pytest.raises(InvalidArgument, match="shrank while it was being packed"):
        list(stream)


# ---- a model's files ------------------------------------------------------------------------------

def test_data_files_are_found_from_the_graph_and_checked(ext_model, tmp_path):
    assert external_data_files(ext_model) == [DATA]
    assert [n for n, _ in model_files(ext_model)] == ["model.onnx", DATA]
    assert model_bytes(ext_model) == ext_model.stat().st_size + (ext_model.parent / DATA).stat().st_size

    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.onnx").write_bytes(ext_model.read_bytes())
    with pytest.raises(InvalidArgument, match=r"model.onnx.data is not beside it .*put the data file\(s\) next to"):
        external_data_files(alone / "model.onnx")

    m = onnx.load(str(ext_model), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../escape.data"
    onnx.save(m, str(tmp_path / "evil.onnx"))
    with pytest.raises(InvalidArgument, match="outside the model's folder"):
        external_data_files(tmp_path / "evil.onnx")

    self_contained = tmp_path / "inline.onnx"
    onnx.save(onnx.load(str(ext_model)), str(self_contained))
    assert external_data_files(self_contained) == []
    with pytest.raises(InvalidArgument, match="is not a readable ONNX model"):
        external_data_files(tmp_path / "src" / DATA)


def test_find_model_file(tmp_path, ext_model):
    assert find_model_file(ext_model.parent) == ext_model
    (tmp_path / "one" / "sub").mkdir(parents=True)
    (tmp_path / "one" / "sub" / "net.onnx").write_bytes(b"x")
    assert find_model_file(tmp_path / "one") == tmp_path / "one" / "sub" / "net.onnx"
    (tmp_path / "one" / "b.onnx").write_bytes(b"x")
    with pytest.raises(InvalidArgument, match="holds 2 .onnx files"):
        find_model_file(tmp_path / "one")
    (tmp_path / "none").mkdir()
    with pytest.raises(InvalidArgument, match="holds no .onnx file"):
        find_model_file(tmp_path / "none")


def test_copies_keep_the_data_beside_the_model(ext_model, tmp_path):
    copied = copy_model(ext_model, tmp_path / "copy", "renamed.onnx")
    assert sorted(p.name for p in copied.parent.iterdir()) == [DATA, "renamed.onnx"]
    assert os.stat(copied.parent / DATA).st_nlink == 1  # a copy: onnx refuses hard-linked data files
    np.testing.assert_allclose(_run(copied), embedding_reference(IDS, DIM, OUT), rtol=1e-5, atol=1e-6)

    rewritten = tmp_path / "rewritten" / "model.onnx"
    rewritten.parent.mkdir()
    m = onnx.load(str(ext_model), load_external_data=False)
    m.producer_name = "rewritten"
    onnx.save(m, str(rewritten))
    assert copy_data_beside(ext_model, rewritten) == [DATA]
    np.testing.assert_allclose(_run(rewritten), embedding_reference(IDS, DIM, OUT), rtol=1e-5, atol=1e-6)


def test_save_chooses_external_data_on_request(ext_model, tmp_path):
    model = onnx.load(str(ext_model))  # weights read into memory
    inline = save(model, tmp_path / "a" / "model.onnx")
    assert external_data_files(inline) == []
    ext = save(model, tmp_path / "b" / "model.onnx", external=True)
    assert external_data_files(ext) == ["model.onnx.data"]
    np.testing.assert_allclose(_run(ext), _run(inline))


# ---- what an upload sends -------------------------------------------------------------------------

def test_upload_source_packs_model_and_data_the_same_from_a_folder_or_the_file(ext_model, tmp_path):
    from_folder = upload_source(ext_model.parent)
    from_file = upload_source(ext_model)
    assert from_folder.media_type == from_file.media_type == media.ONNX_FOLDER
    assert from_folder.size == from_file.size and _sha(from_folder.chunks) == _sha(from_file.chunks)
    with tarfile.open(fileobj=io.BytesIO(b"".join(upload_source(ext_model).chunks))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["model.onnx", DATA]
        assert members[DATA].size == (ext_model.parent / DATA).stat().st_size
        assert {m.mode for m in members.values()} == {0o644} and {m.mtime for m in members.values()} == {0}

    # the .onnx file under another name: packed as model.onnx all the same
    other = copy_model(ext_model, tmp_path / "other", "encoder.onnx")
    assert _sha(upload_source(other).chunks) == _sha(upload_source(ext_model).chunks)

    inline = tmp_path / "inline" / "model.onnx"
    save(onnx.load(str(ext_model)), inline)
    for path in (inline, inline.parent):
        src = upload_source(path)
        assert src.media_type == media.ONNX and src.size == inline.stat().st_size

    saved = tmp_path / "saved"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"pb")
    assert upload_source(saved).media_type == media.SAVEDMODEL

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(InvalidArgument, match="without saved_model.pb or a .onnx file"):
        upload_source(tmp_path / "junk")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    src = upload_source(garbage)  # sent as is: the service that reads it names what it is
    assert src.media_type == media.ONNX and src.size == len(b"not a protobuf")
    (ext_model.parent / DATA).unlink()
    with pytest.raises(InvalidArgument, match="model.onnx.data is not beside it"):
        upload_source(ext_model)


def test_big_self_contained_files_are_scanned_not_parsed(tmp_path, monkeypatch):
    import modelport.onnx_files as of

    monkeypatch.setattr(of, "_SCAN_ABOVE", 1000)
    blob = tmp_path / "weights.onnx"
    blob.write_bytes(os.urandom(5000))  # not even ONNX: the scan finds no external-data marker
    assert of.external_data_files(blob) == []
    src = upload_source(blob)
    assert src.media_type == media.ONNX and src.size == 5000


# ---- store, detection -----------------------------------------------------------------------------

def test_store_keeps_the_model_and_its_data_together(ext_model, tmp_path):
    store = ArtifactStore(tmp_path / "store")
    art = store.put_onnx(ext_model)
    assert art.media_type == media.ONNX_FOLDER
    assert art.digest == _sha(upload_source(ext_model).chunks)  # converter output == the same model uploaded
    assert formats.detect_format(art.path) == formats.ONNX and formats.is_archive(art.path)
    model = store.onnx_model(art.digest)
    assert model.name == "model.onnx" and (model.parent / DATA).is_file()
    np.testing.assert_allclose(_run(model), embedding_reference(IDS, DIM, OUT), rtol=1e-5, atol=1e-6)

    inline = save(onnx.load(str(ext_model)), tmp_path / "inline.onnx")
    plain = store.put_onnx(inline)
    assert plain.media_type == media.ONNX and store.onnx_model(plain.digest) == plain.path

    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as tar:
        tar.add(ext_model.parent / DATA, arcname="weights.bin")
    with pytest.raises(InvalidArgument, match="without saved_model.pb or a .onnx file"):
        formats.detect_format(other)


# ---- repository -----------------------------------------------------------------------------------

def test_repository_version_holds_model_and_data(ext_model, tmp_path):
    cfg = repository.config_from_onnx("emb", ext_model, max_batch_size=4)
    written = repository.write_model(tmp_path / "repo", "emb", 3, ext_model, cfg)
    assert written == tmp_path / "repo" / "emb" / "3" / "model.onnx"
    assert sorted(p.name for p in written.parent.iterdir()) == ["model.onnx", DATA]
    assert os.stat(written.parent / DATA).st_nlink == 1
    found = repository.scan(tmp_path / "repo")
    assert found["emb"].versions == {3: written}
    np.testing.assert_allclose(_run(written), embedding_reference(IDS, DIM, OUT), rtol=1e-5, atol=1e-6)


# ---- optimizer measurements -----------------------------------------------------------------------

def test_sizes_count_the_data_file_and_gzip_streams_or_samples(ext_model, monkeypatch):
    files = [ext_model, ext_model.parent / DATA]
    assert M.model_size(ext_model) == sum(p.stat().st_size for p in files)
    exact, how = M.gzip_size(ext_model)
    assert how == "exact"
    assert exact == len(gzip.compress(b"".join(p.read_bytes() for p in files), compresslevel=9))
    monkeypatch.setattr(M, "GZIP_EXACT_MAX", 1000)
    estimate, how = M.gzip_size(ext_model)
    assert how == "estimated from 64 blocks of 1 MiB"
    assert estimate == pytest.approx(exact, rel=0.15)
