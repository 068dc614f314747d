"""Deployments: create, route, stage and unstage, roll back, delete, and the checks every route
change passes (routable versions, the consumers' signature) before it is recorded and broadcast."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modelyard.common.errors import FailedPrecondition, NotFound
from modelyard.common.states import VersionStatus
from modelyard.registry import audit
from modelyard.registry import repository as repo
from modelyard.registry.broadcast import DeploymentBroadcast
from modelyard.registry.catalog import find_model, find_version
from modelyard.registry.db import Database
from modelyard.registry.domain import Deployment, Model, ModelVersion, Route, Signature
from modelyard.registry.validation import check_name, check_routes, check_semver


def unknown_deployment(name: str) -> NotFound:
    return NotFound(f"unknown deployment {name!r}; `modelyard deployments list` shows them")


async def find_deployment(conn: repo.Conn, name: str, *, for_update: bool = False) -> Deployment:
    found = await repo.get_deployment(conn, name=name, for_update=for_update)
    if found is None:
        raise unknown_deployment(name)
    return found


async def routable(conn: repo.Conn, model_id: str, routes: Sequence[Route]) -> dict[str, ModelVersion]:
    """The routed versions by version string; each must be registered and not archived."""
    versions = await repo.get_versions(conn, model_id=model_id, versions=[r.version for r in routes])
    for route in routes:
        found = versions.get(route.version)
        if found is None:
            raise NotFound(
                f"model {model_id!r} has no version {route.version}; register it before routing to it"
            )
        if found.status == VersionStatus.ARCHIVED:
            raise FailedPrecondition(f"version {model_id} {route.version} is archived and cannot be routed")
    return versions


def contract(routes: Sequence[Route], versions: dict[str, ModelVersion]) -> Signature:
    """The signature consumers get: that of the most heavily weighted route."""
    top = max(routes, key=lambda r: r.weight)
    return versions[top.version].signature


@dataclass(frozen=True)
class NewRoutes:
    """A new deployment's model, its checked routes and the versions they route."""

    model: Model
    routes: list[Route]
    versions: dict[str, ModelVersion]


async def check_new_deployment(
    conn: repo.Conn, model_id: str, routes: Sequence[Route], follow_alias: str
) -> NewRoutes:
    """A new deployment's routes (the followed alias's version when none are given), checked as
    CreateDeployment and import both check them."""
    model = await find_model(conn, model_id)
    if follow_alias:
        alias = await repo.get_alias(conn, model_id=model_id, alias=follow_alias)
        if alias is None:
            raise NotFound(f"model {model_id!r} has no alias {follow_alias!r} to follow")
        if not routes:
            routes = [Route(alias.version, 100)]
    checked = check_routes(routes)
    return NewRoutes(model, checked, await routable(conn, model_id, checked))


async def insert_deployment(
    conn: repo.Conn,
    deployment: Deployment,
    versions: dict[str, ModelVersion],
    *,
    action: str,
    actor: str,
    reason: str,
) -> Deployment:
    """Store a new deployment at the next revision, with its event, notification and audit row."""
    deployment = dataclasses.replace(deployment, revision=await repo.next_revision(conn))
    created = await repo.insert_deployment(conn, deployment=deployment, versions=versions)
    await audit.record_deployment(conn, None, created, action=action, actor=actor, reason=reason)
    return created


async def change_routes(
    conn: repo.Conn,
    current: Deployment,
    routes: Sequence[Route],
    *,
    action: str,
    acknowledge_incompatible: bool,
    actor: str,
    reason: str,
    during_plan: bool = False,
) -> Deployment:
    """Route `current` (locked by the caller) to `routes` at the next revision, recorded. Refused
    when a version with traffic changes the signature its consumers depend on, unless acknowledged,
    and while a rollout plan drives the deployment's weights, unless the change is the plan's own
    or only stages (`during_plan`)."""
    if not during_plan:
        plan = await repo.get_plan(conn, deployment=current.name, active_only=True)
        if plan is not None:
            raise FailedPrecondition(
                f"a rollout plan ({plan.state}) drives {current.name}'s weights ({plan.baseline} -> "
                f"{plan.candidate}, step {plan.step_index + 1} of {len(plan.steps)}); abort it first "
                f"(`modelyard deployments rollout-abort {current.name}` routes back to {plan.baseline})"
            )
    versions = await routable(conn, current.model_id, routes)
    signature = current.signature
    differences = []
    if signature is not None:
        for route in routes:
            if route.weight > 0:
                for diff in signature.differences(versions[route.version].signature):
                    differences.append(f"{route.version}: {diff}")
    if differences and not acknowledge_incompatible:
        raise FailedPrecondition(
            f"deployment {current.name} serves consumers that depend on its signature, and "
            f"{'; '.join(differences)}. Stored vectors must be re-embedded; set "
            "acknowledge_incompatible (CLI: --acknowledge-incompatible) to route anyway"
        )
    new = dataclasses.replace(
        current,
        routes=list(routes),
        signature=contract(routes, versions) if differences or signature is None else signature,
        revision=await repo.next_revision(conn),
    )
    updated = await repo.update_deployment(conn, deployment=new, versions=versions)
    await audit.record_deployment(conn, current, updated, action=action, actor=actor, reason=reason)
    return updated


class Deployments:
    """What workers serve. Every change commits its revision, event and audit row together, then
    kicks this replica's broadcast (the NOTIFY reaches the others)."""

    def __init__(self, db: Database, broadcast: DeploymentBroadcast) -> None:
        self.db = db
        self.broadcast = broadcast

    async def create_deployment(
        self,
        *,
        name: str,
        model_id: str,
        routes: Sequence[Route],
        follow_alias: str,
        description: str,
        actor: str,
        reason: str,
    ) -> Deployment:
        check_name("deployment name", name)
        async with self.db.transaction() as conn:
            new = await check_new_deployment(conn, model_id, routes, follow_alias)
            deployment = Deployment(
                name=name,
                model_id=model_id,
                model_type=new.model.model_type,
                routes=new.routes,
                follow_alias=follow_alias,
                signature=contract(new.routes, new.versions),
                description=description,
            )
            created = await insert_deployment(
                conn, deployment, new.versions, action="deployment.create", actor=actor, reason=reason
            )
        self.broadcast.kick()
        return created

    async def get_deployment(self, name: str) -> Deployment:
        async with self.db.connection() as conn:
            return await find_deployment(conn, name)

    async def list_deployments(self, model_id: str) -> list[Deployment]:
        async with self.db.connection() as conn:
            return await repo.list_deployments(conn, model_id=model_id)

    async def set_routes(
        self,
        name: str,
        routes: Sequence[Route],
        *,
        acknowledge_incompatible: bool,
        expected_revision: int,
        actor: str,
        reason: str,
    ) -> Deployment:
        routes = check_routes(routes)
        async with self.db.transaction() as conn:
            current = await find_deployment(conn, name, for_update=True)
            if expected_revision and current.revision != expected_revision:
                raise FailedPrecondition(
                    f"deployment {name} is at revision {current.revision}, not {expected_revision}; "
                    "re-read it and retry"
                )
            updated = await change_routes(
                conn,
                current,
                routes,
                action="routes.set",
                acknowledge_incompatible=acknowledge_incompatible,
                actor=actor,
                reason=reason,
            )
        self.broadcast.kick()
        return updated

    async def stage_version(self, name: str, version: str, *, actor: str, reason: str) -> Deployment:
        """Route `version` at weight 0 (workers load it, no traffic reaches it unpinned); a version
        some route already names is left as it is, and so are all the other routes."""

        def staged(routes: list[Route]) -> list[Route] | None:
            return None if any(r.version == version for r in routes) else [*routes, Route(version, 0)]

        return await self._edit_routes(
            name,
            version,
            staged,
            action="version.stage",
            actor=actor,
            reason=reason or f"stage {version} at weight 0",
        )

    async def unstage_version(self, name: str, version: str, *, actor: str, reason: str) -> Deployment:
        """Remove the weight-0 route of `version`; a route with traffic is refused, none is a no-op."""

        def unstaged(routes: list[Route]) -> list[Route] | None:
            route = next((r for r in routes if r.version == version), None)
            if route is not None and route.weight > 0:
                raise FailedPrecondition(
                    f"{version} carries {route.weight}% of {name}'s traffic; only a weight-0 (staged) "
                    "route can be unstaged. Change the routes with SetRoutes instead"
                )
            return None if route is None else [r for r in routes if r.version != version]

        return await self._edit_routes(
            name,
            version,
            unstaged,
            action="version.unstage",
            actor=actor,
            reason=reason or f"unstage {version}",
        )

    async def _edit_routes(
        self,
        name: str,
        version: str,
        edit: Callable[[list[Route]], list[Route] | None],
        *,
        action: str,
        actor: str,
        reason: str,
    ) -> Deployment:
        """Apply `edit` to the current routes under the row lock; None from it = nothing to change."""
        check_semver(version)
        async with self.db.transaction() as conn:
            current = await find_deployment(conn, name, for_update=True)
            routes = edit(list(current.routes))
            if routes is None:
                return current
            updated = await change_routes(
                conn,
                current,
                routes,
                action=action,
                acknowledge_incompatible=False,
                actor=actor,
                reason=reason,
                during_plan=True,  # weight 0 only: a plan keeps staged routes as they are
            )
        self.broadcast.kick()
        return updated

    async def rollback(
        self, name: str, *, to_revision: int, acknowledge_incompatible: bool, actor: str, reason: str
    ) -> Deployment:
        async with self.db.transaction() as conn:
            current = await find_deployment(conn, name, for_update=True)
            if to_revision:
                target = await repo.deployment_state_at(conn, name=name, revision=to_revision)
                if target is None:
                    raise NotFound(
                        f"deployment {name} has no revision {to_revision}; "
                        "`modelyard deployments history` lists them"
                    )
            else:
                target = await repo.deployment_state_before(conn, name=name, revision=current.revision)
                if target is None:
                    raise FailedPrecondition(f"deployment {name} has no earlier routes to roll back to")
            updated = await change_routes(
                conn,
                current,
                target.routes,
                action="deployment.rollback",
                acknowledge_incompatible=acknowledge_incompatible,
                actor=actor,
                reason=reason or f"rollback to the routes of revision {target.revision}",
            )
        self.broadcast.kick()
        return updated

    async def delete_deployment(self, name: str, *, actor: str, reason: str) -> int:
        """Remove the deployment; its `deleted` event tells the workers to unload it. Returns the revision."""
        async with self.db.transaction() as conn:
            current = await find_deployment(conn, name, for_update=True)
            gone = dataclasses.replace(current, revision=await repo.next_revision(conn))
            await repo.delete_deployment(conn, name=name)
            await audit.record_deployment(
                conn, current, gone, action="deployment.delete", actor=actor, reason=reason, deleted=True
            )
        self.broadcast.kick()
        return gone.revision

    async def check_compatibility(self, deployment: str, model_id: str, version: str) -> list[str]:
        async with self.db.connection() as conn:
            current = await find_deployment(conn, deployment)
            candidate = await find_version(conn, model_id or current.model_id, version)
        if candidate.model_id != current.model_id:
            return [
                f"version belongs to model {candidate.model_id}, the deployment serves {current.model_id}"
            ]
        return current.signature.differences(candidate.signature) if current.signature else []
