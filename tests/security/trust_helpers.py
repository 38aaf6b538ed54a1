"""Helpers of the security tests: the token, channels with and without it, health, stored digests."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelport.runtime.artifacts import upload_requests
from modelport.runtime.channels import make_channel
from modelport.store import ArtifactStore
from modelport.v1 import artifacts_pb2, artifacts_pb2_grpc

TOKEN = "s3cret-token"


def token_channel(address: str, token: str = TOKEN):
    """A sync channel that sends ``authorization: Bearer <token>`` on every call (use with ``with``)."""
    return make_channel(address, token=token)


def health(channel, timeout: float = 10) -> str:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def rpc_error(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def upload(channel, path: Path, media_type: str = "") -> artifacts_pb2.ArtifactRef:
    return artifacts_pb2_grpc.ArtifactsStub(channel).Upload(
        upload_requests(path, media_type or "application/octet-stream"), timeout=60)


def stored_digests(store: ArtifactStore) -> set[str]:
    """Every artifact visible in a store."""
    return {"sha256:" + p.name for p in store.blob_dir.iterdir()}
