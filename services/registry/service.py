"""The registry's rules: what may change, what is checked first, and what every change records
(audit row, deployment event, notification) in the same transaction."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

from modelyard.common.artifact_roots import ArtifactRoots, default_artifact_roots
from modelyard.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ModelyardError,
    NotFound,
)
from modelyard.registry import repository as repo
from modelyard.registry.broadcast import CHANNEL, DeploymentBroadcast
from modelyard.registry.db import Database
from modelyard.registry.domain import (
    Alias,
    AuditEvent,
    BenchmarkRun,
    Deployment,
    DeploymentEvent,
    GateResult,
    Model,
    ModelVersion,
    RolloutStatus,
    Route,
    Signature,
    VersionMetric,
    WorkerRollout,
    WorkerStatus,
    to_json,
)
from modelyard.registry.import_document import ImportDocument, read_import_document
from modelyard.registry.validation import (
    check_model,
    check_model_type,
    check_name,
    check_routes,
    check_run,
    check_semver,
    check_source_uri,
    check_version,
    parse_gate,
)

EXPORT_FORMAT = "modelyard-registry/1"
T = TypeVar("T")
MAX_PAGE = 500


def _page_size(requested: int, default: int = 50) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or default, MAX_PAGE)


def encode_token(value: int | str) -> str:
    return base64.urlsafe_b64encode(f"v1:{value}".encode()).decode()


def _paged(rows: Sequence[T], limit: int, cursor: Callable[[T], int | str]) -> tuple[list[T], str]:
    """Rows fetched with `limit + 1`: the page, and a token for the next one when there is more."""
    page = list(rows[:limit])
    return page, encode_token(cursor(page[-1])) if len(rows) > limit else ""


def decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not text.startswith("v1:"):
        raise InvalidArgument(
            "invalid page_token: pass the next_page_token of the previous response unchanged"
        )
    return text[3:]


def _int_token(token: str) -> int:
    value = decode_token(token)
    if not value.isdigit() and value:
        raise InvalidArgument(
            "invalid page_token: pass the next_page_token of the previous response unchanged"
        )
    return int(value) if value else 0


class Registry:
    """Every registry operation, in plain Python types. Callers pass the acting principal's name."""

    def __init__(
        self,
        db: Database,
        broadcast: DeploymentBroadcast,
        *,
        heartbeat_ttl_s: float,
        lost_worker_window_s: float = 300.0,
        artifact_roots: ArtifactRoots | None = None,
    ) -> None:
        self.db = db
        self.broadcast = broadcast
        # Where a version's source_uri may point (default: the default artifact store).
        self.artifact_roots = artifact_roots or ArtifactRoots.parse(default_artifact_roots())
        self.heartbeat_ttl = dt.timedelta(seconds=heartbeat_ttl_s)
        self.lost_worker_window = dt.timedelta(seconds=lost_worker_window_s)

    # ---- models and versions -------------------------------------------------------------------

    async def create_model(self, model: Model, *, actor: str) -> Model:
        check_model(model)
        async with self.db.transaction() as conn:
            created = await repo.insert_model(conn, model=dataclasses.replace(model, created_by=actor))
            await repo.insert_audit(
                conn,
                actor=actor,
                action="model.create",
                entity_type="model",
                entity_id=model.model_id,
                before=None,
                after=created,
                reason="",
            )
        return created

    async def get_model(self, model_id: str) -> Model:
        async with self.db.connection() as conn:
            return await self._model(conn, model_id)

    async def _model(self, conn: repo.Conn, model_id: str) -> Model:
        model = await repo.get_model(conn, model_id=model_id)
        if model is None:
            raise NotFound(f"unknown model {model_id!r}; `modelyard models list` shows the registered ones")
        return model

    async def list_models(
        self, *, model_type: str, page_size: int, page_token: str
    ) -> tuple[list[Model], str]:
        limit = _page_size(page_size)
        async with self.db.connection() as conn:
            models = await repo.list_models(
                conn, model_type=model_type, after=decode_token(page_token), limit=limit + 1
            )
        return _paged(models, limit, lambda m: m.model_id)

    async def register_version(
        self, version: ModelVersion, *, actor: str, create_model: bool = False, model_type: str = ""
    ) -> ModelVersion:
        version = self._check_version(version)
        version = dataclasses.replace(version, created_by=actor, created_at=None, status="ready", aliases=[])
        async with self.db.transaction() as conn:
            if await repo.get_model(conn, model_id=version.model_id) is None:
                if not create_model:
                    raise NotFound(
                        f"unknown model {version.model_id!r}: create it first, or register with create_model"
                    )
                check_model_type(model_type)
                model = await repo.insert_model(
                    conn, model=Model(version.model_id, model_type, created_by=actor)
                )
                await repo.insert_audit(
                    conn,
                    actor=actor,
                    action="model.create",
                    entity_type="model",
                    entity_id=version.model_id,
                    before=None,
                    after=model,
                    reason="",
                )
            await repo.insert_version(conn, version=version)
            stored = await repo.get_version(conn, model_id=version.model_id, version=version.version)
            assert stored is not None
            await repo.insert_audit(
                conn,
                actor=actor,
                action="version.register",
                entity_type="version",
                entity_id=f"{version.model_id}:{version.version}",
                before=None,
                after=stored,
                reason="",
            )
            await self._audit_remote_code(conn, stored, actor=actor)
        return stored

    def _check_version(self, version: ModelVersion) -> ModelVersion:
        """What a new version must satisfy before any lookup, registered or imported alike; returns
        it with its source_uri normalised (a plain path becomes its file:// URI)."""
        check_version(version)
        return dataclasses.replace(
            version, source_uri=check_source_uri(version.source_uri, self.artifact_roots)
        )

    async def _audit_remote_code(self, conn: repo.Conn, version: ModelVersion, *, actor: str) -> None:
        """A version that asks workers to run code from its artifact gets an audit row of its own,
        in the registering transaction, so the history names who asked for code execution."""
        if not version.inference_config.trust_remote_code:
            return
        await repo.insert_audit(
            conn,
            actor=actor,
            action="version.remote_code",
            entity_type="version",
            entity_id=f"{version.model_id}:{version.version}",
            before=None,
            after={
                "trust_remote_code": True,
                "source_uri": version.source_uri,
                "checkpoint_hash": version.checkpoint_hash,
            },
            reason="the version asks workers to run Python code from its artifact (trust_remote_code); "
            "only workers started with --allow-remote-code load it",
        )

    async def get_version(self, model_id: str, version_or_alias: str) -> ModelVersion:
        async with self.db.connection() as conn:
            return await self._version(conn, model_id, version_or_alias)

    async def _version(self, conn: repo.Conn, model_id: str, version_or_alias: str) -> ModelVersion:
        await self._model(conn, model_id)
        version = version_or_alias
        alias = await repo.get_alias(conn, model_id=model_id, alias=version_or_alias)
        if alias is not None:
            version = alias.version
        found = await repo.get_version(conn, model_id=model_id, version=version)
        if found is None:
            raise NotFound(
                f"model {model_id!r} has no version or alias {version_or_alias!r}; "
                f"`modelyard versions list {model_id}` shows its versions"
            )
        return found

    async def list_versions(
        self,
        *,
        model_id: str,
        model_type: str,
        tags: Sequence[str],
        status: str,
        alias: str,
        query: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[ModelVersion], str]:
        limit = _page_size(page_size)
        tag_filter: dict[str, str | None] = {}
        for tag in tags:
            key, sep, value = tag.partition("=")
            tag_filter[key] = value if sep else None
        async with self.db.connection() as conn:
            rows = await repo.list_versions(
                conn,
                model_id=model_id,
                model_type=model_type,
                tags=tag_filter,
                status=status,
                alias=alias,
                query=query,
                before_id=_int_token(page_token),
                limit=limit + 1,
            )
        page, token = _paged(rows, limit, lambda row: row[0])
        return [v for _, v in page], token

    async def update_version(
        self,
        model_id: str,
        version: str,
        *,
        set_tags: dict[str, str],
        remove_tags: Sequence[str],
        description: str | None,
        status: str,
        actor: str,
        reason: str,
    ) -> ModelVersion:
        async with self.db.transaction() as conn:
            before = await self._version(conn, model_id, version)
            if status == "archived" and before.status != "archived":
                await self._refuse_if_in_use(conn, before)
            tags = {k: v for k, v in {**before.tags, **set_tags}.items() if k not in set(remove_tags)}
            await repo.update_version(
                conn,
                model_id=model_id,
                version=before.version,
                tags=tags,
                description=before.description if description is None else description,
                status=status or before.status,
            )
            after = await repo.get_version(conn, model_id=model_id, version=before.version)
            action = (
                "version.archive"
                if status == "archived" and before.status != "archived"
                else "version.update"
            )
            await repo.insert_audit(
                conn,
                actor=actor,
                action=action,
                entity_type="version",
                entity_id=f"{model_id}:{before.version}",
                before=before,
                after=after,
                reason=reason,
            )
        assert after is not None
        return after

    async def _refuse_if_in_use(self, conn: repo.Conn, version: ModelVersion) -> None:
        uses = (await repo.versions_in_use(conn, model_id=version.model_id)).get(version.version)
        if uses:
            raise FailedPrecondition(
                f"version {version.model_id} {version.version} is in use ({'; '.join(uses)}); "
                "route traffic away and move aliases first"
            )

    async def cleanup_versions(
        self, model_id: str, *, keep_last: int, dry_run: bool, skip_in_use: bool, actor: str, reason: str
    ) -> tuple[list[str], list[str]]:
        if keep_last < 1:
            raise InvalidArgument("keep_last must be at least 1")
        async with self.db.transaction() as conn:
            await self._model(conn, model_id)
            candidates = (await repo.version_ids_newest_first(conn, model_id=model_id))[keep_last:]
            uses = await repo.versions_in_use(conn, model_id=model_id)
            in_use = [v for v in candidates if v in uses]
            if in_use and not skip_in_use:
                detail = "; ".join(f"{v}: {', '.join(uses[v])}" for v in in_use)
                raise FailedPrecondition(
                    f"cleanup would remove versions still in use ({detail}); nothing was removed. "
                    "Move routes and aliases first, or pass skip_in_use to keep them"
                )
            removed = [v for v in candidates if v not in uses]
            if removed and not dry_run:
                before = [
                    v for v in (await repo.get_versions(conn, model_id=model_id, versions=removed)).values()
                ]
                await repo.delete_versions(conn, model_id=model_id, versions=removed)
                await repo.insert_audit(
                    conn,
                    actor=actor,
                    action="version.cleanup",
                    entity_type="model",
                    entity_id=model_id,
                    before=before,
                    after={"removed": removed, "keep_last": keep_last},
                    reason=reason,
                )
        return removed, in_use

    # ---- aliases and promotion -----------------------------------------------------------------

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
    ) -> tuple[Alias, str, list[GateResult], list[Deployment]]:
        check_name("alias", alias)
        parsed = [parse_gate(g) for g in gates]
        async with self.db.transaction() as conn:
            target = await self._alias_target(conn, model_id, version)
            results = await self._check_gates(conn, target, parsed, gate_suite)
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
            await repo.upsert_alias(conn, model_id=model_id, alias=alias, version=target.version)
            switched = []
            for deployment in await repo.list_deployments(conn, model_id=model_id, follow_alias=alias):
                locked = await repo.get_deployment(conn, name=deployment.name, for_update=True)
                assert locked is not None
                switched.append(
                    await self._change_routes(
                        conn,
                        locked,
                        [Route(target.version, 100)],
                        action="alias.follow",
                        acknowledge_incompatible=acknowledge_incompatible,
                        actor=actor,
                        reason=reason or f"alias {alias} moved to {target.version}",
                    )
                )
            after = await repo.get_alias(conn, model_id=model_id, alias=alias)
            assert after is not None
            await repo.insert_audit(
                conn,
                actor=actor,
                action="alias.set",
                entity_type="alias",
                entity_id=f"{model_id}:{alias}",
                before=previous,
                after={"alias": after, "gates": results},
                reason=reason,
            )
        if switched:
            self.broadcast.kick()
        return after, previous.version if previous else "", results, switched

    async def _alias_target(self, conn: repo.Conn, model_id: str, version: str) -> ModelVersion:
        """The version an alias may point at (SetAlias and import): registered, not archived."""
        target = await self._version(conn, model_id, version)
        if target.status == "archived":
            raise FailedPrecondition(
                f"version {model_id} {target.version} is archived; it cannot be promoted"
            )
        return target

    async def _check_gates(
        self, conn: repo.Conn, version: ModelVersion, gates: Sequence[Any], suite: str
    ) -> list[GateResult]:
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
            await repo.insert_audit(
                conn,
                actor=actor,
                action="alias.delete",
                entity_type="alias",
                entity_id=f"{model_id}:{alias}",
                before=existing,
                after=None,
                reason=reason,
            )

    async def list_aliases(self, model_id: str) -> list[Alias]:
        async with self.db.connection() as conn:
            return await repo.list_aliases(conn, model_id=model_id)

    # ---- deployments ---------------------------------------------------------------------------

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
            model, routes, versions = await self._new_deployment(conn, model_id, routes, follow_alias)
            deployment = Deployment(
                name=name,
                model_id=model_id,
                model_type=model.model_type,
                routes=list(routes),
                follow_alias=follow_alias,
                signature=_contract(routes, versions),
                description=description,
            )
            deployment.revision = await repo.next_revision(conn)
            await repo.save_deployment(conn, deployment=deployment, create=True)
            created = await repo.get_deployment(conn, name=name)
            assert created is not None
            await self._record(conn, None, created, action="deployment.create", actor=actor, reason=reason)
        self.broadcast.kick()
        return created

    async def _new_deployment(
        self, conn: repo.Conn, model_id: str, routes: Sequence[Route], follow_alias: str
    ) -> tuple[Model, list[Route], dict[str, ModelVersion]]:
        """A new deployment's model, routes (the followed alias's version when none are given) and
        routed versions, checked as CreateDeployment and import both check them."""
        model = await self._model(conn, model_id)
        if follow_alias:
            alias = await repo.get_alias(conn, model_id=model_id, alias=follow_alias)
            if alias is None:
                raise NotFound(f"model {model_id!r} has no alias {follow_alias!r} to follow")
            if not routes:
                routes = [Route(alias.version, 100)]
        checked = check_routes(routes)
        return model, checked, await self._routable(conn, model_id, checked)

    async def get_deployment(self, name: str) -> Deployment:
        async with self.db.connection() as conn:
            return await self._deployment(conn, name)

    async def _deployment(self, conn: repo.Conn, name: str, *, for_update: bool = False) -> Deployment:
        found = await repo.get_deployment(conn, name=name, for_update=for_update)
        if found is None:
            raise NotFound(f"unknown deployment {name!r}; `modelyard deployments list` shows them")
        return found

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
            current = await self._deployment(conn, name, for_update=True)
            if expected_revision and current.revision != expected_revision:
                raise FailedPrecondition(
                    f"deployment {name} is at revision {current.revision}, not {expected_revision}; "
                    "re-read it and retry"
                )
            updated = await self._change_routes(
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

        return await self._edit_staged(
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

        return await self._edit_staged(
            name,
            version,
            unstaged,
            action="version.unstage",
            actor=actor,
            reason=reason or f"unstage {version}",
        )

    async def _edit_staged(
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
            current = await self._deployment(conn, name, for_update=True)
            routes = edit(list(current.routes))
            if routes is None:
                return current
            updated = await self._change_routes(
                conn,
                current,
                routes,
                action=action,
                acknowledge_incompatible=False,
                actor=actor,
                reason=reason,
            )
        self.broadcast.kick()
        return updated

    async def rollback(
        self, name: str, *, to_revision: int, acknowledge_incompatible: bool, actor: str, reason: str
    ) -> Deployment:
        async with self.db.transaction() as conn:
            current = await self._deployment(conn, name, for_update=True)
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
            updated = await self._change_routes(
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
        async with self.db.transaction() as conn:
            current = await self._deployment(conn, name, for_update=True)
            revision = await repo.next_revision(conn)
            await repo.delete_deployment(conn, name=name)
            gone = dataclasses.replace(current, revision=revision)
            await repo.insert_event(
                conn, event=DeploymentEvent(revision, "deleted", "deployment.delete", gone), channel=CHANNEL
            )
            await repo.insert_audit(
                conn,
                actor=actor,
                action="deployment.delete",
                entity_type="deployment",
                entity_id=name,
                before=current,
                after=None,
                reason=reason,
                revision=revision,
            )
        self.broadcast.kick()
        return revision

    async def check_compatibility(self, deployment: str, model_id: str, version: str) -> list[str]:
        async with self.db.connection() as conn:
            current = await self._deployment(conn, deployment)
            candidate = await self._version(conn, model_id or current.model_id, version)
        if candidate.model_id != current.model_id:
            return [
                f"version belongs to model {candidate.model_id}, the deployment serves {current.model_id}"
            ]
        return current.signature.differences(candidate.signature) if current.signature else []

    async def _routable(
        self, conn: repo.Conn, model_id: str, routes: Sequence[Route]
    ) -> dict[str, ModelVersion]:
        versions = await repo.get_versions(conn, model_id=model_id, versions=[r.version for r in routes])
        for route in routes:
            found = versions.get(route.version)
            if found is None:
                raise NotFound(
                    f"model {model_id!r} has no version {route.version}; register it before routing to it"
                )
            if found.status == "archived":
                raise FailedPrecondition(
                    f"version {model_id} {route.version} is archived and cannot be routed"
                )
        return versions

    async def _change_routes(
        self,
        conn: repo.Conn,
        current: Deployment,
        routes: Sequence[Route],
        *,
        action: str,
        acknowledge_incompatible: bool,
        actor: str,
        reason: str,
    ) -> Deployment:
        versions = await self._routable(conn, current.model_id, routes)
        contract = current.signature
        differences = []
        if contract is not None:
            for route in routes:
                if route.weight > 0:
                    for diff in contract.differences(versions[route.version].signature):
                        differences.append(f"{route.version}: {diff}")
        if differences and not acknowledge_incompatible:
            raise FailedPrecondition(
                f"deployment {current.name} serves consumers that depend on its signature, and "
                f"{'; '.join(differences)}. Stored vectors must be re-indexed; pass "
                "acknowledge_incompatible (--ack-incompatible) to route anyway"
            )
        new = dataclasses.replace(
            current,
            routes=list(routes),
            signature=_contract(routes, versions) if differences or contract is None else contract,
            revision=await repo.next_revision(conn),
        )
        await repo.save_deployment(conn, deployment=new, create=False)
        updated = await repo.get_deployment(conn, name=current.name)
        assert updated is not None
        await self._record(conn, current, updated, action=action, actor=actor, reason=reason)
        return updated

    async def _record(
        self,
        conn: repo.Conn,
        before: Deployment | None,
        after: Deployment,
        *,
        action: str,
        actor: str,
        reason: str,
    ) -> None:
        await repo.insert_event(
            conn, event=DeploymentEvent(after.revision, "upserted", action, after), channel=CHANNEL
        )
        await repo.insert_audit(
            conn,
            actor=actor,
            action=action,
            entity_type="deployment",
            entity_id=after.name,
            before=_audit_view(before),
            after=_audit_view(after),
            reason=reason,
            revision=after.revision,
        )

    # ---- broadcast -----------------------------------------------------------------------------

    async def watch(
        self, names: Sequence[str], since_revision: int
    ) -> AsyncIterator[tuple[str, int, list[Deployment], str]]:
        """Yield (kind, revision, deployments, action): a snapshot unless resuming, then every change."""
        wanted = set(names)
        last = since_revision
        if since_revision <= 0 or since_revision > self.broadcast.last_revision:
            # Resuming from a revision this registry never issued is answered with a snapshot.
            await self.broadcast.fetch()
            if since_revision <= 0 or since_revision > self.broadcast.last_revision:
                async with self.db.transaction(isolation="repeatable_read") as conn:
                    last = await repo.current_revision(conn)
                    deployments = await repo.list_deployments(conn)
                yield "snapshot", last, [d for d in deployments if not wanted or d.name in wanted], ""
        while True:
            for ev in await self.broadcast.events_after(last):
                last = ev.revision
                if not wanted or ev.deployment.name in wanted:
                    yield ev.kind, ev.revision, [ev.deployment], ev.action
            await self.broadcast.wait_beyond(last, within_s=15.0)

    # ---- history -------------------------------------------------------------------------------

    async def list_audit(
        self, *, entity_type: str, entity_id: str, action: str, page_size: int, page_token: str
    ) -> tuple[list[AuditEvent], str]:
        limit = _page_size(page_size)
        async with self.db.connection() as conn:
            events = await repo.list_audit(
                conn,
                entity_type=entity_type,
                entity_id=entity_id,
                action=action,
                before_id=_int_token(page_token),
                limit=limit + 1,
            )
        return _paged(events, limit, lambda e: e.id)

    # ---- workers and rollout -------------------------------------------------------------------

    async def report_status(self, status: WorkerStatus) -> None:
        if not status.worker_id:
            raise InvalidArgument("worker_id is required in a status report")
        async with self.db.connection() as conn:
            await repo.upsert_worker(conn, status=status)

    async def list_workers(self, *, deployment: str, include_stale: bool) -> list[WorkerStatus]:
        async with self.db.connection() as conn:
            workers = await repo.list_workers(conn, live_within=self.heartbeat_ttl)
        return [
            w
            for w in workers
            if (include_stale or w.live)
            and (not deployment or any(d.deployment == deployment for d in w.deployments))
        ]

    async def all_rollouts(self) -> list[RolloutStatus]:
        """Rollout of every deployment at its current revision."""
        async with self.db.connection() as conn:
            deployments = await repo.list_deployments(conn)
            workers = await repo.list_workers(conn, live_within=self.heartbeat_ttl)
        now = dt.datetime.now(dt.UTC)
        return [
            _rollout(d, d.revision, workers, now=now, lost_window=self.lost_worker_window)
            for d in deployments
        ]

    async def rollout_status(self, name: str, *, revision: int, wait_timeout_s: float) -> RolloutStatus:
        deadline = time.monotonic() + max(wait_timeout_s, 0.0)
        while True:
            async with self.db.connection() as conn:
                deployment = await self._deployment(conn, name)
                workers = await repo.list_workers(conn, live_within=self.heartbeat_ttl)
            status = _rollout(
                deployment,
                revision or deployment.revision,
                workers,
                now=dt.datetime.now(dt.UTC),
                lost_window=self.lost_worker_window,
            )
            if status.converged or time.monotonic() >= deadline:
                return status
            await asyncio.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))

    # ---- performance store ---------------------------------------------------------------------

    async def record_run(self, run: BenchmarkRun, *, actor: str) -> BenchmarkRun:
        check_run(run)
        async with self.db.transaction() as conn:
            await self._version(conn, run.model_id, run.version)
            await repo.save_run(conn, run=dataclasses.replace(run, created_by=run.created_by or actor))
            stored = await repo.get_run(conn, run_id=run.run_id, with_samples=True)
        assert stored is not None
        return stored

    async def get_run(self, run_id: str, *, with_samples: bool) -> BenchmarkRun:
        async with self.db.connection() as conn:
            run = await repo.get_run(conn, run_id=run_id, with_samples=with_samples)
        if run is None:
            raise NotFound(f"unknown benchmark run {run_id!r}; `modelyard bench list` shows the stored runs")
        return run

    async def list_runs(
        self, *, model_id: str, version: str, suite: str, status: str, page_size: int, page_token: str
    ) -> tuple[list[BenchmarkRun], str]:
        limit = _page_size(page_size)
        async with self.db.connection() as conn:
            rows = await repo.list_runs(
                conn,
                model_id=model_id,
                version=version,
                suite=suite,
                status=status,
                before_seq=_int_token(page_token),
                limit=limit + 1,
            )
        page, token = _paged(rows, limit, lambda row: row[0])
        return [r for _, r in page], token

    async def version_metrics(self, model_id: str, version: str, suite: str) -> list[VersionMetric]:
        async with self.db.connection() as conn:
            resolved = await self._version(conn, model_id, version)
            return await repo.version_metrics(conn, model_id=model_id, version=resolved.version, suite=suite)

    # ---- export and import ---------------------------------------------------------------------

    async def export_json(self) -> str:
        async with self.db.transaction(isolation="repeatable_read") as conn:
            document = {
                "format": EXPORT_FORMAT,
                "models": await repo.all_models(conn),
                "versions": await repo.all_versions(conn),
                "aliases": await repo.list_aliases(conn, model_id=""),
                "deployments": [_audit_view(d) for d in await repo.list_deployments(conn)],
                "benchmark_runs": await repo.all_runs(conn),
            }
        return json.dumps(to_json(document), indent=2, sort_keys=True)

    async def import_json(self, text: str, *, actor: str) -> dict[str, int]:
        """Import an export of `export_json`. Every entry is checked as the RPC that creates it
        checks it; an error names the entry's JSON path, and nothing is imported unless all is."""
        try:
            # Parsing and type checks of up to 64 MiB are CPU work: off the event loop.
            document = await asyncio.get_running_loop().run_in_executor(
                None, read_import_document, text, EXPORT_FORMAT
            )
            counts = {
                "models": 0,
                "versions": 0,
                "aliases": 0,
                "deployments": 0,
                "benchmark_runs": 0,
                "unchanged": 0,
            }
            async with self.db.transaction() as conn:
                await self._import(conn, document, counts, actor)
        except ModelyardError as exc:
            raise type(exc)(f"{exc.message}; nothing was imported") from exc
        self.broadcast.kick()
        return counts

    async def _import(self, conn: repo.Conn, doc: ImportDocument, counts: dict[str, int], actor: str) -> None:
        for path, model in doc.models:
            with _entry(path):
                check_model(model)
                existing = await repo.get_model(conn, model_id=model.model_id)
                if existing is not None:
                    _same_or_conflict("model", model.model_id, existing.model_type == model.model_type)
                    counts["unchanged"] += 1
                    continue
                await repo.insert_model(
                    conn, model=dataclasses.replace(model, created_by=model.created_by or actor)
                )
                counts["models"] += 1
        for path, version in doc.versions:
            with _entry(path):
                version = self._check_version(version)
                found = await repo.get_version(conn, model_id=version.model_id, version=version.version)
                if found is not None:
                    _same_or_conflict(
                        "version",
                        f"{version.model_id} {version.version}",
                        found.checkpoint_hash == version.checkpoint_hash,
                    )
                    counts["unchanged"] += 1
                    continue
                await self._model(conn, version.model_id)
                await repo.insert_version(
                    conn, version=dataclasses.replace(version, created_by=version.created_by or actor)
                )
                await self._audit_remote_code(conn, version, actor=actor)
                if version.status != "ready" or version.tags or version.description:
                    await repo.update_version(
                        conn,
                        model_id=version.model_id,
                        version=version.version,
                        tags=version.tags,
                        description=version.description,
                        status=version.status,
                    )
                counts["versions"] += 1
        for path, alias in doc.aliases:
            with _entry(path):
                # An imported alias is a move without gates: they were checked where it was made.
                check_name("alias", alias.alias)
                existing_alias = await repo.get_alias(conn, model_id=alias.model_id, alias=alias.alias)
                if existing_alias is not None:
                    _same_or_conflict(
                        "alias", f"{alias.model_id}:{alias.alias}", existing_alias.version == alias.version
                    )
                    counts["unchanged"] += 1
                    continue
                target = await self._alias_target(conn, alias.model_id, alias.version)
                await repo.upsert_alias(
                    conn, model_id=alias.model_id, alias=alias.alias, version=target.version
                )
                counts["aliases"] += 1
        for path, deployment in doc.deployments:
            with _entry(path):
                check_name("deployment name", deployment.name)
                existing_dep = await repo.get_deployment(conn, name=deployment.name)
                if existing_dep is not None:
                    _same_or_conflict("deployment", deployment.name, existing_dep.routes == deployment.routes)
                    counts["unchanged"] += 1
                    continue
                _, deployment.routes, versions = await self._new_deployment(
                    conn, deployment.model_id, deployment.routes, deployment.follow_alias
                )
                deployment.signature = deployment.signature or _contract(deployment.routes, versions)
                deployment.revision = await repo.next_revision(conn)
                await repo.save_deployment(conn, deployment=deployment, create=True)
                created = await repo.get_deployment(conn, name=deployment.name)
                assert created is not None
                await self._record(
                    conn, None, created, action="registry.import", actor=actor, reason="import"
                )
                counts["deployments"] += 1
        for path, run in doc.benchmark_runs:
            with _entry(path):
                check_run(run)
                if await repo.get_run(conn, run_id=run.run_id, with_samples=False) is not None:
                    counts["unchanged"] += 1
                    continue
                await self._version(conn, run.model_id, run.version)
                await repo.save_run(conn, run=dataclasses.replace(run, created_by=run.created_by or actor))
                counts["benchmark_runs"] += 1
        await repo.insert_audit(
            conn,
            actor=actor,
            action="registry.import",
            entity_type="registry",
            entity_id="*",
            before=None,
            after=counts,
            reason="",
        )


@contextlib.contextmanager
def _entry(path: str) -> Iterator[None]:
    """A refusal of one import entry names its JSON path (`versions[3]: invalid version ...`)."""
    try:
        yield
    except ModelyardError as exc:
        raise type(exc)(f"{path}: {exc.message}") from exc


def _same_or_conflict(kind: str, key: str, same: bool) -> None:
    if not same:
        raise AlreadyExists(f"import conflicts with the existing {kind} {key}")


def _contract(routes: Sequence[Route], versions: dict[str, ModelVersion]) -> Signature:
    """The signature consumers get: that of the most heavily weighted route."""
    top = max(routes, key=lambda r: r.weight)
    return versions[top.version].signature


def _audit_view(deployment: Deployment | None) -> dict[str, Any] | None:
    """A deployment as history records it: without the full version documents."""
    if deployment is None:
        return None
    data: dict[str, Any] = to_json(deployment)
    data.pop("versions", None)
    return data


def _rollout(
    deployment: Deployment,
    revision: int,
    workers: Sequence[WorkerStatus],
    *,
    now: dt.datetime,
    lost_window: dt.timedelta,
) -> RolloutStatus:
    """Where each worker serving `deployment` stands on `revision`.

    A worker whose last heartbeat said `stopping` left on purpose and is not counted. One that went
    silent without saying so (crashed, partitioned, SIGKILLed) is *lost* until `lost_window` after
    its last heartbeat, and a rollout with a lost worker is not converged: the fleet may be short of
    a replica. After the window it is dropped, so a fleet scaled down without a clean stop
    converges again eventually.
    """
    wanted = {r.version for r in deployment.routes}
    rollouts = []
    for worker in workers:
        status = next((d for d in worker.deployments if d.deployment == deployment.name), None)
        if status is None or worker.state == "stopping":
            continue
        if not worker.live:
            silent = now - worker.last_seen if worker.last_seen else lost_window
            if silent >= lost_window:
                continue
            detail = f"lost: no heartbeat for {silent.total_seconds():.0f} s"
            rollouts.append(
                WorkerRollout(
                    worker.worker_id, status.revision, False, detail, lost=True, last_seen=worker.last_seen
                )
            )
            continue
        serving = {v.version for v in status.versions if v.state == "serving"}
        failed = [f"{v.version}: {v.last_error}" for v in status.versions if v.state == "failed"]
        missing = sorted(wanted - serving)
        converged = status.revision >= revision and not missing
        if converged:
            detail = "converged"
        elif failed:
            detail = "failed " + "; ".join(failed)
        elif status.revision < revision:
            detail = f"at revision {status.revision}"
        else:
            detail = f"loading {', '.join(missing)}"
        rollouts.append(
            WorkerRollout(worker.worker_id, status.revision, converged, detail, last_seen=worker.last_seen)
        )
    return RolloutStatus(
        deployment=deployment.name,
        revision=revision,
        converged=bool(rollouts) and all(r.converged for r in rollouts),
        workers=rollouts,
    )
