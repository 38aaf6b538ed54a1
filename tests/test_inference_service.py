"""The inference service over real gRPC: metadata, inference on every datatype, bad input,
dynamic batching (asserted through statistics), load/unload/hot swap under traffic, execution
providers with a faked provider list, metrics, and the no-TensorFlow footprint."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from inference_fixtures import ALL_TYPES, alltypes_inputs, build_repository, expect_error, mlp, mlp_expected
from prometheus_client import REGISTRY

from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport import cpuinfo, media
from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from modelport.runtime.artifacts import to_ref, upload_requests
from modelport.runtime.background import BackgroundServer
from modelport.v1 import artifacts_pb2_grpc, serving_pb2, serving_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def _settings(tmp: Path, **kw) -> InferenceSettings:
    return InferenceSettings(port=0, host="127.0.0.1", store=tmp / "store", **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inference")
    repo = build_repository(tmp / "repo")
    srv = BackgroundServer(InferenceService(_settings(tmp, repository=repo, max_queue_size=64))).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(server.address)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def kserve(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def control(channel):
    return serving_pb2_grpc.ModelControlStub(channel)


def infer(stub, model, inputs, outputs=None, version="", raw=True, timeout=30):
    resp = stub.ModelInfer(codec.make_infer_request(model, inputs, outputs, version, raw=raw), timeout=timeout)
    return resp, codec.decode_outputs(resp)


# --- health, metadata, config -------------------------------------------------------------------

def test_server_health_and_metadata(kserve):
    assert kserve.ServerLive(pb.ServerLiveRequest()).live
    # Strict readiness (the default, as in Triton): 'broken' and 'junk' failed to load, so not ready.
    assert not kserve.ServerReady(pb.ServerReadyRequest()).ready
    md = kserve.ServerMetadata(pb.ServerMetadataRequest())
    assert md.name == "modelport-inference" and "model_repository" in md.extensions
    # this CPU's kernel-relevant flags, for the deploy report's comparison
    assert cpuinfo.flags_from_extensions(md.extensions) == cpuinfo.relevant_flags()
    assert kserve.ModelReady(pb.ModelReadyRequest(name="mlp", version="1")).ready
    assert not kserve.ModelReady(pb.ModelReadyRequest(name="mlp", version="9")).ready
    assert not kserve.ModelReady(pb.ModelReadyRequest(name="nope")).ready


def test_model_metadata_reports_kserve_types_and_dynamic_dims(kserve):
    md = kserve.ModelMetadata(pb.ModelMetadataRequest(name="multi"))
    assert md.platform == "onnxruntime_onnx" and list(md.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("a", "FP32", [-1, 3]), ("b", "INT64", [-1, 3])]
    assert [(t.name, t.datatype) for t in md.outputs] == [("sum", "FP32"), ("prod", "INT64"), ("pos", "BOOL")]
    md = kserve.ModelMetadata(pb.ModelMetadataRequest(name="mlp"))
    assert list(md.versions) == ["1", "2"]  # version_policy all
    md = kserve.ModelMetadata(pb.ModelMetadataRequest(name="strings"))
    assert [t.datatype for t in md.inputs] == ["BYTES", "BOOL"]


def test_model_config_reports_provider_batching_and_dims(kserve):
    cfg = kserve.ModelConfig(pb.ModelConfigRequest(name="batched")).config
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    assert list(cfg.input[0].dims) == [4] and list(cfg.output[0].dims) == [3]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 20_000_000
    assert cfg.parameters["execution_provider"].string_value == "CPUExecutionProvider"
    assert cfg.instance_group[0].count == 1
    fixed = kserve.ModelConfig(pb.ModelConfigRequest(name="fixed")).config
    assert fixed.max_batch_size == 0 and list(fixed.input[0].dims) == [2, 2]


# --- inference --------------------------------------------------------------------------------

def test_infer_latest_and_pinned_versions(kserve):
    x = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    resp, out = infer(kserve, "mlp", {"x": x})
    assert resp.model_version == "2"
    np.testing.assert_allclose(out["y"], mlp_expected(x, 2.0), rtol=1e-6)
    resp, out = infer(kserve, "mlp", {"x": x}, version="1")
    assert resp.model_version == "1"
    np.testing.assert_allclose(out["y"], mlp_expected(x), rtol=1e-6)


def test_typed_contents_in_raw_out(kserve):
    a = np.array([[1.5, -2.0, 0.0]], np.float32)
    b = np.array([[2, 3, -4]], np.int64)
    resp, out = infer(kserve, "multi", {"a": a, "b": b}, raw=False)
    assert len(resp.raw_output_contents) == 3  # outputs always raw
    np.testing.assert_array_equal(out["sum"], a + b)
    np.testing.assert_array_equal(out["prod"], b * b)
    np.testing.assert_array_equal(out["pos"], a > 0)
    assert out["pos"].dtype == np.bool_


def test_requested_output_subset(kserve):
    resp, out = infer(kserve, "multi", {"a": np.ones((2, 3), np.float32), "b": np.ones((2, 3), np.int64)},
                      outputs=["prod"])
    assert [o.name for o in resp.outputs] == ["prod"] and list(out) == ["prod"]


def test_bytes_and_bool_and_fp16(kserve):
    s = np.array(["héllo", "", "x" * 1000], dtype=object)
    _, out = infer(kserve, "strings", {"s": s, "flag": np.array([True, False, True])})
    assert out["same"].tolist() == ["héllo".encode(), b"", b"x" * 1000]
    np.testing.assert_array_equal(out["not_flag"], [False, True, False])
    h = np.array([[0.5, -1.25]], np.float16)
    _, out = infer(kserve, "fp16", {"h": h})
    assert out["twice"].dtype == np.float16
    np.testing.assert_array_equal(out["twice"], h * 2)


@pytest.mark.parametrize("raw", [True, False])
def test_every_numeric_datatype_round_trips(kserve, raw):
    inputs = alltypes_inputs(3)
    if not raw:
        inputs.pop("fp16")  # FP16 has no typed contents: raw only
    md = kserve.ModelMetadata(pb.ModelMetadataRequest(name="alltypes"))
    assert {t.name: t.datatype for t in md.inputs} == {n: n.upper() for n in ALL_TYPES}
    if raw:
        _, out = infer(kserve, "alltypes", inputs)
        for name, arr in inputs.items():
            assert out[f"{name}_out"].dtype == arr.dtype
            np.testing.assert_array_equal(out[f"{name}_out"], arr)
    else:
        expect_error(BAD, ["input 'fp16' is missing"], lambda: infer(kserve, "alltypes", inputs, raw=False))


def test_stream_infer(kserve):
    reqs = [codec.make_infer_request("mlp", {"x": np.full((1, 4), i, np.float32)}, model_version="1", request_id=f"r{i}")
            for i in range(3)]
    reqs.append(codec.make_infer_request("nope", {"x": np.zeros((1, 4), np.float32)}, request_id="bad"))
    got = {r.infer_response.id: r for r in kserve.ModelStreamInfer(iter(reqs), timeout=30)}
    assert set(got) == {"r0", "r1", "r2", "bad"}
    for i in range(3):
        y = codec.decode_outputs(got[f"r{i}"].infer_response)["y"]
        np.testing.assert_allclose(y, mlp_expected(np.full((1, 4), i, np.float32)), rtol=1e-6)
    assert "model 'nope' is not loaded" in got["bad"].error_message


# --- bad input --------------------------------------------------------------------------------

BAD = grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_model_and_version_are_not_found(kserve):
    x = {"x": np.zeros((1, 4), np.float32)}
    expect_error(grpc.StatusCode.NOT_FOUND, ["model 'nope' is not loaded", "mlp"], lambda: infer(kserve, "nope", x))
    expect_error(grpc.StatusCode.NOT_FOUND, ["model 'mlp' has no version 7 loaded", "loaded: 1, 2"],
                 lambda: infer(kserve, "mlp", x, version="7"))
    expect_error(grpc.StatusCode.NOT_FOUND, ["model 'nope' is not loaded"],
                 lambda: kserve.ModelMetadata(pb.ModelMetadataRequest(name="nope")))
    expect_error(grpc.StatusCode.NOT_FOUND, ["model 'nope' is not loaded"],
                 lambda: kserve.ModelStatistics(pb.ModelStatisticsRequest(name="nope")))


def test_bad_inputs_name_the_tensor_and_the_expectation(kserve):
    x = np.zeros((1, 4), np.float32)
    expect_error(BAD, ["model 'mlp' has no input 'z'", "x (FP32 [-1, 4])"],
                 lambda: infer(kserve, "mlp", {"x": x, "z": x}))
    expect_error(BAD, ["input 'b' is missing", "b (INT64 [-1, 3])"],
                 lambda: infer(kserve, "multi", {"a": np.zeros((1, 3), np.float32)}))
    expect_error(BAD, ["input 'x': datatype INT32 does not match the model's FP32"],
                 lambda: infer(kserve, "mlp", {"x": x.astype(np.int32)}))
    expect_error(BAD, ["input 'x': shape [1, 5] does not match the model's [-1, 4]"],
                 lambda: infer(kserve, "mlp", {"x": np.zeros((1, 5), np.float32)}))
    expect_error(BAD, ["input 'x': batch size 20 exceeds max_batch_size 16"],
                 lambda: infer(kserve, "mlp", {"x": np.zeros((20, 4), np.float32)}))
    expect_error(BAD, ["model 'mlp' has no output 'q'", "y (FP32 [-1, 3])"],
                 lambda: infer(kserve, "mlp", {"x": x}, outputs=["q"]))
    expect_error(BAD, ["input 'b': batch size 2 differs from the other inputs' 1"],
                 lambda: infer(kserve, "multi", {"a": np.zeros((1, 3), np.float32), "b": np.zeros((2, 3), np.int64)}))


def test_input_the_model_itself_rejects(kserve):
    _, out = infer(kserve, "reshape", {"v": np.arange(4, dtype=np.float32)})
    np.testing.assert_array_equal(out["r"], np.arange(4, dtype=np.float32).reshape(2, 2))
    expect_error(BAD, ["model 'reshape' rejected the input", "check the input values"],
                 lambda: infer(kserve, "reshape", {"v": np.arange(5, dtype=np.float32)}))


def test_raw_content_of_wrong_length(kserve):
    req = codec.make_infer_request("mlp", {"x": np.zeros((2, 4), np.float32)})
    req.raw_input_contents[0] = req.raw_input_contents[0][:-3]
    expect_error(BAD, ["input 'x': raw content has 29 bytes but shape [2, 4] of FP32 needs 32 bytes"],
                 lambda: kserve.ModelInfer(req))
    req = codec.make_infer_request("strings", {"s": np.array(["a", "b"], dtype=object),
                                               "flag": np.array([True, True])})
    req.raw_input_contents[0] = req.raw_input_contents[0] + b"\x05"
    expect_error(BAD, ["input 's': BYTES raw content is truncated"], lambda: kserve.ModelInfer(req))
    # The server keeps serving.
    _, out = infer(kserve, "mlp", {"x": np.ones((1, 4), np.float32)}, version="1")
    np.testing.assert_allclose(out["y"], mlp_expected(np.ones((1, 4), np.float32)), rtol=1e-6)


# --- batching, statistics, metrics ------------------------------------------------------------

def test_dynamic_batching_merges_concurrent_requests_and_splits_exactly(kserve):
    before = kserve.ModelStatistics(pb.ModelStatisticsRequest(name="batched")).model_stats[0]
    rng = np.random.default_rng(3)
    xs = [rng.random((n, 4), dtype=np.float32) for n in (1, 2, 1, 3, 1)]  # 8 = the preferred size
    with ThreadPoolExecutor(len(xs)) as pool:
        outs = list(pool.map(lambda x: infer(kserve, "batched", {"x": x})[1]["y"], xs))
    for x, y in zip(xs, outs, strict=True):
        assert y.shape == (x.shape[0], 3)
        np.testing.assert_allclose(y, mlp_expected(x), rtol=1e-6)
    st = kserve.ModelStatistics(pb.ModelStatisticsRequest(name="batched", version="1")).model_stats[0]
    assert st.inference_count - before.inference_count == 8
    assert st.execution_count - before.execution_count == 1  # one merged execution
    assert st.inference_stats.success.count - before.inference_stats.success.count == 5
    assert 8 in [b.batch_size for b in st.batch_stats]
    assert st.inference_stats.queue.count == st.inference_stats.success.count
    assert st.inference_stats.success.ns > st.inference_stats.compute_infer.ns > 0


def test_statistics_count_failures_and_prometheus_metrics(kserve):
    x = np.zeros((1, 4), np.float32)
    s0 = kserve.ModelStatistics(pb.ModelStatisticsRequest(name="mlp", version="1")).model_stats[0]
    infer(kserve, "mlp", {"x": x}, version="1")
    with pytest.raises(grpc.RpcError):
        infer(kserve, "mlp", {"x": x}, outputs=["q"], version="1")
    s1 = kserve.ModelStatistics(pb.ModelStatisticsRequest(name="mlp", version="1")).model_stats[0]
    assert s1.inference_stats.success.count == s0.inference_stats.success.count + 1
    assert s1.inference_stats.fail.count == s0.inference_stats.fail.count + 1
    assert s1.last_inference >= s0.last_inference
    everything = kserve.ModelStatistics(pb.ModelStatisticsRequest())
    assert {(m.name, m.version) for m in everything.model_stats} >= {("mlp", "1"), ("mlp", "2"), ("fp16", "1")}
    ok = REGISTRY.get_sample_value("modelport_inference_requests_total",
                                   {"model": "mlp", "version": "1", "status": "OK"})
    bad = REGISTRY.get_sample_value("modelport_inference_requests_total",
                                    {"model": "mlp", "version": "1", "status": "INVALID_ARGUMENT"})
    assert ok >= 1 and bad >= 1
    assert REGISTRY.get_sample_value("modelport_inference_batch_size_count", {"model": "batched", "version": "1"}) >= 1
    assert REGISTRY.get_sample_value("modelport_inference_compute_seconds_count", {"model": "mlp", "version": "1"}) >= 1
    assert REGISTRY.get_sample_value("modelport_inference_queue_seconds_count", {"model": "mlp", "version": "1"}) >= 1


# --- model control: load / unload / hot swap under traffic -----------------------------------

class Traffic:
    """Client threads sending requests in a loop until stopped; every failure is recorded."""

    def __init__(self, stub, model: str, threads: int = 4):
        self.stub, self.model = stub, model
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.by_version: dict[str, int] = {}
        self.failures: list[str] = []
        self.wrong: list[str] = []
        self.pool = ThreadPoolExecutor(threads)
        self.futures = [self.pool.submit(self._loop, i) for i in range(threads)]

    def _loop(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self.stop.is_set():
            x = rng.random((int(rng.integers(1, 4)), 4), dtype=np.float32)
            try:
                resp, out = infer(self.stub, self.model, {"x": x})
            except grpc.RpcError as exc:
                with self.cond:
                    self.failures.append(f"{exc.code()}: {exc.details()}")
                    self.cond.notify_all()
                continue
            scale = float(resp.model_version)  # version N of the swap model multiplies by N
            if not np.allclose(out["y"], mlp_expected(x, scale), rtol=1e-5):
                self.wrong.append(resp.model_version)
            with self.cond:
                self.by_version[resp.model_version] = self.by_version.get(resp.model_version, 0) + 1
                self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 60) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self) or self.failures, timeout), "traffic stalled"

    def finish(self) -> None:
        self.stop.set()
        for f in self.futures:
            f.result(timeout=60)
        self.pool.shutdown()


def _store_ref(server, path: Path):
    art = server.service.store.put_file(path, media.ONNX)
    return to_ref(art, server.address)


def test_hot_swap_load_and_unload_under_traffic(server, kserve, control, channel, tmp_path):
    v1 = _store_ref(server, mlp(tmp_path / "v1.onnx", 1.0))
    # Upload v2 through the Artifacts service like a client would.
    v2 = artifacts_pb2_grpc.ArtifactsStub(channel).Upload(upload_requests(mlp(tmp_path / "v2.onnx", 2.0), media.ONNX))
    v3 = _store_ref(server, mlp(tmp_path / "v3.onnx", 3.0))
    r = control.LoadModel(serving_pb2.LoadModelRequest(
        name="swap", model=v1, execution_provider="cpu", intra_op_threads=1,
        batching=serving_pb2.BatchingConfig(max_batch_size=8, enabled=True, max_queue_delay_us=500)))
    assert r.model.version == "1" and r.model.state == "READY"
    assert r.model.execution_provider == "CPUExecutionProvider" and r.model.batching.enabled

    traffic = Traffic(kserve, "swap")
    try:
        traffic.wait_for(lambda t: t.by_version.get("1", 0) >= 20)
        # Hot swap: v2 becomes current, v1 is drained and unloaded (keep 1 version).
        r = control.LoadModel(serving_pb2.LoadModelRequest(name="swap", model=v2, keep_versions=1))
        assert r.model.version == "2"
        traffic.wait_for(lambda t: t.by_version.get("2", 0) >= 20)
        # Another model loads and unloads while traffic flows.
        control.LoadModel(serving_pb2.LoadModelRequest(name="other", model=v3, version="5"))
        assert kserve.ModelReady(pb.ModelReadyRequest(name="other", version="5")).ready
        control.UnloadModel(serving_pb2.UnloadModelRequest(name="other"))
        # Swap once more, keeping both versions.
        control.LoadModel(serving_pb2.LoadModelRequest(name="swap", model=v3))
        traffic.wait_for(lambda t: t.by_version.get("3", 0) >= 20)
    finally:
        traffic.finish()
    assert traffic.failures == []
    assert traffic.wrong == []
    listed = {(m.name, m.version): m for m in control.ListModels(serving_pb2.ListModelsRequest()).models}
    assert ("swap", "1") not in listed and ("swap", "2") in listed and ("swap", "3") in listed
    assert ("other", "5") not in listed
    assert listed[("swap", "3")].execution_provider == "CPUExecutionProvider"
    assert listed[("swap", "3")].artifact.digest == v3.digest
    control.UnloadModel(serving_pb2.UnloadModelRequest(name="swap", version="2"))
    expect_error(grpc.StatusCode.NOT_FOUND, ["model 'swap' has no version 2 loaded"],
                 lambda: infer(kserve, "swap", {"x": np.zeros((1, 4), np.float32)}, version="2"))
    control.UnloadModel(serving_pb2.UnloadModelRequest(name="swap"))
    expect_error(grpc.StatusCode.NOT_FOUND, ["model 'swap' is not loaded"],
                 lambda: control.UnloadModel(serving_pb2.UnloadModelRequest(name="swap")))


def test_load_model_bad_requests(server, control, tmp_path):
    ref = _store_ref(server, mlp(tmp_path / "m.onnx"))
    expect_error(BAD, ["unknown execution provider 'tpu'", "auto, cpu, cuda, tensorrt, openvino"],
                 lambda: control.LoadModel(serving_pb2.LoadModelRequest(name="m", model=ref, execution_provider="tpu")))
    expect_error(BAD, ["unknown graph_optimization_level 'max'"],
                 lambda: control.LoadModel(serving_pb2.LoadModelRequest(name="m", model=ref,
                                                                        graph_optimization_level="max")))
    expect_error(BAD, ["version 'x1' is not a positive integer"],
                 lambda: control.LoadModel(serving_pb2.LoadModelRequest(name="m", model=ref, version="x1")))
    expect_error(BAD, ["an ArtifactRef is required"], lambda: control.LoadModel(serving_pb2.LoadModelRequest(name="m")))
    junk = server.service.store.put_bytes(b"not an onnx model", media.ONNX)
    expect_error(BAD, ["onnxruntime cannot load"],
                 lambda: control.LoadModel(serving_pb2.LoadModelRequest(name="m", model=to_ref(junk))))


def test_load_pulls_from_origin_and_repository_archive(server, control, kserve, tmp_path):
    from modelport import repository

    other = BackgroundServer(InferenceService(_settings(tmp_path / "origin"))).start()
    try:
        repo = tmp_path / "bundle"
        repository.write_model(repo, "bundled", 3, mlp(tmp_path / "b.onnx", 3.0),
                               repository.config_from_onnx("bundled", tmp_path / "b.onnx", max_batch_size=4))
        art = other.service.store.put_dir(repo, media.MODEL_REPOSITORY)
        ref = to_ref(art, other.address)
        assert not server.service.store.has(ref.digest)
        # the origin is not one of this server's peers: refused before any connection
        expect_error(grpc.StatusCode.PERMISSION_DENIED, [f"does not pull artifacts from origin '{other.address}'"],
                     lambda: control.LoadModel(serving_pb2.LoadModelRequest(name="bundled", model=ref, version="3")))
        assert not server.service.store.has(ref.digest)
        server.service.settings.allowed_origins = other.address  # the operator names it a peer
        r = control.LoadModel(serving_pb2.LoadModelRequest(name="bundled", model=ref, version="3"))
        assert r.model.batching.max_batch_size == 4
        assert server.service.store.has(ref.digest)
        x = np.ones((2, 4), np.float32)
        _, out = infer(kserve, "bundled", {"x": x})
        np.testing.assert_allclose(out["y"], mlp_expected(x, 3.0), rtol=1e-6)
        expect_error(BAD, ["batch size 5 exceeds max_batch_size 4"],
                     lambda: infer(kserve, "bundled", {"x": np.ones((5, 4), np.float32)}))
    finally:
        server.service.settings.allowed_origins = ""
        control.UnloadModel(serving_pb2.UnloadModelRequest(name="bundled"))
        other.stop()


def test_models_that_fail_to_load_are_reported_not_fatal(kserve):
    assert not kserve.ServerReady(pb.ServerReadyRequest()).ready  # strict readiness; the others serve
    assert kserve.ModelReady(pb.ModelReadyRequest(name="mlp")).ready
    rows = {m.name: m for m in kserve.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert rows["broken"].state == "UNAVAILABLE" and "fix the protobuf text-format syntax" in rows["broken"].reason
    assert rows["junk"].state == "UNAVAILABLE" and "onnxruntime cannot load model.onnx" in rows["junk"].reason
    expect_error(BAD, ["config.pbtxt", "fix the protobuf text-format syntax"],
                 lambda: kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="broken")))
    expect_error(BAD, ["onnxruntime cannot load model.onnx", "valid ONNX model"],
                 lambda: kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="junk")))
    expect_error(grpc.StatusCode.NOT_FOUND, ["model 'junk' is not loaded"],
                 lambda: infer(kserve, "junk", {"x": np.zeros((1, 4), np.float32)}))


def test_repository_index_load_unload_and_config_override(kserve):
    idx = kserve.RepositoryIndex(pb.RepositoryIndexRequest())
    names = {(m.name, m.version, m.state) for m in idx.models}
    assert ("mlp", "2", "READY") in names and ("fixed", "1", "READY") in names
    kserve.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="fp16"))
    assert not kserve.ModelReady(pb.ModelReadyRequest(name="fp16")).ready
    idx = kserve.RepositoryIndex(pb.RepositoryIndexRequest())
    assert ("fp16", "", "UNAVAILABLE", "unloaded") in {(m.name, m.version, m.state, m.reason) for m in idx.models}
    assert "fp16" not in {m.name for m in kserve.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models}
    override = '{"max_batch_size": 2, "dynamic_batching": {"max_queue_delay_microseconds": "100"}}'
    req = pb.RepositoryModelLoadRequest(model_name="fp16")
    req.parameters["config"].string_param = override
    kserve.RepositoryModelLoad(req)
    cfg = kserve.ModelConfig(pb.ModelConfigRequest(name="fp16")).config
    assert cfg.max_batch_size == 2 and cfg.dynamic_batching.max_queue_delay_microseconds == 100
    expect_error(BAD, ["batch size 3 exceeds max_batch_size 2"],
                 lambda: infer(kserve, "fp16", {"h": np.ones((3, 2), np.float16)}))
    kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="fp16"))
    assert kserve.ModelConfig(pb.ModelConfigRequest(name="fp16")).config.max_batch_size == 8
    expect_error(grpc.StatusCode.NOT_FOUND, ["model 'ghost' is not in the repository"],
                 lambda: kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="ghost")))
    bad = pb.RepositoryModelLoadRequest(model_name="fp16")
    bad.parameters["config"].string_param = "{not json"
    expect_error(BAD, ["parameter 'config' is not a valid JSON ModelConfig"], lambda: kserve.RepositoryModelLoad(bad))


# --- execution providers ----------------------------------------------------------------------

def test_provider_choice_with_faked_gpu_provider_list(tmp_path):
    """auto on a build that claims TensorRT/CUDA: they are chosen, onnxruntime (CPU build here)
    runs on CPU, and the fallback is reported in the load response and the model config."""
    faked = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    svc = InferenceService(_settings(tmp_path, execution_provider="auto", device_id=1), available_providers=faked)
    with BackgroundServer(svc) as srv, grpc.insecure_channel(srv.address) as ch:
        ref = to_ref(svc.store.put_file(mlp(tmp_path / "m.onnx"), media.ONNX))
        control = serving_pb2_grpc.ModelControlStub(ch)
        r = control.LoadModel(serving_pb2.LoadModelRequest(name="m", model=ref))
        assert r.model.execution_provider == "CPUExecutionProvider"
        assert any("TensorrtExecutionProvider was selected but onnxruntime runs the model on CPUExecutionProvider"
                   in w for w in r.warnings), list(r.warnings)
        r = control.LoadModel(serving_pb2.LoadModelRequest(name="m", model=ref, execution_provider="openvino"))
        assert any("OpenVINOExecutionProvider is not available" in w for w in r.warnings), list(r.warnings)
        cfg = pb_grpc.GRPCInferenceServiceStub(ch).ModelConfig(pb.ModelConfigRequest(name="m")).config
        assert cfg.parameters["execution_provider"].string_value == "CPUExecutionProvider"
        assert cfg.parameters["requested_execution_provider"].string_value == "openvino"


def test_bad_default_provider_fails_at_start(tmp_path):
    with pytest.raises(ValueError, match="unknown execution provider 'quantum'"):
        InferenceService(_settings(tmp_path, execution_provider="quantum"))


# --- footprint --------------------------------------------------------------------------------

def test_service_never_imports_tensorflow():
    code = ("import inference_svc.__main__, inference_svc.servicer, inference_svc.service; import sys; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
            "assert 'keras' not in sys.modules, 'keras imported'")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_process_serves_repository_and_exits_cleanly_on_sigterm(tmp_path):
    """`python -m inference_svc --repository DIR --port 0`: SERVING line, inference, SIGTERM -> exit 0."""
    import signal

    repo = tmp_path / "repo"
    mlp(repo / "tiny" / "1" / "model.onnx")
    env = {**__import__("os").environ, "MODELPORT_INFERENCE_STORE": str(tmp_path / "store")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_svc", "--repository", str(repo), "--port", "0", "--host", "127.0.0.1",
         "--grace-period-s", "5", "--default-max-batch-size", "4"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "inference SERVING on port" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(line.rsplit(" ", 1)[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            x = np.ones((3, 4), np.float32)
            _, out = infer(stub, "tiny", {"x": x})
            np.testing.assert_allclose(out["y"], mlp_expected(x), rtol=1e-6)
            assert stub.ModelConfig(pb.ModelConfigRequest(name="tiny")).config.max_batch_size == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read()
        assert "model tiny version 1 unloaded" in err and "inference: stopped" in err, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_mutating_rpcs_need_the_bearer_token(tmp_path):
    repo = tmp_path / "repo"
    mlp(repo / "tiny" / "1" / "model.onnx")
    svc = InferenceService(_settings(tmp_path, repository=repo, auth_token="s3cret"))
    with BackgroundServer(svc) as srv, grpc.insecure_channel(srv.address) as ch:
        kserve = pb_grpc.GRPCInferenceServiceStub(ch)
        control = serving_pb2_grpc.ModelControlStub(ch)
        expect_error(grpc.StatusCode.UNAUTHENTICATED, ["authorization: Bearer <token>"],
                     lambda: kserve.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny")))
        expect_error(grpc.StatusCode.UNAUTHENTICATED, ["authorization: Bearer <token>"],
                     lambda: control.UnloadModel(serving_pb2.UnloadModelRequest(name="tiny")))
        # Inference and reads stay open; the token unlocks the mutating calls.
        _, out = infer(kserve, "tiny", {"x": np.ones((1, 4), np.float32)})
        assert out["y"].shape == (1, 3)
        assert len(control.ListModels(serving_pb2.ListModelsRequest()).models) == 1
        kserve.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny"),
                                     metadata=[("authorization", "Bearer s3cret")])
        assert not kserve.ModelReady(pb.ModelReadyRequest(name="tiny")).ready


def test_queue_bound_and_expired_requests_over_grpc(server, kserve, control, tmp_path):
    """Through the real server: with one request running and one queued (max_queue_size 1) the next
    is refused at once with UNAVAILABLE; a queued request whose client deadline passes is never run."""
    import collections

    ref = _store_ref(server, mlp(tmp_path / "q.onnx"))
    control.LoadModel(serving_pb2.LoadModelRequest(
        name="queue", model=ref, batching=serving_pb2.BatchingConfig(max_batch_size=4, max_queue_size=1)))
    mv = server.service.manager.get("queue")
    sched = mv.scheduler
    real_run = sched._run
    gate, started, queued, failed = (threading.Event() for _ in range(4))
    runs: list[int] = []

    def gated(inputs, outputs):
        runs.append(inputs["x"].shape[0])
        started.set()
        assert gate.wait(60)
        return real_run(inputs, outputs)

    class NotifyingDeque(collections.deque):
        def append(self, item):
            super().append(item)
            queued.set()

    real_request = sched.metrics.request

    def request_done(status, seconds):
        real_request(status, seconds)
        if status == "CANCELLED":  # the deadline cancelled the call on the server
            failed.set()

    sched._run, sched._pending, sched.metrics.request = gated, NotifyingDeque(), request_done
    sched.inline = False  # a gated run stands for a long one: it runs on the executor (short models run inline on the loop)
    try:
        x = np.ones((1, 4), np.float32)
        running = kserve.ModelInfer.future(codec.make_infer_request("queue", {"x": x}), timeout=60)
        assert started.wait(60)
        expiring = kserve.ModelInfer.future(codec.make_infer_request("queue", {"x": x * 2}), timeout=1.0)
        assert queued.wait(60)
        expect_error(grpc.StatusCode.UNAVAILABLE, ["model 'queue' version 1: queue is full (1 requests waiting)",
                                                  "raise max_queue_size"],
                     lambda: infer(kserve, "queue", {"x": x * 3}))
        with pytest.raises(grpc.RpcError) as err:
            expiring.result(timeout=60)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert failed.wait(60)  # the server saw the expired request end (cancelled, not run)
        gate.set()
        out = codec.decode_outputs(running.result(timeout=60))
        np.testing.assert_allclose(out["y"], mlp_expected(x), rtol=1e-6)
        _, out = infer(kserve, "queue", {"x": x * 4})
        np.testing.assert_allclose(out["y"], mlp_expected(x * 4), rtol=1e-6)
        assert runs == [1, 1]  # the expired request never reached the model
    finally:
        gate.set()
        control.UnloadModel(serving_pb2.UnloadModelRequest(name="queue"))
