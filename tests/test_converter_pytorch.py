"""TensorFlow (and ONNX, TFLite...) -> PyTorch through the converter service: a torch.export program a PyTorch
user loads without modelport, parity-checked against the source; missing operators are named.

The conversion and the program's runs happen in ``.venv-onnx2torch`` (torch CPU + onnx2torch, built by
``make onnx2torch-venv``); without it these tests fail saying so (``MODELPORT_SKIP_ONNX2TORCH=1`` skips them,
reported).
"""

from __future__ import annotations

import json
import subprocess

import grpc
import numpy as np
import onnx
import pytest
import tf_models
from converter_fixtures import *  # noqa: F403 - fixtures: converter_server, conv
from onnx import TensorProto, helper
from tool_venvs import require_onnx2torch

from modelport import formats
from modelport.errors import InvalidArgument

pytestmark = pytest.mark.integration

# Run by the onnx2torch venv's python with -I: no modelport on the path, only torch.
LOAD_AND_RUN = """
import json, sys
import numpy as np, torch
program = torch.export.load(sys.argv[1]).module()
with np.load(sys.argv[2]) as z:
    feeds = [torch.from_numpy(z[k]) for k in json.loads(sys.argv[3])]
out = program(*feeds)
out = [out] if isinstance(out, torch.Tensor) else list(out)
np.savez(sys.argv[4], *[o.detach().numpy() for o in out])
print(json.dumps({"modelport_imported": "modelport" in sys.modules}))
"""


def _result(events):
    assert events[-1].stage == "done" and events[-1].HasField("convert_result"), events[-1]
    return events[-1].convert_result


def _run_in_torch(python, pt2, feeds: dict, order: list[str], tmp_path) -> list[np.ndarray]:
    np.savez(tmp_path / "feeds.npz", **feeds)
    p = subprocess.run([str(python), "-I", "-c", LOAD_AND_RUN, str(pt2), str(tmp_path / "feeds.npz"),
                        json.dumps(order), str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"modelport_imported": False}
    with np.load(tmp_path / "out.npz") as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def test_keras_to_pytorch_is_a_torch_export_program_that_matches_keras(conv, converter_server, tmp_path):
    python = require_onnx2torch()
    model = tf_models.conv_net()
    path = tf_models.save_keras(model, tmp_path / "conv.keras")
    res = _result(conv.convert(conv.upload(path), "pytorch"))
    assert res.info.format == "pytorch" and res.source_info.format == "keras"
    assert res.artifact.media_type == "application/vnd.modelport.pytorch+pt2"
    assert res.parity.passed and res.parity.samples == 8, res.parity
    assert res.parity.outputs[0].max_abs_diff < 1e-5
    d = res.info.details
    assert d["tool"] == "onnx2torch 1.5.15" and d["torch"].startswith("2.13.0") and d["via"] == "onnx (opset 17)"
    assert d["export"].startswith("torch.export")
    assert [(t.name, t.datatype, list(t.shape)) for t in res.info.inputs] == [("image", "FP32", [-1, 16, 16, 3])]
    # A PyTorch user's side: torch.export.load, no modelport; a batch size the export never saw.
    pt2 = conv.download(res.artifact, tmp_path / "model.pt2")
    x = np.random.default_rng(1).random((5, 16, 16, 3), dtype=np.float32)
    (got,) = _run_in_torch(python, pt2, {"image": x}, ["image"], tmp_path)
    np.testing.assert_allclose(got, np.asarray(model(x)), rtol=1e-4, atol=1e-5)


def test_onnx_to_pytorch_keeps_inputs_outputs_and_dynamic_batch(conv, converter_server, tmp_path):
    python = require_onnx2torch()
    keras_ref = conv.upload(tf_models.save_keras(tf_models.multi_io(), tmp_path / "multi.keras"))
    onnx_ref = _result(conv.convert(keras_ref, "onnx")).artifact
    res = _result(conv.convert(onnx_ref, "pytorch"))
    assert res.source_info.format == "onnx" and res.parity.passed, res.parity
    assert "via" not in res.info.details  # the ONNX source itself went to onnx2torch
    assert {t.name: list(t.shape) for t in res.info.inputs} == {"numeric": [-1, 6], "category": [-1, 1]}
    assert sorted(o.name for o in res.parity.outputs) == ["cls", "reg"]
    assert all(o.max_abs_diff < 1e-5 for o in res.parity.outputs)
    pt2 = conv.download(res.artifact, tmp_path / "multi.pt2")
    rng = np.random.default_rng(2)
    feeds = {"numeric": rng.random((2, 6), dtype=np.float32), "category": rng.integers(0, 5, (2, 1)).astype(np.int32)}
    order = [t.name for t in res.info.inputs]
    outs = _run_in_torch(python, pt2, feeds, order, tmp_path)
    assert [o.shape for o in outs] == [(2, 4), (2, 1)] or [o.shape for o in outs] == [(2, 1), (2, 4)]


def test_operator_onnx2torch_lacks_is_failed_precondition_naming_it(conv, converter_server, tmp_path):
    require_onnx2torch()
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Hardmax", ["r"], ["y"])], "hm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "hardmax.onnx")
    err, events = conv.convert_error(conv.upload(tmp_path / "hardmax.onnx"), "pytorch")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert "onnx2torch cannot convert these ONNX operators to PyTorch: Hardmax (opset 17)" in err.details()
    assert events[-1].error.details["unsupported_ops"] == "Hardmax (opset 17)"


def test_pytorch_without_the_venv_is_unimplemented(conv, converter_server, tmp_path):
    ref = conv.upload(tf_models.save_keras(tf_models.sequential_dense(), tmp_path / "dense.keras"))
    settings = converter_server.service.settings
    old, settings.onnx2torch_python = settings.onnx2torch_python, "/nonexistent/python"
    try:
        err, events = conv.convert_error(ref, "pytorch")
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED and not events
        assert "make onnx2torch-venv" in err.details() and "onnx2torch_python" in err.details()
    finally:
        settings.onnx2torch_python = old


def test_pytorch_is_a_target_of_every_source_and_never_a_source(tmp_path):
    for source in formats.SOURCE_FORMATS:
        assert formats.check_target(source, "PyTorch") == "pytorch"
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.pt2", "w") as z:  # the layout torch.export.save writes
        z.writestr("m/archive_format", "pt2")
        z.writestr("m/models/model.json", "{}")
    with pytest.raises(InvalidArgument, match="PyTorch program"):
        formats.detect_format(tmp_path / "m.pt2")
