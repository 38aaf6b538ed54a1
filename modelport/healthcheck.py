"""Container health probe: ``python -m modelport.healthcheck ADDRESS`` asks grpc.health.v1.

Used as the Docker ``HEALTHCHECK`` of every image and as an ``exec`` probe on Kubernetes when a
service runs with TLS (the kubelet's built-in ``grpc`` probe speaks plaintext only). It imports
grpc and the health stubs only (no TensorFlow, no onnxruntime), so it starts in well under a second.

Exit status: 0 when the service answers SERVING, 1 otherwise (NOT_SERVING, unreachable,
timeout, TLS refused). TLS options fall back to ``MODELPORT_HEALTHCHECK_*`` environment
variables so an image can set them once for its HEALTHCHECK line.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ENV_PREFIX = "MODELPORT_HEALTHCHECK_"


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name) or None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse probe flags; each TLS flag defaults to its MODELPORT_HEALTHCHECK_<NAME> variable."""
    p = argparse.ArgumentParser(prog="python -m modelport.healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("address", nargs="?", default=_env("ADDRESS") or "localhost:50051",
                   help="host:port of the gRPC service (env MODELPORT_HEALTHCHECK_ADDRESS)")
    p.add_argument("--service", default=_env("SERVICE") or "",
                   help="health service name to ask about; '' (default) is the whole server")
    p.add_argument("--timeout", type=float, default=float(_env("TIMEOUT") or 3.0), help="seconds")
    p.add_argument("--tls-ca", default=_env("TLS_CA"), help="PEM CA that signed the server certificate")
    p.add_argument("--tls-cert", default=_env("TLS_CERT"), help="PEM client certificate (mTLS)")
    p.add_argument("--tls-key", default=_env("TLS_KEY"), help="PEM client key (mTLS)")
    p.add_argument("--server-name", default=_env("SERVER_NAME"),
                   help="name the server certificate must carry when it differs from the address host")
    return p.parse_args(argv)


def check(address: str, *, service: str = "", timeout: float = 3.0, tls_ca: str | None = None,
          tls_cert: str | None = None, tls_key: str | None = None, server_name: str | None = None) -> str:
    """Return the health status name (``SERVING``, ``NOT_SERVING``, ...) of ``address``.

    Raises ``grpc.RpcError`` when the server cannot be reached or refuses the connection.
    TLS is used as soon as any of ``tls_ca``/``tls_cert``/``tls_key`` is given.
    """
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if tls_ca or tls_cert or tls_key:
        read = lambda p: open(p, "rb").read() if p else None  # noqa: E731, SIM115
        creds = grpc.ssl_channel_credentials(read(tls_ca), read(tls_key), read(tls_cert))
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    """Probe once; print the outcome; 0 when SERVING."""
    a = parse_args(argv)
    try:
        status = check(a.address, service=a.service, timeout=a.timeout, tls_ca=a.tls_ca,
                       tls_cert=a.tls_cert, tls_key=a.tls_key, server_name=a.server_name)
    except grpc.RpcError as err:
        print(f"{a.address}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except OSError as err:  # unreadable certificate files
        print(f"{a.address}: {err}", file=sys.stderr)
        return 1
    print(f"{a.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
