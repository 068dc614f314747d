"""The overview page: every deployment, its routes and workers, kept live over SSE."""

from __future__ import annotations

from starlette.responses import Response

from modelyard.console.live import live_events, read_deployments
from modelyard.console.web import Page, page


@page()
async def overview(current: Page) -> Response:
    views = await read_deployments(await current.registry(), clock=current.console.swaps)
    return current.render("overview.html", deployments=views, live_src="/events/overview")


@page()
async def overview_events(current: Page) -> Response:
    return await live_events(current, "_deployments.html")
