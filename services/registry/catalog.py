"""The catalog: models and their immutable versions; registration, lookup, search, tags, archive
and cleanup. The lookups here (`find_model`, `find_version`) are what every other concern uses."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from modelyard.common.artifact_roots import ArtifactRoots
from modelyard.common.errors import FailedPrecondition, InvalidArgument, NotFound
from modelyard.common.states import VersionStatus
from modelyard.registry import audit, paging
from modelyard.registry import repository as repo
from modelyard.registry.db import Database
from modelyard.registry.domain import Cleanup, Model, ModelVersion
from modelyard.registry.paging import Page
from modelyard.registry.validation import check_model, check_model_type, check_source_uri, check_version


async def find_model(conn: repo.Conn, model_id: str) -> Model:
    model = await repo.get_model(conn, model_id=model_id)
    if model is None:
        raise NotFound(f"unknown model {model_id!r}; `modelyard models list` shows the registered ones")
    return model


async def find_version(conn: repo.Conn, model_id: str, version_or_alias: str) -> ModelVersion:
    """A version of a known model, named by its version or by an alias."""
    await find_model(conn, model_id)
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


def checked_version(version: ModelVersion, roots: ArtifactRoots) -> ModelVersion:
    """What a new version must satisfy before any lookup, registered or imported alike; returns it
    with its source_uri normalised (a plain path becomes its file:// URI)."""
    check_version(version)
    return dataclasses.replace(version, source_uri=check_source_uri(version.source_uri, roots))


async def audit_remote_code(conn: repo.Conn, version: ModelVersion, *, actor: str) -> None:
    """A version that asks workers to run code from its artifact gets an audit row of its own,
    in the registering transaction, so the history names who asked for code execution."""
    if not version.inference_config.trust_remote_code:
        return
    await audit.record(
        conn,
        actor=actor,
        action="version.remote_code",
        entity_type="version",
        entity_id=f"{version.model_id}:{version.version}",
        after={
            "trust_remote_code": True,
            "source_uri": version.source_uri,
            "checkpoint_hash": version.checkpoint_hash,
        },
        reason="the version asks workers to run Python code from its artifact (trust_remote_code); "
        "only workers started with --allow-remote-code load it",
    )


async def _audit_model_created(conn: repo.Conn, model: Model, *, actor: str) -> None:
    await audit.record(
        conn, actor=actor, action="model.create", entity_type="model", entity_id=model.model_id, after=model
    )


class Catalog:
    """Models and versions. Callers pass the acting principal's name."""

    def __init__(self, db: Database, artifact_roots: ArtifactRoots) -> None:
        self.db = db
        self.artifact_roots = artifact_roots  # where a version's source_uri may point

    async def create_model(self, model: Model, *, actor: str) -> Model:
        check_model(model)
        async with self.db.transaction() as conn:
            created = await repo.insert_model(conn, model=dataclasses.replace(model, created_by=actor))
            await _audit_model_created(conn, created, actor=actor)
        return created

    async def get_model(self, model_id: str) -> Model:
        async with self.db.connection() as conn:
            return await find_model(conn, model_id)

    async def list_models(self, *, model_type: str, page_size: int, page_token: str) -> Page[Model]:
        limit = paging.page_size(page_size)
        async with self.db.connection() as conn:
            models = await repo.list_models(
                conn, model_type=model_type, after=paging.decode_token(page_token), limit=limit + 1
            )
        return paging.page_of(models, limit, lambda m: m.model_id)

    async def register_version(
        self, version: ModelVersion, *, actor: str, create_model: bool = False, model_type: str = ""
    ) -> ModelVersion:
        version = checked_version(version, self.artifact_roots)
        version = dataclasses.replace(
            version, created_by=actor, created_at=None, status=VersionStatus.READY, aliases=[]
        )
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
                await _audit_model_created(conn, model, actor=actor)
            stored = await repo.insert_version(conn, version=version)
            await audit.record(
                conn,
                actor=actor,
                action="version.register",
                entity_type="version",
                entity_id=f"{stored.model_id}:{stored.version}",
                after=stored,
            )
            await audit_remote_code(conn, stored, actor=actor)
        return stored

    async def get_version(self, model_id: str, version_or_alias: str) -> ModelVersion:
        async with self.db.connection() as conn:
            return await find_version(conn, model_id, version_or_alias)

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
    ) -> Page[ModelVersion]:
        limit = paging.page_size(page_size)
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
                before_id=paging.int_token(page_token),
                limit=limit + 1,
            )
        return paging.keyed_page(rows, limit)

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
            before = await find_version(conn, model_id, version)
            archiving = status == VersionStatus.ARCHIVED and before.status != VersionStatus.ARCHIVED
            if archiving:
                await refuse_if_in_use(conn, before)
            tags = {k: v for k, v in {**before.tags, **set_tags}.items() if k not in set(remove_tags)}
            after = await repo.update_version(
                conn,
                model_id=model_id,
                version=before.version,
                tags=tags,
                description=before.description if description is None else description,
                status=status or before.status,
            )
            await audit.record(
                conn,
                actor=actor,
                action="version.archive" if archiving else "version.update",
                entity_type="version",
                entity_id=f"{model_id}:{before.version}",
                before=before,
                after=after,
                reason=reason,
            )
        return after

    async def cleanup_versions(
        self, model_id: str, *, keep_last: int, dry_run: bool, skip_in_use: bool, actor: str, reason: str
    ) -> Cleanup:
        if keep_last < 1:
            raise InvalidArgument("keep_last must be at least 1")
        async with self.db.transaction() as conn:
            await find_model(conn, model_id)
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
                before = await repo.delete_versions(conn, model_id=model_id, versions=removed)
                await audit.record(
                    conn,
                    actor=actor,
                    action="version.cleanup",
                    entity_type="model",
                    entity_id=model_id,
                    before=before,
                    after={"removed": removed, "keep_last": keep_last},
                    reason=reason,
                )
        return Cleanup(removed, in_use)


async def refuse_if_in_use(conn: repo.Conn, version: ModelVersion) -> None:
    uses = (await repo.versions_in_use(conn, model_id=version.model_id)).get(version.version)
    if uses:
        raise FailedPrecondition(
            f"version {version.model_id} {version.version} is in use ({'; '.join(uses)}); "
            "route traffic away and move aliases first"
        )
