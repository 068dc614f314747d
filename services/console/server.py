"""The console's process: uvicorn serving the app on a socket bound here (so port 0 works and the
real port is logged in the `server.started` line every Modelyard server writes), until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from modelyard.common.http_server import SignallessUvicorn, bind_tcp
from modelyard.common.log import event
from modelyard.common.server import is_loopback, wait_for_shutdown_signal
from modelyard.console.app import create_app
from modelyard.console.settings import ConsoleSettings

log = logging.getLogger("modelyard.server")


class ConsoleServer:
    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.address = ""

    async def run(self) -> None:
        settings = self.settings
        if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
            raise ValueError("set both MODELYARD_TLS_CERT_FILE and MODELYARD_TLS_KEY_FILE, or neither")
        sock = bind_tcp(settings.host, settings.port, "the console")
        host = sock.getsockname()[0]
        host = f"[{host}]" if ":" in host else host
        self.address = f"{host}:{sock.getsockname()[1]}"
        server: SignallessUvicorn | None = None
        app = create_app(settings, stopping=lambda: server is not None and server.should_exit)
        server = SignallessUvicorn(
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
