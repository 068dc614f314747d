"""Aliases and promotion: move an alias behind its gates and switch the deployments that follow it,
or promote a version for one deployment (alias and routes in one transaction)."""

from __future__ import annotations

from collections.abc import Sequence

from modelyard.common.errors import FailedPrecondition, NotFound
from modelyard.common.states import VersionStatus
from modelyard.registry import audit
from modelyard.registry import repository as repo
from modelyard.registry.broadcast import DeploymentBroadcast
from modelyard.registry.catalog import find_version
from modelyard.registry.db import Database
from modelyard.registry.deployments import change_routes, find_deployment, unknown_deployment
from modelyard.registry.domain import Alias, GateResult, ModelVersion, Promotion, Route
from modelyard.registry.validation import Gate, check_name, parse_gate

DEFAULT_ALIAS = "production"


async def alias_target(conn: repo.Conn, model_id: str, version: str) -> ModelVersion:
    """The version an alias may point at (SetAlias, PromoteVersion and import): registered, not archived."""
    target = await find_version(conn, model_id, version)
    if target.status == VersionStatus.ARCHIVED:
        raise FailedPrecondition(f"version {model_id} {target.version} is archived; it cannot be promoted")
    return target


async def check_gates(
    conn: repo.Conn, version: ModelVersion, gates: Sequence[Gate], suite: str
) -> list[GateResult]:
    """Each gate against the newest value of its metric over the version's successful runs."""
    if not gates:
        return []
    metrics = {
        m.name: m
        for m in await repo.version_metrics(
            conn, model_id=version.model_id, version=version.version, suite=suite
        )
    }
    results = []
    for gate in gates:
        found = metrics.get(gate.metric)
        if found is None:
            results.append(GateResult(gate.text, gate.metric, False, float("nan"), ""))
        else:
            results.append(
                GateResult(gate.text, gate.metric, gate.passes(found.value), found.value, found.run_id)
            )
    return results


class Aliases:
    """Alias moves. A promotion and the route changes it causes commit together or not at all."""

    def __init__(self, db: Database, broadcast: DeploymentBroadcast) -> None:
        self.db = db
        self.broadcast = broadcast

    async def set_alias(
        self,
        model_id: str,
        alias: str,
        version: str,
        *,
        gates: Sequence[str],
        gate_suite: str,
        acknowledge_incompatible: bool,
        actor: str,
        reason: str,
    ) -> Promotion:
        check_name("alias", alias)
        parsed = [parse_gate(g) for g in gates]
        async with self.db.transaction() as conn:
            promotion = await self._move(
                conn,
                model_id,
                alias,
                version,
                gates=parsed,
                gate_suite=gate_suite,
                acknowledge_incompatible=acknowledge_incompatible,
                actor=actor,
                reason=reason,
            )
        if promotion.switched:
            self.broadcast.kick()
        return promotion

    async def promote(
        self,
        deployment: str,
        version: str,
        *,
        alias: str,
        gates: Sequence[str],
        gate_suite: str,
        acknowledge_incompatible: bool,
        actor: str,
        reason: str,
    ) -> Promotion:
        """Promote `version` for `deployment`: move `alias` (default: the one the deployment follows,
        else production) behind its gates, switch every follower, and route `deployment` 100% to the
        version when it does not follow that alias. A refused route change undoes the alias move."""
        parsed = [parse_gate(g) for g in gates]
        async with self.db.transaction() as conn:
            current = await find_deployment(conn, deployment)
            alias = alias or current.follow_alias or DEFAULT_ALIAS
            check_name("alias", alias)
            promotion = await self._move(
                conn,
                current.model_id,
                alias,
                version,
                gates=parsed,
                gate_suite=gate_suite,
                acknowledge_incompatible=acknowledge_incompatible,
                actor=actor,
                # The reasons `modelyard deployments promote` gave when it made two calls.
                reason=reason or f"promote {version} for {deployment}",
                also_route=None if current.follow_alias == alias else deployment,
                route_reason=reason or f"promote {version}",
            )
        self.broadcast.kick()
        return promotion

    async def move_in(
        self, conn: repo.Conn, model_id: str, alias: str, version: str, *, actor: str, reason: str
    ) -> Promotion:
        """Move `alias` to `version` without gates in the caller's transaction, its followers switched
        (a rollout plan's promotion: its guards were the evidence). A follower whose consumers would
        get another signature refuses it: only the plan's own deployment was acknowledged."""
        return await self._move(
            conn, model_id, alias, version, gates=[], gate_suite="", acknowledge_incompatible=False,
            actor=actor, reason=reason,
        )  # fmt: skip

    async def _move(
        self,
        conn: repo.Conn,
        model_id: str,
        alias: str,
        version: str,
        *,
        gates: Sequence[Gate],
        gate_suite: str,
        acknowledge_incompatible: bool,
        actor: str,
        reason: str,
        also_route: str | None = None,
        route_reason: str = "",
    ) -> Promotion:
        """Check the gates, move the alias, and route its followers (and `also_route`, a deployment
        that does not follow it) 100% to the version, audited, in the caller's transaction."""
        target = await alias_target(conn, model_id, version)
        results = await check_gates(conn, target, gates, gate_suite)
        failed = [r for r in results if not r.passed]
        if failed:
            detail = "; ".join(
                f"{r.metric} = {r.observed:.4g} fails `{r.gate}`"
                if r.run_id
                else f"{r.metric} was never measured"
                for r in failed
            )
            raise FailedPrecondition(
                f"promotion of {model_id} {target.version} to {alias!r} refused: {detail}. "
                "Benchmark the version (`modelyard bench run`) or revise the gate"
            )
        previous = await repo.get_alias(conn, model_id=model_id, alias=alias)
        moved = await repo.upsert_alias(conn, model_id=model_id, alias=alias, version=target.version)
        # Every deployment to switch is locked before the first takes a revision (whose row lock
        # every deployment change takes last), in name order, so that concurrent changes never
        # wait on each other in a cycle.
        locked = await repo.lock_deployments(
            conn, model_id=model_id, follow_alias=alias, names=[also_route] if also_route else []
        )
        followers = [d for d in locked if d.name != also_route]
        switched = [
            await change_routes(
                conn,
                deployment,
                [Route(target.version, 100)],
                action="alias.follow",
                acknowledge_incompatible=acknowledge_incompatible,
                actor=actor,
                reason=reason or f"alias {alias} moved to {target.version}",
            )
            for deployment in followers
        ]
        if also_route:
            named = next((d for d in locked if d.name == also_route), None)
            if named is None:
                raise unknown_deployment(also_route)  # deleted since the caller read it
            switched.append(
                await change_routes(
                    conn,
                    named,
                    [Route(target.version, 100)],
                    action="routes.set",
                    acknowledge_incompatible=acknowledge_incompatible,
                    actor=actor,
                    reason=route_reason,
                )
            )
        await audit.record(
            conn,
            actor=actor,
            action="alias.set",
            entity_type="alias",
            entity_id=f"{model_id}:{alias}",
            before=previous,
            after={"alias": moved, "gates": results},
            reason=reason,
        )
        return Promotion(moved, previous.version if previous else "", results, switched)

    async def delete_alias(self, model_id: str, alias: str, *, actor: str, reason: str) -> None:
        async with self.db.transaction() as conn:
            existing = await repo.get_alias(conn, model_id=model_id, alias=alias)
            if existing is None:
                raise NotFound(f"model {model_id!r} has no alias {alias!r}")
            followers = await repo.list_deployments(conn, model_id=model_id, follow_alias=alias)
            if followers:
                names = ", ".join(d.name for d in followers)
                raise FailedPrecondition(
                    f"alias {alias!r} is followed by deployment(s) {names}; detach them first"
                )
            await repo.delete_alias(conn, model_id=model_id, alias=alias)
            await audit.record(
                conn,
                actor=actor,
                action="alias.delete",
                entity_type="alias",
                entity_id=f"{model_id}:{alias}",
                before=existing,
                reason=reason,
            )

    async def list_aliases(self, model_id: str) -> list[Alias]:
        async with self.db.connection() as conn:
            return await repo.list_aliases(conn, model_id=model_id)
