"""Uploaded bytes are parsed in sniffer subprocesses, never in the converter's or optimizer's own process.

A hostile ONNX file: a 10 MB protobuf of five million empty ``NodeProto`` entries. Parsed in full it asks
the parser for ~800 MB (about 75 bytes per file byte), and a file a few times larger takes a service
process down. Each service below runs as its own process (``python -m converter_svc`` /
``optimizer_svc``, with a token): the request is INVALID_ARGUMENT naming the memory bound, the service
keeps answering, and the service process never loaded onnx's parser (its ``/proc/<pid>/maps`` holds no
``onnx_cpp2py_export``) while its sniffer child did.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import psutil
import pytest
from trust_helpers import TOKEN, health, rpc_error, token_channel, upload

from modelport.v1 import converter_pb2, converter_pb2_grpc, optimizer_pb2, optimizer_pb2_grpc

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ONNX_PARSER = "onnx_cpp2py_export"  # onnx's C extension: mapped by any process that imported onnx


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | 0x80 if v else b)
        if not v:
            return bytes(out)


def protobuf_bomb(path: Path, nodes: int = 5_000_000) -> Path:
    """A ModelProto (ir_version 8) whose graph holds ``nodes`` empty nodes (2 bytes each) and one output."""
    graph = b"\x0a\x00" * nodes + b"\x62\x03\x0a\x01y"  # field 1 (node) empty; field 12 (output) name "y"
    path.write_bytes(b"\x08\x08" + b"\x3a" + _varint(len(graph)) + graph)  # field 1 ir_version; field 7 graph
    return path


def maps_onnx(pid: int) -> bool:
    return ONNX_PARSER in Path(f"/proc/{pid}/maps").read_text()


class ServiceProcess:
    """``python -m <module>`` on a free port with its token in the environment; no warm workers."""

    def __init__(self, module: str, name: str, store: Path, *args: str, env: dict[str, str] | None = None,
                 log: Path | None = None):
        env = {**os.environ, f"MODELPORT_{name.upper()}_AUTH_TOKEN": TOKEN, "PYTHONPATH": str(ROOT),
               "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0",
                                      "--store", str(store), "--warm-workers", "0", *args], env=env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        for line in self.proc.stdout:
            if m := re.match(rf"{name} SERVING on port (\d+)", line):
                self.address = f"127.0.0.1:{m.group(1)}"
                break
        else:
            self.stop()
            pytest.fail(f"the {name} did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        if self.log is not subprocess.DEVNULL:
            self.log.close()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    return protobuf_bomb(tmp_path_factory.mktemp("bomb") / "bomb.onnx")


@pytest.mark.parametrize("service", ["converter", "optimizer"])
def test_a_protobuf_bomb_is_parsed_in_a_sniffer_not_the_service(service, bomb, tmp_path):
    srv = ServiceProcess(f"{service}_svc", service, tmp_path / "store")
    try:
        assert not maps_onnx(srv.proc.pid)
        with token_channel(srv.address) as ch:
            ref = upload(ch, bomb)
            if service == "converter":
                call = lambda: list(converter_pb2_grpc.ConverterStub(ch).Convert(  # noqa: E731
                    converter_pb2.ConvertRequest(source=ref, target_format="onnx"), timeout=120))
            else:
                call = lambda: list(optimizer_pb2_grpc.OptimizerStub(ch).Optimize(  # noqa: E731
                    optimizer_pb2.OptimizeRequest(model=ref, techniques=["graph"]), timeout=120))
            err = rpc_error(call)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
            assert re.search(r"reading the model took more than the 3\d\d\.\d MB of memory allowed for a "
                             r"10\.0 MB upload \(8x its size \+ 268\.4 MB\): .* malformed or built to exhaust "
                             "memory", err.details()), err.details()
            assert health(ch) == "SERVING"
            # The same service still does its work: a second request is answered the same way, by a sniffer.
            assert rpc_error(call).code() == grpc.StatusCode.INVALID_ARGUMENT
        children = psutil.Process(srv.proc.pid).children(recursive=True)
        # The parse happened in a sniffer: the service process never loaded onnx, its child did.
        assert not maps_onnx(srv.proc.pid)
        assert [c.pid for c in children if maps_onnx(c.pid)], [c.cmdline() for c in children]
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def converter(tmp_path_factory):
    """An in-process converter with a token; tests point its sniffer at parsers that crash or hang."""
    from converter_svc.service import ConverterService
    from converter_svc.settings import ConverterSettings
    from modelport.runtime.background import BackgroundServer

    service = ConverterService(ConverterSettings(host="127.0.0.1", port=0, store=tmp_path_factory.mktemp("conv"),
                                                 auth_token=TOKEN, warm_workers=0, sniff_timeout_s=5))
    srv = BackgroundServer(service).start()
    yield srv
    srv.stop(grace=1)


@pytest.mark.parametrize(("job", "code", "message"), [
    ("converter_test_jobs:crash_sniff", grpc.StatusCode.INVALID_ARGUMENT,
     "reading the model's format crashed the process that reads uploads (killed by SIGSEGV); the file is "
     "malformed or built to crash a parser"),
    ("converter_test_jobs:hang_sniff", grpc.StatusCode.DEADLINE_EXCEEDED,
     "reading the model's format took longer than 5s and was stopped; the file is malformed or built to hang "
     "a parser"),
])
def test_a_parser_that_crashes_or_hangs_costs_only_the_sniffer(converter, bomb, job, code, message):
    service = converter.service
    with token_channel(converter.address) as ch:
        ref = upload(ch, bomb)
        stub = converter_pb2_grpc.ConverterStub(ch)
        service.sniff_job = job
        try:
            err = rpc_error(lambda: list(stub.Convert(converter_pb2.ConvertRequest(source=ref, target_format="onnx"),
                                                      timeout=120)))
        finally:
            service.sniff_job = type(service).sniff_job
        assert err.code() == code and message in err.details(), err.details()
        assert health(ch) == "SERVING"
        # The next request gets a fresh sniffer, which reads the real file: the bound applies as before.
        err = rpc_error(lambda: list(stub.Convert(converter_pb2.ConvertRequest(source=ref, target_format="onnx"),
                                                  timeout=120)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "reading the model took more than" in err.details()
