"""Every RPC of the three services, fed generated request messages (hypothesis, seeded and bounded): never
INTERNAL, never a crash, health answering throughout.

Messages are built from the protobuf descriptors, so a new field or RPC is fuzzed without a change here.
Values mix the hostile (``..``, ``/etc/passwd``, NUL, 10 kB strings, int64 extremes, NaN/Inf, unknown enum
numbers) with the plausible (the served model's name and tensor names, datatypes, digests), so requests
reach past the first check. Half of the calls carry the token. The figures (requests tried, codes seen per
RPC) are printed and written to ``$MODELPORT_FUZZ_REPORT`` when set (README, Security).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict

import grpc
import pytest
from google.protobuf import descriptor as pbd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inference_fixtures import mlp
from trust_helpers import TOKEN, health

from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport import repository
from modelport.kserve.v2 import grpc_service_pb2 as kpb
from modelport.runtime.background import BackgroundServer
from modelport.runtime.channels import channel_options
from modelport.v1 import converter_pb2, optimizer_pb2, serving_pb2

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MODELPORT_FUZZ_EXAMPLES", "40"))  # per RPC
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}

HOSTILE_STRINGS = ["", "..", "../", "../repo/m", "/etc/passwd", "a\x00b", "x" * 10_000, "%s%n", "sha256:",
                   "sha256:" + "0" * 64, "127.0.0.1:1", "localhost:22", "\u202e", "-1", "1e999", "99999999999999999999"]
PLAUSIBLE_STRINGS = ["mlp", "x", "y", "1", "FP32", "INT64", "BYTES", "onnx", "tflite", "graph", "auto", "cpu",
                     "config", "shared_memory_region", "shared_memory_byte_size", "r", "/mp_fuzz"]
INT_EDGES = [0, 1, -1, 2, 8, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 2**32, 10**6]


def _strings():
    return st.one_of(st.sampled_from(HOSTILE_STRINGS + PLAUSIBLE_STRINGS), st.text(max_size=24))


def _scalar(field: pbd.FieldDescriptor):
    t = field.type
    if t == pbd.FieldDescriptor.TYPE_STRING:
        return _strings()
    if t == pbd.FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"\0" * 16, b"\xff" * 48]))
    if t == pbd.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (pbd.FieldDescriptor.TYPE_FLOAT, pbd.FieldDescriptor.TYPE_DOUBLE):
        return st.one_of(st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, 1e308]),
                         st.floats(allow_nan=True, width=32 if t == pbd.FieldDescriptor.TYPE_FLOAT else 64))
    if t == pbd.FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 1000))
    unsigned = t in (pbd.FieldDescriptor.TYPE_UINT32, pbd.FieldDescriptor.TYPE_UINT64, pbd.FieldDescriptor.TYPE_FIXED32,
                     pbd.FieldDescriptor.TYPE_FIXED64)
    bits = 32 if t in (pbd.FieldDescriptor.TYPE_INT32, pbd.FieldDescriptor.TYPE_UINT32, pbd.FieldDescriptor.TYPE_SINT32,
                       pbd.FieldDescriptor.TYPE_FIXED32, pbd.FieldDescriptor.TYPE_SFIXED32) else 64
    lo, hi = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.one_of(st.sampled_from([v for v in INT_EDGES if lo <= v <= hi]), st.integers(lo, hi))


DATATYPES = ["FP32", "FP16", "FP64", "INT8", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "BF16", "fp32", "COMPLEX"]
# Fields whose plausible values take a request past its first check (the served model, its tensors).
def mostly(plausible, share: int = 8):
    """``plausible`` in ``share`` of 10 draws, a hostile or random string otherwise."""
    return st.integers(0, 9).flatmap(lambda i: plausible if i < share else _strings())


# Fields whose plausible values take a request past its first check (the served model, its tensors).
BY_NAME = {
    "model_name": lambda: mostly(st.just("mlp")),
    "name": lambda: mostly(st.sampled_from(["mlp", "x", "y"])),
    "model_version": lambda: mostly(st.sampled_from(["", "1"])),
    "datatype": lambda: mostly(st.sampled_from(DATATYPES), 9),
    "shape": lambda: st.lists(st.one_of(st.sampled_from([1, 2, 4, 0, -1, 2**31, 2**62]), st.integers(0, 16)),
                              max_size=4),
}


def message(desc: pbd.Descriptor, depth: int = 0):
    """A strategy of dicts field name -> value for ``desc`` (fields left out at random, but the
    BY_NAME ones always present: they lead requests deeper)."""
    fields, required = {}, {}
    for f in desc.fields:
        if f.message_type is not None:
            if f.message_type.GetOptions().map_entry:
                key, value = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
                vstrat = message(value.message_type, depth + 1) if value.message_type else _scalar(value)
                fields[f.name] = st.dictionaries(_scalar(key), vstrat, max_size=3 if depth < 3 else 0)
                continue
            if depth >= 3:
                continue
            sub = message(f.message_type, depth + 1)
            fields[f.name] = st.lists(sub, max_size=3) if f.is_repeated else sub
        elif f.name in BY_NAME:
            required[f.name] = BY_NAME[f.name]()
        else:
            fields[f.name] = st.lists(_scalar(f), max_size=4) if f.is_repeated else _scalar(f)
    return st.fixed_dictionaries(required, optional=fields)


def fill(msg, values: dict):
    for name, value in values.items():
        f = msg.DESCRIPTOR.fields_by_name[name]
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            target = getattr(msg, name)
            for k, v in value.items():
                if isinstance(v, dict):
                    fill(target[k], v)
                else:
                    target[k] = v
        elif f.message_type is not None:
            if f.is_repeated:
                for item in value:
                    fill(getattr(msg, name).add(), item)
            else:
                fill(getattr(msg, name), value)
        elif f.is_repeated:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    return msg


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    from converter_svc.service import ConverterService
    from converter_svc.settings import ConverterSettings
    from optimizer_svc.service import OptimizerService
    from optimizer_svc.settings import OptimizerSettings

    repo = tmp_path_factory.mktemp("fuzz-repo")
    src = tmp_path_factory.mktemp("fuzz-src")
    repository.write_model(repo, "mlp", 1, mlp(src / "m.onnx"),
                           repository.config_from_onnx("mlp", src / "m.onnx", max_batch_size=8))
    common = {"host": "127.0.0.1", "port": 0, "auth_token": TOKEN}
    started = {
        "inference": BackgroundServer(InferenceService(InferenceSettings(
            store=tmp_path_factory.mktemp("fi"), repository=repo, execution_provider="cpu", **common))).start(),
        "converter": BackgroundServer(ConverterService(ConverterSettings(
            store=tmp_path_factory.mktemp("fc"), warm_workers=0, **common))).start(),
        "optimizer": BackgroundServer(OptimizerService(OptimizerSettings(
            store=tmp_path_factory.mktemp("fo"), warm_workers=0, **common))).start(),
    }
    yield started
    for srv in started.values():
        srv.stop(grace=1)


# (service, full method, request class, client streaming, server streaming)
def rpcs() -> list[tuple[str, str, type, bool, bool]]:
    from modelport.v1 import artifacts_pb2 as a
    out = []
    for svc_name, module in (("converter", converter_pb2), ("optimizer", optimizer_pb2), ("inference", serving_pb2),
                             ("inference", kpb), ("inference", a), ("converter", a), ("optimizer", a)):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                cls = _class(m.input_type)
                out.append((svc_name, f"/{service.full_name}/{m.name}", cls, m.client_streaming, m.server_streaming))
    from grpc_health.v1 import health_pb2
    for svc_name in ("converter", "optimizer", "inference"):  # Check; Watch streams forever by design
        out.append((svc_name, "/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest, False, False))
    return out


def _class(desc: pbd.Descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


SEEN: dict[str, Counter] = defaultdict(Counter)


@pytest.mark.parametrize(("service", "method", "request_cls", "client_stream", "server_stream"), rpcs(),
                         ids=lambda v: v if isinstance(v, str) and v.startswith("/") else None)
def test_fuzz_rpc(services, service, method, request_cls, client_stream, server_stream):
    srv = services[service]
    if service == "inference" and not srv.service.manager.versions("mlp"):  # an earlier RPC's fuzz unloaded it
        srv.call(srv.service.manager.load_from_repository("mlp"))
    plain = grpc.insecure_channel(srv.address, options=channel_options())
    with_token = grpc.insecure_channel(srv.address, options=channel_options())
    call_kind = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
                 (True, True): "stream_stream"}[(client_stream, server_stream)]

    def stub(ch):
        return getattr(ch, call_kind)(method, request_serializer=request_cls.SerializeToString,
                                      response_deserializer=lambda b: b)

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(values=st.lists(message(request_cls.DESCRIPTOR), min_size=1, max_size=3 if client_stream else 1),
           token=st.booleans())
    def run(values, token):
        reqs = [fill(request_cls(), v) for v in values]
        ch = with_token if token else plain
        md = (("authorization", f"Bearer {TOKEN}"),) if token else ()
        try:
            arg = iter(reqs) if client_stream else reqs[0]
            result = stub(ch)(arg, timeout=60, metadata=md)
            if server_stream:
                result = list(result)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
            assert code not in FORBIDDEN, f"{method} answered {code.name}: {err.details()} for {reqs}"
        SEEN[method][code.name] += 1

    try:
        run()
        assert health(plain) == "SERVING"
    finally:
        plain.close()
        with_token.close()
        report = {m: dict(c) for m, c in sorted(SEEN.items())}
        path = os.environ.get("MODELPORT_FUZZ_REPORT")
        if path:
            with open(path, "w") as f:
                json.dump({"examples_per_rpc": EXAMPLES, "rpcs": report}, f, indent=1)

