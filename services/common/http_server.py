"""What the services serving HTTP with uvicorn inside their own event loop share (the console and
a worker's OIP over HTTP): a socket bound before anything starts, and a uvicorn that leaves the
process's signals to the service."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn


class SignallessUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The service owns SIGTERM/SIGINT (it drains in order): uvicorn's own handler would re-raise
        # SIGTERM after shutting down, and the process would die of it instead of exiting 0.
        yield


def bind_tcp(host: str, port: int, what: str, *, backlog: int = 128) -> socket.socket:
    """A listening non-blocking socket on host:port (IPv6 for a host with ':'); `what` names it in
    the error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets created with it; without it a
    # keep-alive response's body waits for the client's delayed ACK of its headers (40 ms a page).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot bind {what} to {host}:{port}: {error.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
