"""The console's process: uvicorn serving the app on a socket bound here (so port 0 works and the
real port is logged in the `server.started` line every Modelyard server writes), until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from modelyard.common.log import event
from modelyard.common.server import is_loopback, wait_for_shutdown_signal
from modelyard.console.app import create_app
from modelyard.console.settings import ConsoleSettings

log = logging.getLogger("modelyard.server")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals are ours (wait_for_shutdown_signal): uvicorn's own handler would re-raise SIGTERM
        # after shutting down, and the process would die of it instead of exiting 0.
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets created with it; without it a
    # keep-alive response's body waits for the client's delayed ACK of its headers (40 ms a page).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot bind the console to {host}:{port}: {error.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class ConsoleServer:
    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.address = ""

    async def run(self) -> None:
        settings = self.settings
        if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
            raise ValueError("set both MODELYARD_TLS_CERT_FILE and MODELYARD_TLS_KEY_FILE, or neither")
        sock = _bind(settings.host, settings.port)
        host = sock.getsockname()[0]
        host = f"[{host}]" if ":" in host else host
        self.address = f"{host}:{sock.getsockname()[1]}"
        server: _Server | None = None
        app = create_app(settings, stopping=lambda: server is not None and server.should_exit)
        server = _Server(
            uvicorn.Config(
                app,
                log_config=None,
                access_log=False,
                lifespan="on",
                ssl_certfile=settings.tls_cert_file,
                ssl_keyfile=settings.tls_key_file,
                timeout_graceful_shutdown=max(int(settings.grace_period_s), 1),
                proxy_headers=False,
                server_header=False,
            )
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="console-http")
        # uvicorn only flips a flag once it listens (no event to await).
        while not server.started and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if serving.done():
            serving.result()
            return
        if not settings.tls_cert_file and not is_loopback(settings.host):
            event(
                log,
                "server.plaintext",
                level=logging.WARNING,
                component="console",
                address=self.address,
                detail="listening beyond this machine without TLS: tokens and session cookies travel in "
                "clear text; set MODELYARD_TLS_CERT_FILE and MODELYARD_TLS_KEY_FILE",
            )
        event(
            log,
            "server.started",
            component="console",
            address=self.address,
            metrics_port=None,
            url=f"{settings.scheme}://{self.address}/",
            registry=settings.registry,
            benchmark=settings.benchmark,
            login="token" if settings.admin_tokens or settings.reader_tokens else "none",
        )
        stop = asyncio.create_task(wait_for_shutdown_signal(), name="console-signals")
        try:
            await asyncio.wait({serving, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            server.should_exit = True
            stop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop
            await serving
            sock.close()
        event(log, "server.stopped", component="console")
