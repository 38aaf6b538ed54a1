"""Format detection from content (no TensorFlow) and the converter's import isolation."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile

import pytest

from modelport import formats
from modelport.errors import InvalidArgument


def _onnx_bytes() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_each_format_is_detected_from_content_not_name(tmp_path):
    cases = {}
    p = tmp_path / "a.bin"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
    cases[p] = "keras"
    p = tmp_path / "b.onnx"  # misleading name
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    cases[p] = "h5"
    p = tmp_path / "c.keras"
    p.write_bytes(b"\0" * 512 + b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # HDF5 after a 512-byte user block
    cases[p] = "h5"
    p = tmp_path / "d"
    with tarfile.open(p, "w") as tar:
        for name in ("model/saved_model.pb", "model/variables/variables.index"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    cases[p] = "savedmodel"
    p = tmp_path / "e.tflite.h5"
    p.write_bytes(_onnx_bytes())
    cases[p] = "onnx"
    for path, fmt in cases.items():
        assert formats.detect_format(path) == fmt, path


@pytest.mark.parametrize("content,message", [
    (b"", "empty (0 bytes)"),
    (b"GIF89a" + b"\0" * 40, "unrecognized model content: first bytes '47 49 46 38 39 61"),
    (b"\x1c\x00\x00\x00TFL3" + bytes(range(40)), "flatbuffer is corrupted or truncated"),
])
def test_unknown_or_corrupt_content_names_what_was_found(tmp_path, content, message):
    p = tmp_path / "m.onnx"
    p.write_bytes(content)
    with pytest.raises(InvalidArgument) as e:
        formats.detect_format(p)
    assert message in e.value.message


def test_archives_without_a_model_say_what_they_hold(tmp_path):
    z = tmp_path / "z"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("weights.bin", "x")
    with pytest.raises(InvalidArgument, match=r"zip archive without config.json \(found \['weights.bin'\]\)"):
        formats.detect_format(z)
    t = tmp_path / "t"
    with tarfile.open(t, "w") as tar:
        info = tarfile.TarInfo("readme.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(InvalidArgument, match="tar archive without saved_model.pb"):
        formats.detect_format(t)


def test_target_checks_list_supported_targets():
    assert formats.check_target("keras", " ONNX ") == "onnx"
    with pytest.raises(InvalidArgument, match="supported targets for tflite: onnx, pytorch$"):
        formats.check_target("tflite", "tflite")
    with pytest.raises(InvalidArgument, match="choose one of onnx, tflite, savedmodel, pytorch"):
        formats.check_target("keras", "torchscript")


def test_converter_service_process_does_not_import_tensorflow():
    code = ("import sys; import converter_svc.service, converter_svc.servicer, converter_svc.plan, "
            "modelport.conversion.convert, modelport.conversion.models; "
            "bad = [m for m in ('tensorflow', 'tf2onnx', 'keras', 'tf_keras') if m in sys.modules]; "
            "assert not bad, bad; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
