"""The console's way to the registry and the benchmark service: `modelyard.client` clients, one
pair per user token, and failed calls phrased as the CLI phrases them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import grpc

from modelyard.cli.errors import from_client_error
from modelyard.client import BenchmarkClient, ClientSettings, ModelyardError, RegistryClient
from modelyard.console.settings import ConsoleSettings

# Distinct tokens in use at once (users, not sessions): beyond it the least recently used pair of
# channels is closed and reopened on that user's next call.
MAX_CLIENTS = 64
_OUTAGE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class _Clients:
    registry: RegistryClient
    benchmark: BenchmarkClient


@dataclass(frozen=True)
class Problem:
    """A failed call as the page shows it: what was wrong and what to do."""

    message: str
    status: int  # the HTTP status of a page that could not be rendered because of it
    outage: bool  # the service did not answer: the page retries by itself

    @property
    def signed_out(self) -> bool:
        return self.status == 401


class Backends:
    """The client library binds a token to a client (its settings), so the console keeps one
    client per token rather than one per request: a channel per page load would pay a connection
    (and a TLS handshake) every time, while users are few and stay."""

    def __init__(self, settings: ConsoleSettings, client: ClientSettings | None = None) -> None:
        self.settings = settings
        base = client if client is not None else ClientSettings()
        self._base = base.model_copy(update={"timeout_s": settings.call_timeout_s})
        self._clients: OrderedDict[str, _Clients] = OrderedDict()
        self._retiring: set[asyncio.Task[None]] = set()

    def _key(self, token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    async def _pair(self, token: str) -> _Clients:
        key = self._key(token)
        found = self._clients.get(key)
        if found is not None:
            self._clients.move_to_end(key)
            return found
        # No token (auth off): the settings' own, from MODELYARD_TOKEN if the operator set one.
        settings = self._base.model_copy(update={"token": token}) if token else self._base
        pair = _Clients(
            RegistryClient(self.settings.registry, settings),
            BenchmarkClient(self.settings.benchmark, settings),
        )
        self._clients[key] = pair
        while len(self._clients) > MAX_CLIENTS:
            _, old = self._clients.popitem(last=False)
            self._retire(old)
        return pair

    async def registry(self, token: str) -> RegistryClient:
        return (await self._pair(token)).registry

    async def benchmark(self, token: str) -> BenchmarkClient:
        return (await self._pair(token)).benchmark

    async def forget(self, token: str) -> None:
        """Drop a token's channels after an outage: a fresh channel connects at once when the
        service is back, where the old one would wait out gRPC's growing reconnect backoff."""
        pair = self._clients.pop(self._key(token), None)
        if pair is not None:
            self._retire(pair)

    def _retire(self, pair: _Clients) -> None:
        # Other requests of the same user may be mid-call on these channels (a live stream, a page
        # in another tab): closing them now would fail those calls with CANCELLED, so they close
        # once every call started on them has met its deadline.
        task = asyncio.create_task(self._close_later(pair), name="console-retire-channels")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_later(self, pair: _Clients) -> None:
        try:
            await asyncio.sleep(self.settings.call_timeout_s + 1.0)
        finally:
            await _close(pair)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._clients:
            _, pair = self._clients.popitem()
            await _close(pair)

    def explain(self, error: ModelyardError, *, service: str) -> Problem:
        """`error` from `service` ("registry" or "benchmark service") as the user should read it."""
        address = self.settings.registry if service == "registry" else self.settings.benchmark
        code = error.code
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return Problem(f"{service} refused your token: {error.message}; log in again", 401, False)
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return Problem(error.message, 403, False)
        message = from_client_error(
            error, service=service, address=address, timeout_s=self.settings.call_timeout_s
        ).message
        if code in _OUTAGE:
            # The CLI's wording names its flags; the console's are the same (--registry, --benchmark).
            return Problem(f"{message}. This page retries by itself.", 503, True)
        if code == grpc.StatusCode.NOT_FOUND:
            return Problem(message, 404, False)
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
            return Problem(message, 409 if code == grpc.StatusCode.FAILED_PRECONDITION else 400, False)
        if code == grpc.StatusCode.ALREADY_EXISTS:
            return Problem(message, 409, False)
        return Problem(message, 502, False)


async def _close(pair: _Clients) -> None:
    await pair.registry.close()
    await pair.benchmark.close()
