"""Shared fixtures: real services on loopback port 0, a temp artifact store per session."""

from __future__ import annotations

import os

# Keep TensorFlow quiet and deterministic in the test process (it is imported lazily).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import grpc
import pytest

from modelport.runtime.background import BackgroundServer


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: slow tests with real TensorFlow work")


@pytest.fixture
def store_dir(tmp_path):
    d = tmp_path / "store"
    d.mkdir()
    return d


def start_background(service) -> BackgroundServer:
    """Start a service on 127.0.0.1:0 in a background loop thread."""
    return BackgroundServer(service).start()


@pytest.fixture
def channel_to():
    """Factory: sync channels to addresses, closed at teardown."""
    chans = []

    def make(address: str):
        from modelport.runtime.channels import channel_options

        ch = grpc.insecure_channel(address, options=channel_options())
        chans.append(ch)
        return ch

    yield make
    for ch in chans:
        ch.close()
