"""The console overview's live figures: rendered on the server from the registry's GetLiveMetrics,
and carried by the overview's SSE stream like the rest of the live region. The console app is
called over ASGI in the test's event loop (the registry serves on that loop too); no browser."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from live_support import FakeWorker, seed

from modelyard.api import registry_pb2 as pb
from modelyard.client import RegistryClient
from modelyard.console.app import create_app
from modelyard.console.settings import ConsoleSettings
from modelyard.registry.server import RegistryServer

Scope = dict[str, Any]


async def asgi_get(app: Any, path: str, *, enough: Callable[[bytes], bool] = lambda body: False) -> bytes:
    """GET `path`; a streaming response is read until `enough(body)`, then the client goes away."""
    body = bytearray()
    done = asyncio.Event()
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"console.test")],
        "client": ("127.0.0.1", 5000),
        "server": ("console.test", 80),
    }
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if not message.get("more_body") or enough(bytes(body)):
                done.set()

    task = asyncio.create_task(app(scope, receive, send))
    await asyncio.wait_for(done.wait(), 30)
    await asyncio.wait_for(task, 10)
    return bytes(body)


def live_rows(html: str) -> list[dict[str, str]]:
    return [
        dict(re.findall(r'data-([\w-]+)="([^"]*)"', row))
        for row in re.findall(r"<tr [^>]*data-live-version=[^>]*>", html)
    ]


async def test_the_overview_shows_each_versions_live_figures_and_streams_them(
    registry: RegistryServer,
) -> None:
    await seed(registry.address)
    async with RegistryClient(registry.address) as client:
        app = create_app(
            ConsoleSettings(registry=registry.address, benchmark="127.0.0.1:1", live_interval_s=0.2)
        )
        html = (await asgi_get(app, "/")).decode()
        assert 'data-live-figures="empty"' in html, "a deployment nobody serves yet has no figures"

        worker = FakeWorker(client)
        worker.serve(40, invalid=2)
        await worker.beat()
        await asyncio.sleep(0.3)
        worker.serve(60)
        await worker.beat()
        metrics = await client.get_live_metrics(pb.GetLiveMetricsRequest(deployment="text"))
        [expected] = metrics.versions

        html = (await asgi_get(app, "/")).decode()
        assert 'data-live-figures="ready"' in html and f"last {metrics.window_s:g} s" in html
        [row] = live_rows(html)
        assert (row["live-version"], row["live-worker"]) == ("1.0.0", "all")
        assert int(row["requests"]) == expected.total.requests == 102
        assert float(row["error-rate"]) == expected.total.error_rate
        assert float(row["requests-per-s"]) == expected.total.requests_per_s > 0
        assert float(row["p50-ms"]) == expected.total.p50_ms
        assert "INVALID_ARGUMENT 2" in html

        # The SSE stream's first `live` event carries the same region, figures included.
        events = (
            await asgi_get(
                app,
                "/events/overview",
                enough=lambda b: b"event: live" in b and b"\n\n" in b.split(b"event: live", 1)[1],
            )
        ).decode()
        live_event = events.split("event: live", 1)[1].split("\n\n", 1)[0]
        region = "\n".join(
            line.removeprefix("data: ") for line in live_event.splitlines() if line.startswith("data: ")
        )
        [streamed] = live_rows(region)
        assert streamed["live-version"] == "1.0.0" and int(streamed["requests"]) == 102
        await app.state.console.backends.close()
