"""The console's view of a rollout plan: the live region shows the plan's steps, state and every
guard's value and verdict as GetRolloutPlan returns them, and an admin pauses, resumes and aborts it
from the deployment page (CSRF checked). The console app is called over ASGI in the test's event
loop, beside a real registry fed by a simulated worker's heartbeats; no browser."""

from __future__ import annotations

import asyncio
import contextlib
import re
from html import escape
from typing import Any
from urllib.parse import urlencode

from live_support import TrafficWorker
from registry_support import Stub, deploy, register

from modelyard.api import registry_pb2 as pb
from modelyard.client import RegistryClient
from modelyard.client.channel import open_channel
from modelyard.console.app import create_app
from modelyard.console.settings import ConsoleSettings
from modelyard.registry.server import RegistryServer


async def asgi(
    app: Any, method: str, path: str, *, body: bytes = b"", cookie: str = ""
) -> tuple[int, dict[str, str], str]:
    """One request; (status, headers, body)."""
    headers = [(b"host", b"console.test")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    if body:
        headers.append((b"content-type", b"application/x-www-form-urlencoded"))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "headers": headers,
        "client": ("127.0.0.1", 5000), "server": ("console.test", 80),
    }  # fmt: skip
    sent = False
    status, out_headers, chunks = 0, {}, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers.update({k.decode(): v.decode() for k, v in message["headers"]})
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await asyncio.wait_for(app(scope, receive, send), 30)
    return status, out_headers, b"".join(chunks).decode()


async def seeded_console(registry: RegistryServer) -> Any:
    """`text` at 100% 1.0.0 with 1.1.0 registered, and a console app on the registry."""
    async with open_channel(registry.address) as channel:
        stub = Stub(channel)
        for version in ("1.0.0", "1.1.0"):
            await register(stub, version)
        await deploy(stub, "text", {"1.0.0": 100})
    return create_app(
        ConsoleSettings(registry=registry.address, benchmark="127.0.0.1:1", live_interval_s=0.2)
    )


def plan_section(html: str) -> dict[str, str]:
    [tag] = re.findall(r"<section class=\"plan\"[^>]*>", html)
    return dict(re.findall(r'data-([\w-]+)="([^"]*)"', tag))


async def test_the_plan_is_shown_live_and_an_admin_controls_it(registry: RegistryServer) -> None:
    app = await seeded_console(registry)
    async with RegistryClient(registry.address) as client:
        worker = TrafficWorker(client, worker_id="w1", latency_s={"1.0.0": 0.004, "1.1.0": 0.2})
        beating = asyncio.create_task(worker.run())
        try:
            _, _, html = await asgi(app, "GET", "/deployments/text")
            assert 'class="plan"' not in html, "no plan yet, no plan section"
            await client.start_rollout_plan(
                pb.StartRolloutPlanRequest(
                    deployment="text", version="1.1.0", steps=[10, 50, 100], step_duration_s=600,
                    guards=["error_rate <= 0.01", "p99_ms <= 1000"], min_requests=20,
                )
            )  # fmt: skip
            for _ in range(100):  # heartbeats, then the driver judges every guard
                plan = await client.get_rollout_plan(pb.GetRolloutPlanRequest(deployment="text"))
                if all(g.judged for g in plan.guards):
                    break
                await asyncio.sleep(0.1)
            assert all(g.judged and g.holds for g in plan.guards), plan
            status, headers, html = await asgi(app, "GET", "/deployments/text")
            assert status == 200
            section = plan_section(html)
            assert (section["plan-state"], section["plan-step"], section["plan-weight"]) == (
                "running",
                "0",
                "10",
            )
            for guard in plan.guards:
                verdict = ("holds" if guard.holds else "fails") if guard.judged else "waiting"
                assert f'data-guard="{escape(guard.guard)}" data-verdict="{verdict}"' in html, (guard, html)
            assert 'id="plan-pause"' in html and 'id="plan-abort"' in html

            # Without the session's CSRF token the change is refused; with it the plan pauses.
            cookie = headers["set-cookie"].split(";", 1)[0]
            [csrf_name, csrf] = re.findall(
                r'name="([^"]+)" value="([^"]+)"', html.split("plan-controls", 1)[1]
            )[0]
            refused, _, _ = await asgi(
                app, "POST", "/deployments/text/plan", body=b"action=pause", cookie=cookie
            )
            assert refused == 403
            form = urlencode({csrf_name: csrf, "action": "pause"}).encode()
            moved, moved_headers, _ = await asgi(
                app, "POST", "/deployments/text/plan", body=form, cookie=cookie
            )
            assert moved == 303 and moved_headers["location"].startswith("/deployments/text?plan=pause")
            paused = await client.get_rollout_plan(pb.GetRolloutPlanRequest(deployment="text"))
            assert paused.state == pb.ROLLOUT_PLAN_PAUSED
            _, _, html = await asgi(app, "GET", "/deployments/text", cookie=cookie)
            assert plan_section(html)["plan-state"] == "paused" and 'id="plan-resume"' in html
            bad = urlencode({csrf_name: csrf, "action": "explode"}).encode()
            status, _, html = await asgi(app, "POST", "/deployments/text/plan", body=bad, cookie=cookie)
            assert status == 400 and "unknown plan action" in html
            form = urlencode({csrf_name: csrf, "action": "abort"}).encode()
            moved, _, _ = await asgi(app, "POST", "/deployments/text/plan", body=form, cookie=cookie)
            assert moved == 303
            _, _, html = await asgi(app, "GET", "/", cookie=cookie)
            assert plan_section(html)["plan-state"] == "aborted" and 'id="plan-abort"' not in html
            # Twice: the plan has ended, the registry's refusal is shown on the page.
            status, _, html = await asgi(app, "POST", "/deployments/text/plan", body=form, cookie=cookie)
            assert status in (400, 409) and "no active rollout plan" in html
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            await app.state.console.backends.close()


async def test_a_shadow_step_and_a_mirrored_route_are_shown(registry: RegistryServer) -> None:
    app = await seeded_console(registry)
    try:
        async with RegistryClient(registry.address) as client:
            await client.start_rollout_plan(
                pb.StartRolloutPlanRequest(
                    deployment="text", version="1.1.0", steps=[50, 100], step_duration_s=600,
                    guards=["agreement >= 0.95"], min_requests=20, shadow_percent=20,
                )
            )  # fmt: skip
        status, _, html = await asgi(app, "GET", "/deployments/text")
        assert status == 200
        section = plan_section(html)
        assert (section["plan-step"], section["plan-weight"]) == ("0", "0")
        assert '<span class="step current">shadow</span>' in html
        assert 'data-version="1.1.0" data-weight="0">1.1.0 <b>0%</b> <i class="shadow">shadow 20%</i>' in html
    finally:
        await app.state.console.backends.close()
