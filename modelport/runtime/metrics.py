"""Prometheus metrics shared by all services (one process may host several in tests).

Updated on every RPC, so they are ``modelport.fast_metrics`` counters and histograms (same output as
``prometheus_client``'s, a fraction of the cost per update)."""

from __future__ import annotations

from prometheus_client import start_http_server

from modelport.fast_metrics import FastCounter, FastHistogram

RPC_REQUESTS = FastCounter(
    "modelport_grpc_requests_total",
    "gRPC calls handled, by service, method and status code.",
    ["service", "method", "code"],
)
RPC_LATENCY = FastHistogram(
    "modelport_grpc_request_seconds",
    "gRPC call duration in seconds, by service and method.",
    ["service", "method"],
    (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> int:
    """Serve /metrics over HTTP; returns the bound port (``port=0`` picks one)."""
    server, _thread = start_http_server(port, addr=addr)
    return server.server_address[1]
