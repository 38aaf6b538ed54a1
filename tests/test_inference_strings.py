"""String (BYTES) tensors through the inference service: byte-exact, or INVALID_ARGUMENT naming the element.

String models built with onnx.helper (Identity, StringNormalizer, and ai.onnx.ml LabelEncoder / CategoryMapper)
are served from a Triton-layout repository. tritonclient (its own venv, see test_inference_triton.py) sends raw
BYTES; our codec sends raw and typed ``bytes_contents``. onnxruntime holds strings as UTF-8 text, and its
Python binding turns ``bytes`` into the text of their repr, so an element that is not valid UTF-8 must be
refused naming the tensor and the element, never handed over changed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from inference_fixtures import expect_error
from onnx import TensorProto, helper

from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport.errors import InvalidArgument
from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from modelport.runtime.background import BackgroundServer

ROOT = Path(__file__).resolve().parent.parent
ML_OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]

TEXT = ["plain ascii", "wörld", "日本語のテキスト", "emoji 🎉👍🏽", "", "nul\x00inside", "ü" * 300_000 + "end"]
LOWER_IN = ["ÄÖÜ Straße", "HeLLo", "", "日本", "ÉCOLE"]
LABELS = ["cat", "Katze", "猫", "chat"]
BAD = {  # name -> (elements, index of the bad element, its first bad byte, offset)
    "invalid_start": ([b"ok", b"\xff\xfe", b"x"], 1, 0xFF, 0),
    "truncated": ([b"caf\xc3", b"fine"], 0, 0xC3, 3),
    "overlong": ([b"a", b"b", b"\xc0\xaf"], 2, 0xC0, 0),
    "surrogate": ([b"\xed\xa0\x80"], 0, 0xED, 0),
}


def _save(path: Path, nodes, inputs, outputs) -> None:
    model = helper.make_model(helper.make_graph(nodes, path.parent.parent.name, inputs, outputs), opset_imports=ML_OPSETS)
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def string_repository(root: Path) -> Path:
    """echo (Identity [N]), echo2d (Identity [N, 2]), lower (StringNormalizer), label (LabelEncoder string ->
    int64), category (CategoryMapper int64 -> string)."""
    s = helper.make_tensor_value_info
    _save(root / "echo" / "1" / "model.onnx", [helper.make_node("Identity", ["s"], ["same"])],
          [s("s", TensorProto.STRING, ["N"])], [s("same", TensorProto.STRING, ["N"])])
    (root / "echo" / "config.pbtxt").write_text("max_batch_size: 8\n")
    _save(root / "echo2d" / "1" / "model.onnx", [helper.make_node("Identity", ["s"], ["same"])],
          [s("s", TensorProto.STRING, ["N", 2])], [s("same", TensorProto.STRING, ["N", 2])])
    # C.UTF-8 exists on every glibc system; StringNormalizer's default (en_US.UTF-8) may not.
    _save(root / "lower" / "1" / "model.onnx",
          [helper.make_node("StringNormalizer", ["s"], ["y"], case_change_action="LOWER", locale="C.UTF-8")],
          [s("s", TensorProto.STRING, ["C"])], [s("y", TensorProto.STRING, ["C"])])
    _save(root / "label" / "1" / "model.onnx",
          [helper.make_node("LabelEncoder", ["s"], ["label"], domain="ai.onnx.ml", keys_strings=LABELS,
                            values_int64s=list(range(len(LABELS))), default_int64=-1)],
          [s("s", TensorProto.STRING, ["N"])], [s("label", TensorProto.INT64, ["N"])])
    (root / "label" / "config.pbtxt").write_text("max_batch_size: 8\n")
    _save(root / "category" / "1" / "model.onnx",
          [helper.make_node("CategoryMapper", ["id"], ["name"], domain="ai.onnx.ml", cats_strings=LABELS,
                            cats_int64s=list(range(len(LABELS))), default_string="<unknown>")],
          [s("id", TensorProto.INT64, ["N"])], [s("name", TensorProto.STRING, ["N"])])
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("strings")
    settings = InferenceSettings(port=0, host="127.0.0.1", store=tmp / "store", repository=string_repository(tmp / "repo"))
    with BackgroundServer(InferenceService(settings)) as srv:
        yield srv


@pytest.fixture(scope="module")
def kserve(server):
    with grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 64 << 20),
                                                        ("grpc.max_send_message_length", 64 << 20)]) as ch:
        yield pb_grpc.GRPCInferenceServiceStub(ch)


def _bytes_case(model: str, values: list[bytes], shape=None, name: str = "s") -> dict:
    return {"model": model, "input": name, "datatype": "BYTES", "shape": shape or [len(values)],
            "values": [v.hex() for v in values]}


def _bad_message(index: int, where: list[int], byte: int, offset: int) -> str:
    return f"input 's': BYTES element {index} (index {where}) is not valid UTF-8 (byte 0x{byte:02x} at offset {offset}"


@pytest.fixture(scope="module")
def tritonclient_answers(server, tmp_path_factory):
    """Every case sent once through tritonclient (raw BYTES, as tritonclient always sends)."""
    from test_inference_triton import triton_python

    encoded = [t.encode() for t in TEXT]
    cases = {
        "echo": _bytes_case("echo", encoded),
        "lower": _bytes_case("lower", [t.encode() for t in LOWER_IN]),
        "label": _bytes_case("label", [t.encode() for t in [*LABELS, "", "dog"]]),
        "category": {"model": "category", "input": "id", "datatype": "INT64", "shape": [5], "values": [0, 1, 2, 3, 7]},
        "bad_2d": _bytes_case("echo2d", [b"a", b"b", b"c", b"\xc3("], shape=[2, 2]),
        "bad_label": _bytes_case("label", [b"cat", b"\x80"]),
        **{f"bad_{k}": _bytes_case("echo", v[0]) for k, v in BAD.items()},
    }
    tmp = tmp_path_factory.mktemp("strings-client")
    (tmp / "cases.json").write_text(json.dumps(cases))
    p = subprocess.run([triton_python(), str(ROOT / "tests" / "triton_compat" / "strings_client.py"), server.address,
                        str(tmp / "cases.json"), str(tmp / "out.json")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ""})
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads((tmp / "out.json").read_text())


def _texts(answer: dict, output: str) -> list[bytes]:
    assert "outputs" in answer, answer
    return [bytes.fromhex(v) for v in answer["outputs"][output]["values"]]


def test_tritonclient_strings_round_trip_byte_exact(tritonclient_answers):
    a = tritonclient_answers
    assert _texts(a["echo"], "same") == [t.encode() for t in TEXT]  # ASCII, multi-byte, empty, NUL, 900 kB
    assert a["echo"]["outputs"]["same"]["datatype"] == "BYTES"
    assert _texts(a["lower"], "y") == [t.lower().encode() for t in LOWER_IN]
    assert a["label"]["outputs"]["label"]["values"] == [0, 1, 2, 3, -1, -1]
    assert _texts(a["category"], "name") == [t.encode() for t in [*LABELS, "<unknown>"]]


def test_tritonclient_non_utf8_element_is_invalid_argument_naming_it(tritonclient_answers):
    a = tritonclient_answers
    for key, (_, index, byte, offset) in BAD.items():
        err = a[f"bad_{key}"].get("error")
        assert err and err["status"] == "StatusCode.INVALID_ARGUMENT", (key, a[f"bad_{key}"])
        assert _bad_message(index, [index], byte, offset) in err["message"], err["message"]
    err = a["bad_2d"]["error"]
    assert err["status"] == "StatusCode.INVALID_ARGUMENT" and _bad_message(3, [1, 1], 0xC3, 0) in err["message"]
    assert "send UTF-8 encoded strings" in err["message"]
    err = a["bad_label"]["error"]
    assert err["status"] == "StatusCode.INVALID_ARGUMENT" and _bad_message(1, [1], 0x80, 0) in err["message"]


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "bytes_contents"])
def test_codec_strings_byte_exact_raw_and_typed(kserve, raw):
    encoded = np.array([t.encode() for t in TEXT], dtype=object)
    resp = kserve.ModelInfer(codec.make_infer_request("echo", {"s": encoded}, raw=raw), timeout=60)
    assert resp.outputs[0].datatype == "BYTES" and list(resp.outputs[0].shape) == [len(TEXT)]
    assert codec.decode_outputs(resp)["same"].tolist() == encoded.tolist()
    resp = kserve.ModelInfer(codec.make_infer_request("category", {"id": np.array([2, 0, 9])}, raw=raw), timeout=60)
    assert codec.decode_outputs(resp)["name"].tolist() == ["猫".encode(), b"cat", b"<unknown>"]


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "bytes_contents"])
def test_codec_non_utf8_is_invalid_argument_raw_and_typed(kserve, raw):
    for elements, index, byte, offset in BAD.values():
        req = codec.make_infer_request("echo", {"s": np.array(elements, dtype=object)}, raw=raw)
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, [_bad_message(index, [index], byte, offset)],
                     lambda req=req: kserve.ModelInfer(req, timeout=30))
    req = codec.make_infer_request("echo2d", {"s": np.array([[b"ok", b"\xfe"]], dtype=object)}, raw=raw)
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, [_bad_message(1, [0, 1], 0xFE, 0)],
                 lambda: kserve.ModelInfer(req, timeout=30))


def test_utf8_strings_unit():
    out = codec.utf8_strings("t", np.array([b"a", "b", bytearray(b"\xc3\xa9"), b""], dtype=object))
    assert out.tolist() == ["a", "b", "é", ""] and out.dtype == object
    assert codec.utf8_strings("t", np.zeros((0, 3), dtype=object)).shape == (0, 3)
    with pytest.raises(InvalidArgument) as e:
        codec.utf8_strings("t", np.array([[b"x"], [b"\xe2\x82"]], dtype=object))
    assert "input 't': BYTES element 1 (index [1, 0])" in e.value.message and e.value.details["element"] == "1"
