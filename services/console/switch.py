"""A deployment's page and what an admin does there: switch (promote) a version after seeing the
compatibility check, set a canary weight, roll back in one click; then watch the rollout live."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from starlette.responses import RedirectResponse, Response

from modelyard.api import registry_pb2 as pb
from modelyard.client import ModelyardError, RegistryClient
from modelyard.console.live import live_events, read_deployments
from modelyard.console.present import DeploymentView, version_card
from modelyard.console.web import Page, page

MAX_VERSIONS_SHOWN = 100


def _name(current: Page) -> str:
    return str(current.request.path_params["name"])


async def _versions(registry: RegistryClient, model_id: str) -> list[pb.ModelVersion]:
    listed = await registry.list_versions(
        pb.ListVersionsRequest(
            model_id=model_id, status=pb.VERSION_STATUS_READY, page_size=MAX_VERSIONS_SHOWN
        )
    )
    return list(listed.versions)


async def _render_deployment(current: Page, *, status: int = 200, error: str = "") -> Response:
    name = _name(current)
    registry = await current.registry()
    (view,) = await read_deployments(registry, name, current.console.swaps)
    versions = await _versions(registry, view.model_id)
    return current.render(
        "deployment.html",
        status=status,
        deployment=view,
        deployments=[view],
        cards=[version_card(v) for v in versions],
        live_src=f"/events/deployments/{name}",
        error=error,
        switched=current.query("switched"),
        revision=current.query("revision"),
        canary=_canary_values(current, view),
    )


def _canary_values(current: Page, view: DeploymentView) -> dict[str, object]:
    """What the canary form shows: what the user just submitted when it was refused (so they fix
    it rather than type it again), else the current routes."""
    if "weight" in current.form:
        return {k: current.field(k) for k in ("stable", "candidate", "weight")}
    active = sorted(view.active, key=lambda r: -r.weight)
    stable = active[0].version if active else ""
    candidate = active[1].version if len(active) > 1 else ""
    weight = active[1].weight if len(active) > 1 else 10
    return {"stable": stable, "candidate": candidate, "weight": weight}


@page()
async def deployment_page(current: Page) -> Response:
    return await _render_deployment(current)


@page()
async def deployment_events(current: Page) -> Response:
    return await live_events(current, "_deployments.html", only=_name(current))


async def _confirmation(current: Page, version: str, *, status: int = 200, error: str = "") -> Response:
    name = _name(current)
    registry = await current.registry()
    (view,) = await read_deployments(registry, name, current.console.swaps)
    target = await registry.get_version(pb.GetVersionRequest(model_id=view.model_id, version=version))
    check = await registry.check_compatibility(
        pb.CheckCompatibilityRequest(deployment=name, model_id=view.model_id, version=target.version)
    )
    return current.render(
        "switch.html",
        status=status,
        deployment=view,
        card=version_card(target),
        compatible=check.compatible,
        differences=list(check.differences),
        alias=view.follow_alias or "production",
        error=error,
        gates=current.field("gates"),
        reason=current.field("reason"),
    )


@page(admin=True)
async def switch_form(current: Page) -> Response:
    return await _confirmation(current, current.query("version"))


@page(admin=True)
async def switch_submit(current: Page) -> Response:
    """Promote: refused here, before the registry is asked, when the check found an incompatible
    signature and the box acknowledging it was not ticked (the registry refuses it too)."""
    name, version = _name(current), current.field("version")
    acknowledged = current.field("acknowledge_incompatible") == "yes"
    registry = await current.registry()
    deployment = await registry.get_deployment(pb.GetDeploymentRequest(name=name))
    check = await registry.check_compatibility(
        pb.CheckCompatibilityRequest(deployment=name, model_id=deployment.model_id, version=version)
    )
    if not check.compatible and not acknowledged:
        return await _confirmation(
            current,
            version,
            status=409,
            error="this version's signature differs from what the deployment's consumers depend on; "
            "tick the acknowledgment (stored vectors must be re-indexed) to switch anyway",
        )
    gates = [line.strip() for line in current.field("gates").splitlines() if line.strip()]
    try:
        promoted = await registry.promote_version(
            pb.PromoteVersionRequest(
                deployment=name,
                version=version,
                gates=gates,
                acknowledge_incompatible=acknowledged,
                reason=current.field("reason") or "switched in the console",
            )
        )
    except ModelyardError as error:
        if error.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            raise
        problem = current.console.backends.explain(error, service="registry")
        return await _confirmation(current, version, status=problem.status, error=problem.message)
    switched = next((d for d in promoted.switched if d.name == name), None)
    revision = switched.revision if switched else 0
    query = urlencode({"switched": version, "revision": revision})
    return RedirectResponse(f"/deployments/{name}?{query}#rollout", 303)


@page(admin=True)
async def canary_submit(current: Page) -> Response:
    name = _name(current)
    stable, candidate = current.field("stable"), current.field("candidate")
    raw = current.field("weight")
    if not raw.isdigit() or not 0 <= int(raw) <= 100:
        return await _render_deployment(
            current, status=400, error=f"canary weight {raw!r}: a whole number 0-100"
        )
    if not stable or not candidate or stable == candidate:
        return await _render_deployment(
            current, status=400, error="pick the stable version and a different canary version"
        )
    weight = int(raw)
    routes = [pb.Route(version=stable, weight=100 - weight), pb.Route(version=candidate, weight=weight)]
    return await _change(
        current,
        lambda registry: registry.set_routes(
            pb.SetRoutesRequest(
                name=name,
                routes=routes,
                acknowledge_incompatible=current.field("acknowledge_incompatible") == "yes",
                reason=current.field("reason") or f"canary {candidate} at {weight}% in the console",
            )
        ),
        switched=f"{candidate} at {weight}%",
    )


@page(admin=True)
async def rollback_submit(current: Page) -> Response:
    name = _name(current)
    return await _change(
        current,
        lambda registry: registry.rollback_deployment(
            pb.RollbackDeploymentRequest(
                name=name,
                acknowledge_incompatible=current.field("acknowledge_incompatible") == "yes",
                reason=current.field("reason") or "rolled back in the console",
            )
        ),
        switched="rollback",
    )


PLAN_ACTIONS = ("pause", "resume", "abort")


@page(admin=True)
async def plan_submit(current: Page) -> Response:
    """Pause, resume or abort the deployment's rollout plan (the registry drives it otherwise)."""
    name = _name(current)
    action = current.field("action")
    if action not in PLAN_ACTIONS:
        return await _render_deployment(
            current, status=400, error=f"unknown plan action {action!r}: pause, resume or abort"
        )
    registry = await current.registry()
    request = pb.RolloutPlanControlRequest(deployment=name, reason=f"{action} in the console")
    call = {
        "pause": registry.pause_rollout_plan,
        "resume": registry.resume_rollout_plan,
        "abort": registry.abort_rollout_plan,
    }[action]
    try:
        await call(request)
    except ModelyardError as error:
        if error.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            raise
        problem = current.console.backends.explain(error, service="registry")
        return await _render_deployment(current, status=problem.status, error=problem.message)
    return RedirectResponse(f"/deployments/{name}?{urlencode({'plan': action})}#rollout", 303)


async def _change(
    current: Page, call: Callable[[RegistryClient], Awaitable[pb.Deployment]], *, switched: str
) -> Response:
    """Run a route change; a refusal shows on the deployment page, next to the controls."""
    registry = await current.registry()
    try:
        changed = await call(registry)
    except ModelyardError as error:
        if error.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            raise
        problem = current.console.backends.explain(error, service="registry")
        return await _render_deployment(current, status=problem.status, error=problem.message)
    query = urlencode({"switched": switched, "revision": changed.revision})
    return RedirectResponse(f"/deployments/{changed.name}?{query}#rollout", 303)
