"""Converter test fixtures: one session-scoped converter server (workers reused), upload/convert helpers.

Import the fixtures into a test module with ``from converter_fixtures import *``.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from converter_svc.service import ConverterService
from converter_svc.settings import ConverterSettings
from modelport.runtime.artifacts import download_to_file, upload_requests
from modelport.runtime.background import BackgroundServer
from modelport.runtime.channels import channel_options
from modelport.v1 import artifacts_pb2_grpc, converter_pb2, converter_pb2_grpc


def make_converter(store: Path, **overrides) -> ConverterService:
    """A converter service on 127.0.0.1:0 with a store folder of its own."""
    settings = ConverterSettings(host="127.0.0.1", port=0, store=store, **overrides)
    return ConverterService(settings)


class ConverterClient:
    """Blocking helpers around one channel to a converter."""

    def __init__(self, address: str):
        self.address = address
        self.channel = grpc.insecure_channel(address, options=channel_options())
        self.artifacts = artifacts_pb2_grpc.ArtifactsStub(self.channel)
        self.converter = converter_pb2_grpc.ConverterStub(self.channel)

    def upload(self, path: Path, media_type: str = "application/octet-stream"):
        return self.artifacts.Upload(upload_requests(path, media_type))

    def upload_npz(self, tmp_path: Path, **arrays):
        p = tmp_path / "samples.npz"
        np.savez(p, **arrays)
        return self.upload(p, "application/vnd.modelport.npz")

    def convert(self, source, target: str, timeout: float = 300, **kw) -> list:
        """All JobEvents of a Convert call (raises grpc.RpcError on failure)."""
        parity = kw.pop("parity", None)
        req = converter_pb2.ConvertRequest(source=source, target_format=target, **kw)
        if parity is not None:
            req.parity.CopyFrom(parity)
        return list(self.converter.Convert(req, timeout=timeout))

    def convert_error(self, source, target: str, **kw) -> tuple[grpc.RpcError, list]:
        """The RpcError of a failing Convert call and the events streamed before it."""
        events = []
        parity = kw.pop("parity", None)
        req = converter_pb2.ConvertRequest(source=source, target_format=target, **kw)
        if parity is not None:
            req.parity.CopyFrom(parity)
        try:
            for ev in self.converter.Convert(req, timeout=300):
                events.append(ev)
        except grpc.RpcError as e:
            return e, events
        raise AssertionError(f"Convert succeeded unexpectedly: {events[-1] if events else None}")

    def download(self, ref, out: Path) -> Path:
        download_to_file(self.artifacts, ref.digest, out)
        return out

    def close(self):
        self.channel.close()


@pytest.fixture(scope="session")
def converter_server(tmp_path_factory):
    """The shared converter: one warm worker reused for every job (worker_max_jobs=0)."""
    store = tmp_path_factory.mktemp("converter-store")
    srv = BackgroundServer(make_converter(store, worker_max_jobs=0, max_concurrent_jobs=1)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def conv(converter_server):
    client = ConverterClient(converter_server.address)
    yield client
    client.close()
