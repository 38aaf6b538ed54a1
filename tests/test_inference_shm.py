"""Triton's system shared memory extension on the real inference service: regions registered over gRPC
on real /dev/shm segments (made here with os.open + ftruncate + mmap), inference reading inputs from
and writing outputs to them (values checked against onnxruntime run directly), every error with its
code and message, unregister during an in-flight request, --no-shared-memory and the token guard."""

from __future__ import annotations

import itertools
import mmap
import os
import struct
import threading
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from inference_fixtures import build_repository, expect_error, mlp, mlp_expected

from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport.kserve import codec
from modelport.kserve import shm as kshm
from modelport.kserve.shm import ShmRef
from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from modelport.runtime.background import BackgroundServer
from modelport.runtime.channels import make_channel
from modelport.runtime.settings import parse_settings

TOKEN = "shm-token"
_ids = itertools.count()


class Seg:
    """A /dev/shm segment made the plain POSIX way (what shm_open + ftruncate + mmap do)."""

    def __init__(self, size: int):
        self.name = f"mp_test_{os.getpid()}_{next(_ids)}"
        self.key = "/" + self.name
        self.path = Path("/dev/shm") / self.name
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(self.fd, size)
        self.mm = mmap.mmap(self.fd, size)

    def put(self, arr: np.ndarray, offset: int = 0) -> int:
        data = codec.serialize_bytes_tensor(arr) if arr.dtype == object else np.ascontiguousarray(arr).tobytes()
        self.mm[offset:offset + len(data)] = data
        return len(data)

    def get(self, dtype, shape, offset: int = 0) -> np.ndarray:
        return np.frombuffer(self.mm, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape).copy()

    def get_bytes(self, count: int, offset: int = 0) -> list[bytes]:
        out = []
        for _ in range(count):
            (n,) = struct.unpack_from("<I", self.mm, offset)
            out.append(bytes(self.mm[offset + 4:offset + 4 + n]))
            offset += 4 + n
        return out

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


@pytest.fixture
def seg():
    made: list[Seg] = []

    def make(size: int = 4096) -> Seg:
        made.append(Seg(size))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repository(tmp_path_factory.mktemp("shm") / "repo")


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    settings = InferenceSettings(port=0, host="127.0.0.1", store=tmp_path_factory.mktemp("shm-store"),
                                 repository=repo)
    srv = BackgroundServer(InferenceService(settings)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def kserve(server):
    ch = grpc.insecure_channel(server.address)
    yield pb_grpc.GRPCInferenceServiceStub(ch)
    ch.close()


@pytest.fixture(autouse=True)
def _clean_registry(request):
    yield
    if "kserve" in request.fixturenames:
        request.getfixturevalue("kserve").SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())


def register(stub, name, s: Seg, byte_size=None, offset=0, **kw):
    size = byte_size if byte_size is not None else len(s.mm) - offset
    return stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name=name, key=s.key, offset=offset, byte_size=size), **kw)


def ort_run(repo: Path, model: str, feeds: dict) -> dict:
    sess = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def still_serving(stub):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    resp = stub.ModelInfer(codec.make_infer_request("mlp", {"x": x}, model_version="1"))
    np.testing.assert_allclose(codec.decode_outputs(resp)["y"], mlp_expected(x), rtol=1e-6)


# --- registry RPCs ------------------------------------------------------------------------------

def test_register_status_unregister(kserve, seg):
    a, b = seg(4096), seg(8192)
    assert "system_shared_memory" in kserve.ServerMetadata(pb.ServerMetadataRequest()).extensions
    register(kserve, "ra", a)
    register(kserve, "rb", b, byte_size=1000, offset=5000)
    st = kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions
    assert set(st) == {"ra", "rb"}
    assert (st["ra"].name, st["ra"].key, st["ra"].offset, st["ra"].byte_size) == ("ra", a.key, 0, 4096)
    assert (st["rb"].key, st["rb"].offset, st["rb"].byte_size) == (b.key, 5000, 1000)
    one = kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="rb")).regions
    assert list(one) == ["rb"]
    expect_error(grpc.StatusCode.NOT_FOUND, ["Unable to find system shared memory region: 'nope'", "ra, rb"],
                 lambda: kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="nope")))
    kserve.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="ra"))
    kserve.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="never-registered"))  # Triton: OK
    assert list(kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions) == ["rb"]
    register(kserve, "ra", a)  # the name is free again
    kserve.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())  # empty name: all
    assert not kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions
    assert a.path.exists() and b.path.exists()  # the server never unlinks the client's segments


def test_register_errors(kserve, seg):
    a = seg(4096)
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 ["Unable to open shared memory region: '/mp_missing_segment'", "does not exist",
                  "create the segment first"],
                 lambda: kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
                     name="m", key="/mp_missing_segment", byte_size=16)))
    for key in ("/../etc/passwd", "/a/b", "..", "/"):
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, [f"shared memory key {key!r} is not allowed", "/dev/shm"],
                     lambda key=key: kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
                         name="k", key=key, byte_size=16)))
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 ["failed to register shared memory region 'big'", "offset 100 + byte_size 4000 = 4100",
                  f"exceeds segment '{a.key}' of 4096 bytes"],
                 lambda: register(kserve, "big", a, byte_size=4000, offset=100))
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, ["region 'zero'", "byte_size is 0"],
                 lambda: register(kserve, "zero", a, byte_size=0))
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, ["region name is empty"], lambda: register(kserve, "", a))
    link = Path("/dev/shm") / f"mp_test_link_{os.getpid()}"
    link.symlink_to(a.path)
    try:
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, [f"Unable to open shared memory region: '/{link.name}'"],
                     lambda: kserve.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
                         name="l", key="/" + link.name, byte_size=16)))
    finally:
        link.unlink()
    register(kserve, "dup", a)
    expect_error(grpc.StatusCode.ALREADY_EXISTS, ["shared memory region 'dup' already in manager",
                                                 "unregister it first"], lambda: register(kserve, "dup", a))
    assert list(kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions) == ["dup"]
    expect_error(grpc.StatusCode.UNIMPLEMENTED, ["no GPU build", "use system shared memory"],
                 lambda: kserve.CudaSharedMemoryRegister(pb.CudaSharedMemoryRegisterRequest(name="c", byte_size=8)))
    expect_error(grpc.StatusCode.UNIMPLEMENTED, ["CUDA shared memory is not supported"],
                 lambda: kserve.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()))
    still_serving(kserve)


# --- inference ----------------------------------------------------------------------------------

def test_infer_inputs_and_outputs_in_shared_memory(kserve, seg, repo):
    """multi: input a from shm, b in the message; outputs sum and prod to shm (one region, two offsets),
    pos in the message. raw_output_contents stays aligned with outputs (empty for shm ones, as Triton)."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.integers(-9, 9, (4, 3)).astype(np.int64)
    sin, sout = seg(4096), seg(4096)
    register(kserve, "in", sin, byte_size=1024, offset=64)
    register(kserve, "out", sout)
    n = sin.put(a, offset=64 + 16)
    req = kshm.make_shm_infer_request(
        "multi", {"a": ("FP32", a.shape, ShmRef("in", n, 16))},
        {"sum": ShmRef("out", 48, 0), "prod": ShmRef("out", 200, 100), "pos": None}, raw_inputs={"b": b})
    resp = kserve.ModelInfer(req)
    want = ort_run(repo, "multi", {"a": a, "b": b})
    outs = {o.name: (o.datatype, list(o.shape), raw) for o, raw in zip(resp.outputs, resp.raw_output_contents,
                                                                          strict=True)}
    assert outs["sum"] == ("FP32", [4, 3], b"") and outs["prod"] == ("INT64", [4, 3], b"")
    assert outs["pos"][:2] == ("BOOL", [4, 3])
    np.testing.assert_array_equal(np.frombuffer(outs["pos"][2], np.bool_).reshape(4, 3), want["pos"])
    np.testing.assert_array_equal(sout.get(np.float32, (4, 3)), want["sum"])
    np.testing.assert_array_equal(sout.get(np.int64, (4, 3), offset=100), want["prod"])

    # The same request again after the client rewrote the input in place: new values are read.
    sin.put(a * 2, offset=64 + 16)
    kserve.ModelInfer(req)
    np.testing.assert_array_equal(sout.get(np.float32, (4, 3)), ort_run(repo, "multi", {"a": a * 2, "b": b})["sum"])


def test_bytes_and_bool_in_shared_memory_and_streaming(kserve, seg, repo):
    s = np.array([b"hello", "wörld".encode(), b"", b"\x00bin"], dtype=object)
    flag = np.array([True, False, True, True])
    sin, sout = seg(4096), seg(4096)
    register(kserve, "in", sin)
    register(kserve, "out", sout)
    ns = sin.put(s)
    nf = sin.put(flag, offset=512)
    req = kshm.make_shm_infer_request(
        "strings", {"s": ("BYTES", [4], ShmRef("in", ns)), "flag": ("BOOL", [4], ShmRef("in", nf, 512))},
        {"same": ShmRef("out", 1024), "not_flag": ShmRef("out", 4, 2048)})
    resp = kserve.ModelInfer(req)
    assert list(resp.raw_output_contents) == [b"", b""]
    assert sout.get_bytes(4) == s.tolist()
    np.testing.assert_array_equal(sout.get(np.bool_, (4,), offset=2048), ~flag)
    # ModelStreamInfer takes the same shared-memory requests.
    sin.put(flag[::-1].copy(), offset=512)
    (item,) = list(kserve.ModelStreamInfer(iter([req])))
    assert item.error_message == "" and list(item.infer_response.raw_output_contents) == [b"", b""]
    np.testing.assert_array_equal(sout.get(np.bool_, (4,), offset=2048), ~flag[::-1])


def test_sdk_segment_helper_round_trip(kserve):
    x = np.random.default_rng(5).random((5, 4), dtype=np.float32)
    with kshm.Segment.create(f"/mp_sdk_{os.getpid()}", 1 << 12) as seg_in, \
            kshm.Segment.create(f"mp_sdk_out_{os.getpid()}", 1 << 12) as seg_out:
        kserve.SystemSharedMemoryRegister(seg_in.register_request("sdk_in"))
        kserve.SystemSharedMemoryRegister(seg_out.register_request("sdk_out", offset=128, byte_size=1024))
        ref = seg_in.write(x)
        assert ref == ShmRef("sdk_in", x.nbytes, 0)
        resp = kserve.ModelInfer(kshm.make_shm_infer_request(
            "mlp", {"x": ("FP32", x.shape, ref)}, {"y": ShmRef("sdk_out", 1024)}, model_version="2"))
        y = seg_out.read(resp.outputs[0].datatype, resp.outputs[0].shape)
        np.testing.assert_allclose(y, mlp_expected(x, 2.0), rtol=1e-6)
        kserve.SystemSharedMemoryUnregister(kshm.unregister_request())
        path = seg_in.path
    assert not path.exists()  # the creator unlinks on close


def test_inference_errors_name_the_tensor_and_the_fix(kserve, seg):
    x = np.ones((3, 4), np.float32)
    s = seg(256)
    register(kserve, "r", s, byte_size=200, offset=8)
    s.put(x, offset=8)

    def run(inputs, outputs=None):
        return lambda: kserve.ModelInfer(kshm.make_shm_infer_request("mlp", inputs, outputs, model_version="1"))

    expect_error(grpc.StatusCode.NOT_FOUND,
                 ["input 'x': shared memory region 'ghost' is not registered (registered: r)",
                  "register_system_shared_memory"],
                 run({"x": ("FP32", [3, 4], ShmRef("ghost", 48))}))
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 ["input 'x': shared_memory_offset 160 + shared_memory_byte_size 48 = 208 exceeds shared memory "
                  "region 'r' (200 bytes)"],
                 run({"x": ("FP32", [3, 4], ShmRef("r", 48, 160))}))
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 ["input 'x': shared_memory_byte_size is 40 but shape [3, 4] of FP32 needs 48 bytes",
                  "set shared_memory_byte_size to 48"],
                 run({"x": ("FP32", [3, 4], ShmRef("r", 40))}))
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 ["output 'y' is 36 bytes", "region 'r'", "is 20 bytes", "shared_memory_byte_size >= 36"],
                 run({"x": ("FP32", [3, 4], ShmRef("r", 48))}, {"y": ShmRef("r", 20, 100)}))
    expect_error(grpc.StatusCode.NOT_FOUND,
                 ["output 'y': shared memory region 'nowhere' is not registered"],
                 run({"x": ("FP32", [3, 4], ShmRef("r", 48))}, {"y": ShmRef("nowhere", 36)}))
    extra = kshm.make_shm_infer_request("mlp", {"x": ("FP32", [3, 4], ShmRef("r", 48))})
    extra.raw_input_contents.append(x.tobytes())
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 ["request has 1 raw_input_contents but only 0 inputs outside shared memory"],
                 lambda: kserve.ModelInfer(extra))
    bad = codec.make_infer_request("mlp", {"x": x})
    bad.inputs[0].parameters["shared_memory_byte_size"].int64_param = 48
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 ["input 'x': shared_memory_byte_size given without 'shared_memory_region'"],
                 lambda: kserve.ModelInfer(bad))
    bad = codec.make_infer_request("mlp", {"x": x})
    bad.inputs[0].parameters["shared_memory_region"].int64_param = 3
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, ["'shared_memory_region' must be a non-empty string_param"],
                 lambda: kserve.ModelInfer(bad))
    bad = kshm.make_shm_infer_request("mlp", {"x": ("FP32", [3, 4], ShmRef("r", 48))})
    bad.inputs[0].parameters["shared_memory_byte_size"].string_param = "48"
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, ["'shared_memory_byte_size' must be an int64_param"],
                 lambda: kserve.ModelInfer(bad))
    # A shared-memory output that fits works on the same region, and plain requests still run.
    resp = run({"x": ("FP32", [3, 4], ShmRef("r", 48))}, {"y": ShmRef("r", 36, 100)})()
    assert list(resp.raw_output_contents) == [b""]
    np.testing.assert_allclose(s.get(np.float32, (3, 3), offset=108), mlp_expected(x), rtol=1e-6)
    still_serving(kserve)


def test_unregister_during_in_flight_request(kserve, server, seg):
    """Unregistering regions a running request uses answers OK at once; the request still reads and writes
    them (kept mapped until it is done), then the server unmaps them."""
    x = np.random.default_rng(7).random((2, 4), dtype=np.float32)
    sin, sout = seg(4096), seg(4096)
    register(kserve, "busy_in", sin)
    register(kserve, "busy_out", sout)
    n = sin.put(x)
    regions = server.service.shm.status("busy_in") + server.service.shm.status("busy_out")
    sched = server.service.manager.get("mlp", "1").scheduler
    real_run, inline_before = sched._run, sched.inline
    gate, started = threading.Event(), threading.Event()

    def gated(inputs, outputs):
        started.set()
        assert gate.wait(60)
        return real_run(inputs, outputs)

    sched._run, sched.inline = gated, False  # a gated run stands for a long one: it runs on the executor (short models run inline on the loop)
    try:
        fut = kserve.ModelInfer.future(kshm.make_shm_infer_request(
            "mlp", {"x": ("FP32", x.shape, ShmRef("busy_in", n))}, {"y": ShmRef("busy_out", 24)},
            model_version="1"), timeout=60)
        assert started.wait(60)
        kserve.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="busy_in"))
        kserve.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())
        assert not kserve.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions
        assert [r.users for r in regions] == [1, 1] and not any(r.closed for r in regions)
        expect_error(grpc.StatusCode.NOT_FOUND, ["shared memory region 'busy_in' is not registered"],
                     lambda: kserve.ModelInfer(kshm.make_shm_infer_request(
                         "mlp", {"x": ("FP32", x.shape, ShmRef("busy_in", n))}), timeout=60))
        gate.set()
        resp = fut.result(timeout=60)
    finally:
        gate.set()
        sched._run, sched.inline = real_run, inline_before
    assert list(resp.raw_output_contents) == [b""]
    np.testing.assert_allclose(sout.get(np.float32, (2, 3)), mlp_expected(x), rtol=1e-6)
    assert all(r.closed and r.users == 0 for r in regions)
    register(kserve, "busy_in", sin)  # the name can be registered again
    still_serving(kserve)


def test_shrunk_segment_is_refused_not_faulted(kserve, seg):
    """A client truncating its segment below a registered region gets FAILED_PRECONDITION (reading the
    mapping past the file's end would kill the server with SIGBUS)."""
    s = seg(8192)
    register(kserve, "shrink", s, byte_size=4096, offset=4096)
    os.ftruncate(s.fd, 4096)
    expect_error(grpc.StatusCode.FAILED_PRECONDITION,
                 ["region 'shrink'", "shrank to 4096 bytes", "unregister and register it again"],
                 lambda: kserve.ModelInfer(kshm.make_shm_infer_request(
                     "mlp", {"x": ("FP32", [1, 4], ShmRef("shrink", 16))})))
    still_serving(kserve)


def test_shutdown_unmaps_regions_and_keeps_segments(tmp_path, seg):
    s = seg(1024)
    srv = BackgroundServer(InferenceService(InferenceSettings(port=0, host="127.0.0.1", store=tmp_path))).start()
    try:
        with make_channel(srv.address) as ch:
            register(pb_grpc.GRPCInferenceServiceStub(ch), "r", s)
        (region,) = srv.service.shm.status()
    finally:
        srv.stop()
    assert region.closed and not srv.service.shm.status()
    assert s.path.exists()  # the client's segment is the client's to unlink


def test_region_count_is_bounded(tmp_path, seg):
    s = seg(1024)
    settings = InferenceSettings(port=0, host="127.0.0.1", store=tmp_path, max_shm_regions=2)
    srv = BackgroundServer(InferenceService(settings)).start()
    try:
        with make_channel(srv.address) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            register(stub, "one", s, byte_size=512)
            register(stub, "two", s, byte_size=512, offset=512)
            expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         ["region 'three'", "2 regions are registered", "--max-shm-regions", "unregister"],
                         lambda: register(stub, "three", s, byte_size=16))
            stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="one"))
            register(stub, "three", s, byte_size=16)  # a freed place is usable again
            assert sorted(stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions) == ["three",
                                                                                                       "two"]
    finally:
        srv.stop()


# --- --no-shared-memory and the token guard -----------------------------------------------------

@pytest.fixture(scope="module")
def restricted(tmp_path_factory):
    root = tmp_path_factory.mktemp("shm-off")
    mlp(root / "repo" / "mlp" / "1" / "model.onnx")
    settings = InferenceSettings(port=0, host="127.0.0.1", store=root / "store", repository=root / "repo",
                                 shared_memory=False, auth_token=TOKEN)
    srv = BackgroundServer(InferenceService(settings)).start()
    yield srv
    srv.stop()


def test_no_shared_memory_flag_and_token_guard(restricted, seg):
    assert parse_settings(InferenceSettings, ["--no-shared-memory"]).shared_memory is False
    assert parse_settings(InferenceSettings, []).shared_memory is True
    s = seg(1024)
    req = pb.SystemSharedMemoryRegisterRequest(name="r", key=s.key, byte_size=64)
    with make_channel(restricted.address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        assert "system_shared_memory" not in stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
        expect_error(grpc.StatusCode.UNAUTHENTICATED, ["authorization: Bearer"],
                     lambda: stub.SystemSharedMemoryRegister(req))
        expect_error(grpc.StatusCode.UNAUTHENTICATED, ["authorization: Bearer"],
                     lambda: stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest()))
        assert not stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions  # read-only: open
    with make_channel(restricted.address, token=TOKEN) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        expect_error(grpc.StatusCode.FAILED_PRECONDITION, ["started with --no-shared-memory"],
                     lambda: stub.SystemSharedMemoryRegister(req))
        expect_error(grpc.StatusCode.FAILED_PRECONDITION, ["started with --no-shared-memory",
                                                           "raw_input_contents"],
                     lambda: stub.ModelInfer(kshm.make_shm_infer_request(
                         "mlp", {"x": ("FP32", [1, 4], ShmRef("r", 16))})))
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())
        x = np.ones((1, 4), np.float32)
        out = codec.decode_outputs(stub.ModelInfer(codec.make_infer_request("mlp", {"x": x})))
        np.testing.assert_allclose(out["y"], mlp_expected(x), rtol=1e-6)
