"""Prometheus metrics shared by every server, and the HTTP endpoint serving /metrics and the
plain-HTTP health checks /livez and /readyz."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

RPC_DURATION = Histogram(
    "modelyard_rpc_duration_seconds",
    "Server-side duration of gRPC calls.",
    ["component", "service", "method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds are not worth a log line each."""


class MetricsEndpoint:
    """The HTTP server of one process: `/metrics` for Prometheus; `/livez` (200 while the process
    answers) and `/readyz` (200 while its gRPC health is SERVING, else 503) for probes that cannot
    speak gRPC over TLS, such as Kubernetes' native gRPC probe."""

    def __init__(self, host: str, port: int, *, ready: Callable[[], bool] = lambda: True) -> None:
        metrics = make_wsgi_app()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path in ("/livez", "/readyz"):
                ok = path == "/livez" or ready()
                start_response(
                    "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
                )
                return [b"ok\n" if ok else b"not serving\n"]
            return metrics(environ, start_response)

        server_class = type("Server", (ThreadingWSGIServer,), {"address_family": _family(host, port)})
        self._server: WSGIServer = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        self.port: int = self._server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _family(host: str, port: int) -> socket.AddressFamily:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]
