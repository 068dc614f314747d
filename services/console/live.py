"""The overview's data and its live updates: deployments, routes, every worker's state and each
version's live figures and its rollout plan, read from the registry (ListDeployments, ListWorkers,
GetRolloutStatus, GetLiveMetrics, GetRolloutPlan) and pushed to the browser over Server-Sent Events whenever WatchDeployments reports
a change or a worker's heartbeat moves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse

from modelyard.api import registry_pb2 as pb
from modelyard.client import ModelyardError, RegistryClient
from modelyard.common.errors import NotFound, Unimplemented
from modelyard.console.present import DeploymentView, SwapClock, deployment_view
from modelyard.console.web import Page

# A comment line this often keeps proxies and idle timeouts from closing a quiet stream.
KEEPALIVE_S = 15.0
# Browsers reconnect an EventSource after this long when the stream ends.
RECONNECT_MS = 2000
WATCH_RETRY_S = 1.0


async def read_deployments(
    registry: RegistryClient, only: str = "", clock: SwapClock | None = None
) -> list[DeploymentView]:
    """Every deployment (or just `only`) with its rollout and workers, in one round of calls; with
    `clock`, each worker carries its switch time as that clock has seen it."""
    if only:
        deployments = [await registry.get_deployment(pb.GetDeploymentRequest(name=only))]
    else:
        deployments = list((await registry.list_deployments(pb.ListDeploymentsRequest())).deployments)
    workers_call = registry.list_workers(pb.ListWorkersRequest(deployment=only))
    rollout_calls = [
        registry.get_rollout_status(pb.GetRolloutStatusRequest(deployment=d.name)) for d in deployments
    ]
    plan_calls = [_plan(registry, d.name) for d in deployments]
    workers, live, *rest = await asyncio.gather(
        workers_call, _live_metrics(registry, only), *rollout_calls, *plan_calls
    )
    assert isinstance(workers, pb.ListWorkersResponse)
    rollouts, plans = rest[: len(deployments)], rest[len(deployments) :]
    views = [
        deployment_view(d, r, list(workers.workers), live, p)  # type: ignore[arg-type]
        for d, r, p in zip(deployments, rollouts, plans, strict=True)
    ]
    return clock.stamp(views, time.time()) if clock is not None else views


async def _plan(registry: RegistryClient, deployment: str) -> pb.RolloutPlan | None:
    """The deployment's active rollout plan, else its last; None when it never had one."""
    try:
        return await registry.get_rollout_plan(pb.GetRolloutPlanRequest(deployment=deployment))
    except (NotFound, Unimplemented):  # never had a plan, or a registry from before plans
        return None


async def _live_metrics(registry: RegistryClient, only: str) -> pb.LiveMetrics | None:
    """Every version's figures over the registry's default window (one call for all deployments)."""
    try:
        return await registry.get_live_metrics(pb.GetLiveMetricsRequest(deployment=only))
    except Unimplemented:  # a registry from before live figures: the page shows the rest
        return None


def sse(kind: str, data: str) -> str:
    """One Server-Sent Event; every line of `data` gets its own `data:` field."""
    lines = data.splitlines() or [""]
    return f"event: {kind}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


async def live_events(current: Page, template: str, only: str = "") -> Response:
    """The stream behind a live page: `live` events carry the region's new HTML (only when it
    changed), `banner` events the outage message ('' once the registry answers again)."""
    console = current.console
    interval = console.settings.live_interval_s
    changed = asyncio.Event()

    async def watch() -> None:
        # Route changes arrive here at once; heartbeats do not, so the loop below also re-reads
        # worker state every `interval`.
        since = 0
        while True:
            try:
                registry = await current.registry()
                request = pb.WatchDeploymentsRequest(deployments=[only] if only else [], since_revision=since)
                async for message in registry.watch_deployments(request):
                    since = max(since, message.revision)
                    changed.set()
            except ModelyardError:
                pass
            changed.set()
            await asyncio.sleep(WATCH_RETRY_S)

    async def stream() -> AsyncIterator[str]:
        watcher = asyncio.create_task(watch(), name="console-watch")
        last_html: str | None = None
        last_banner: str | None = None
        last_sent = time.monotonic()
        try:
            yield f"retry: {RECONNECT_MS}\n\n"
            while not console.stopping():
                html, banner = None, ""
                # Cleared before the read, not after it: a change arriving during the read then
                # wakes the wait below at once instead of waiting for the next interval.
                changed.clear()
                try:
                    views = await read_deployments(await current.registry(), only, console.swaps)
                    html = current.fragment(template, deployments=views)
                except ModelyardError as error:
                    problem = console.backends.explain(error, service="registry")
                    banner = problem.message
                    if problem.outage:
                        await console.backends.forget(current.token)
                if banner != last_banner:
                    yield sse("banner", banner)
                    last_banner, last_sent = banner, time.monotonic()
                if html is not None and html != last_html:
                    yield sse("live", html)
                    last_html, last_sent = html, time.monotonic()
                if time.monotonic() - last_sent > KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    last_sent = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), interval if not banner else WATCH_RETRY_S)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
