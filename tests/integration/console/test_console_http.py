"""The console's HTTP plumbing that page timings depend on: connections accepted with TCP_NODELAY (a
keep-alive response's body must not wait for the client's delayed ACK), and the `Server-Timing`
header that tells the console's own time from the network's."""

from __future__ import annotations

import asyncio
import http.client
import re
import socket

from support import ServerProcess, free_port

from modelyard.common.auth import new_token, token_verifier
from modelyard.common.http_server import bind_tcp


async def test_connections_the_console_accepts_have_nodelay() -> None:
    listening = bind_tcp("127.0.0.1", 0, "the console")
    flags: list[int] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        flags.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=listening)
    try:
        host, port = listening.getsockname()[:2]
        _, writer = await asyncio.open_connection(host, port)
        for _ in range(100):
            if flags:
                break
            await asyncio.sleep(0.02)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert flags and flags[0] != 0, "asyncio leaves Nagle on: the socket was not created as IPPROTO_TCP"


def test_every_response_carries_the_consoles_own_time() -> None:
    console = ServerProcess(
        ["-m", "modelyard.console", "--port", "0", "--registry", f"127.0.0.1:{free_port()}",
         "--benchmark", f"127.0.0.1:{free_port()}"],
        env={"MODELYARD_ADMIN_TOKENS": f"ops:{token_verifier(new_token())}"},
    )  # fmt: skip
    try:
        host, port = console.address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        for path in ("/login", "/catalog", "/static/console.css"):  # a page, a redirect, an asset
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            timing = response.getheader("server-timing") or ""
            assert re.fullmatch(r"app;dur=\d+\.\d\d", timing), (path, response.status, timing)
        conn.close()
    finally:
        console.terminate()
