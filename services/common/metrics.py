"""Prometheus metrics shared by every server, and the /metrics HTTP endpoint."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import Histogram, start_http_server

RPC_DURATION = Histogram(
    "modelyard_rpc_duration_seconds",
    "Server-side duration of gRPC calls.",
    ["component", "service", "method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class MetricsEndpoint:
    """The /metrics HTTP server of one process."""

    def __init__(self, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
