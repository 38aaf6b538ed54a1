"""ModelInfer on request bytes (inference_svc.fast_infer): responses written byte for byte as protobuf would, a
repeated request recognised by its bytes, and over real gRPC: the remembered path answers the current version,
counts in the statistics, and a request that is not a ModelInferRequest is INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from inference_fixtures import expect_error, mlp, mlp_expected

from inference_svc import fast_infer
from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport import media
from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from modelport.runtime.artifacts import to_ref
from modelport.runtime.background import BackgroundServer
from modelport.v1 import serving_pb2, serving_pb2_grpc

OUTPUT_SETS = [
    ("mlp", "1", {"y": np.arange(10, dtype=np.float32).reshape(1, 10)}, ""),
    ("m", "", {"empty": np.zeros((0, 3), np.float32), "scalar": np.array(3, np.int64)}, "req-7"),
    ("", "12", {"": np.ones((2, 300), np.float16), "é": np.array([True, False])}, "x" * 200),
    ("m", "1", {"transposed": np.arange(12, dtype=np.int8).reshape(3, 4).T}, ""),
    ("m", "1", {"u": np.arange(5, dtype=np.uint64) * 2**40, "big": np.zeros((1, 200_000), np.float64)}, ""),
]


@pytest.mark.parametrize("name,version,outputs,request_id", OUTPUT_SETS)
def test_encoder_writes_what_protobuf_serializes(name, version, outputs, request_id):
    enc = fast_infer.ResponseEncoder()
    want = codec.make_infer_response(name, version, outputs, request_id).SerializeToString()
    assert enc.encode(name, version, outputs, request_id) == want
    assert enc.encode(name, version, outputs, request_id) == want  # from the caches


def test_encoder_leaves_bytes_tensors_to_the_codec():
    assert fast_infer.ResponseEncoder().encode("m", "1", {"s": np.array([b"a"], dtype=object)}) is None


class _Version:  # what the memo holds weakly
    pass


def _learned(request: pb.ModelInferRequest, mv=None):
    data = request.SerializeToString()
    memo = fast_infer.RequestMemo()
    parsed = pb.ModelInferRequest.FromString(data)
    mv = mv or _Version()
    memo.learn(data, parsed, codec.decode_inputs(parsed), mv, [o.name for o in parsed.outputs], 1)
    return memo, mv


def test_memo_recognises_the_same_request_with_other_values_only():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(6, dtype=np.int64).reshape(2, 3)
    memo, mv = _learned(codec.make_infer_request("multi", {"a": a, "b": b}, ["sum"], "3"))
    assert len(memo) == 1
    other = codec.make_infer_request("multi", {"a": a * -1.5, "b": b + 7}, ["sum"], "3").SerializeToString()
    r = memo.match(other)
    assert r is not None and r.mv() is mv and r.requested == ["sum"] and (r.model_name, r.model_version) == ("multi", "3")
    got = fast_infer.views(other, r)
    assert list(got) == ["a", "b"]
    np.testing.assert_array_equal(got["a"], a * -1.5)
    np.testing.assert_array_equal(got["b"], b + 7)
    assert got["b"].dtype == np.int64 and not got["a"].flags.writeable  # views into the request bytes
    # Anything else about the request differs: not the remembered one.
    for changed in (codec.make_infer_request("multi", {"a": a[:1], "b": b[:1]}, ["sum"], "3"),
                    codec.make_infer_request("multi", {"a": a, "b": b}, ["prod"], "3"),
                    codec.make_infer_request("multi", {"a": a, "b": b}, ["sum"], "4"),
                    codec.make_infer_request("multi", {"a": a, "b": b.astype(np.float64)}, ["sum"], "3")):
        assert memo.match(changed.SerializeToString()) is None
    memo.forget(r)
    assert len(memo) == 0 and memo.match(other) is None


def test_memo_keeps_only_requests_whose_raw_contents_end_the_message():
    x = np.ones((1, 4), np.float32)
    with_id = codec.make_infer_request("mlp", {"x": x}, request_id="r1")
    typed = codec.make_infer_request("mlp", {"x": x}, raw=False)
    assert len(_learned(with_id)[0]) == 0
    assert len(_learned(typed)[0]) == 0
    # An unknown field after the tensor bytes (another client's field order): parsed, never remembered.
    data = codec.make_infer_request("mlp", {"x": x}).SerializeToString() + b"\x78\x01"  # field 15 = 1
    parsed = pb.ModelInferRequest.FromString(data)
    memo = fast_infer.RequestMemo()
    memo.learn(data, parsed, codec.decode_inputs(parsed), _Version(), [], 1)
    assert len(memo) == 0


def test_memo_does_not_keep_a_model_version_alive():
    memo, mv = _learned(codec.make_infer_request("mlp", {"x": np.ones((1, 4), np.float32)}))
    r = memo.match(codec.make_infer_request("mlp", {"x": np.zeros((1, 4), np.float32)}).SerializeToString())
    del mv
    assert r.mv() is None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fast-infer")
    mlp(tmp / "repo" / "mlp" / "1" / "model.onnx")
    srv = BackgroundServer(InferenceService(InferenceSettings(port=0, host="127.0.0.1", store=tmp / "store",
                                                              repository=tmp / "repo"))).start()
    yield srv, tmp
    srv.stop()


def test_repeated_requests_take_the_remembered_path_and_follow_the_current_version(server, monkeypatch):
    srv, tmp = server
    taken = []
    real_views = fast_infer.views
    monkeypatch.setattr(fast_infer, "views", lambda data, r: taken.append(r) or real_views(data, r))
    with grpc.insecure_channel(srv.address) as ch:
        kserve = pb_grpc.GRPCInferenceServiceStub(ch)
        rng = np.random.default_rng(0)
        xs = [rng.random((1, 4), dtype=np.float32) for _ in range(5)]
        for x in xs:
            resp = kserve.ModelInfer(codec.make_infer_request("mlp", {"x": x}), timeout=30)
            assert resp.model_name == "mlp" and resp.model_version == "1"
            np.testing.assert_allclose(codec.decode_outputs(resp)["y"], mlp_expected(x), rtol=1e-6)
        assert len(taken) == 4  # the first one was parsed and remembered
        stats = kserve.ModelStatistics(pb.ModelStatisticsRequest(name="mlp")).model_stats[0]
        assert stats.inference_stats.success.count == 5 and stats.execution_count >= 5
        # A new version of the same name: the same request bytes now reach version 2 (scale 2).
        serving_pb2_grpc.ModelControlStub(ch).LoadModel(serving_pb2.LoadModelRequest(
            name="mlp", version="2", model=_ref(srv, mlp(tmp / "v2.onnx", 2.0))), timeout=120)
        resp = kserve.ModelInfer(codec.make_infer_request("mlp", {"x": xs[0]}), timeout=30)
        assert resp.model_version == "2"
        np.testing.assert_allclose(codec.decode_outputs(resp)["y"], mlp_expected(xs[0], 2.0), rtol=1e-6)
        # Unloaded: the remembered request is NOT_FOUND like any other.
        serving_pb2_grpc.ModelControlStub(ch).UnloadModel(serving_pb2.UnloadModelRequest(name="mlp"), timeout=120)
        expect_error(grpc.StatusCode.NOT_FOUND, ["model 'mlp' is not loaded"],
                     lambda: kserve.ModelInfer(codec.make_infer_request("mlp", {"x": xs[1]}), timeout=30))


def test_bytes_that_are_not_a_request_are_invalid_argument(server):
    srv, _ = server
    with grpc.insecure_channel(srv.address) as ch:
        raw = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # no serializers: bytes in, bytes out
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, ["not a valid ModelInferRequest"],
                     lambda: raw(b"\x0a\xff\xff", timeout=30))


def _ref(srv, path):
    return to_ref(srv.service.store.put_file(path, media.ONNX), srv.address)


def test_record_single_counts_what_record_execution_counts():
    from dataclasses import asdict

    from inference_svc.stats import VersionStats

    a, b = VersionStats(), VersionStats()
    for elements, infer_ns, queue_ns in ((1, 1500, 20), (3, 7000, 0), (1, 900, 55)):
        a.record_execution(elements, 0, infer_ns, 0, [(elements, queue_ns)])
        b.record_single(elements, infer_ns, queue_ns)
    da, db = asdict(a), asdict(b)
    assert abs(da.pop("last_inference_ms") - db.pop("last_inference_ms")) < 60_000
    assert da == db and db["compute_infer"] == {"count": 3, "ns": 9400} and db["inference_count"] == 5


def test_onnxruntime_reads_unaligned_views_like_aligned_arrays(tmp_path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(mlp(tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    unaligned = np.frombuffer(b"\x00" + x.tobytes(), dtype=np.float32, count=x.size, offset=1).reshape(x.shape)
    assert not unaligned.flags.aligned
    np.testing.assert_array_equal(sess.run(None, {"x": unaligned})[0], sess.run(None, {"x": x})[0])
    np.testing.assert_allclose(sess.run(None, {"x": unaligned})[0], mlp_expected(x), rtol=1e-6)
