"""Export of the whole registry as one JSON document, and its import (all or nothing), each entry
checked as the RPC that creates it checks it (`import_document` reads and type-checks the text)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Iterator

from modelyard.common.artifact_roots import ArtifactRoots
from modelyard.common.errors import AlreadyExists, ModelyardError
from modelyard.common.states import VersionStatus
from modelyard.registry import audit
from modelyard.registry import repository as repo
from modelyard.registry.aliases import alias_target
from modelyard.registry.broadcast import DeploymentBroadcast
from modelyard.registry.catalog import audit_remote_code, checked_version, find_model, find_version
from modelyard.registry.db import Database
from modelyard.registry.deployments import check_new_deployment, contract, insert_deployment
from modelyard.registry.domain import ImportCounts, to_json
from modelyard.registry.import_document import ImportDocument, read_import_document
from modelyard.registry.validation import check_model, check_name, check_run

EXPORT_FORMAT = "modelyard-registry/1"


class Transfer:
    def __init__(self, db: Database, broadcast: DeploymentBroadcast, artifact_roots: ArtifactRoots) -> None:
        self.db = db
        self.broadcast = broadcast
        self.artifact_roots = artifact_roots

    async def export_json(self) -> str:
        async with self.db.transaction(isolation="repeatable_read") as conn:
            document = {
                "format": EXPORT_FORMAT,
                "models": await repo.all_models(conn),
                "versions": await repo.all_versions(conn),
                "aliases": await repo.list_aliases(conn, model_id=""),
                "deployments": [audit.audit_view(d) for d in await repo.list_deployments(conn)],
                "benchmark_runs": await repo.all_runs(conn),
            }
        return json.dumps(to_json(document), indent=2, sort_keys=True)

    async def import_json(self, text: str, *, actor: str) -> ImportCounts:
        """Import an export of `export_json`. Every entry is checked as the RPC that creates it
        checks it; an error names the entry's JSON path, and nothing is imported unless all is."""
        try:
            # Parsing and type checks of up to 64 MiB are CPU work: off the event loop.
            document = await asyncio.get_running_loop().run_in_executor(
                None, read_import_document, text, EXPORT_FORMAT
            )
            counts = ImportCounts()
            async with self.db.transaction() as conn:
                await self._import(conn, document, counts, actor)
        except ModelyardError as exc:
            raise type(exc)(f"{exc.message}; nothing was imported") from exc
        self.broadcast.kick()
        return counts

    async def _import(self, conn: repo.Conn, doc: ImportDocument, counts: ImportCounts, actor: str) -> None:
        for path, model in doc.models:
            with _entry(path):
                check_model(model)
                existing = await repo.get_model(conn, model_id=model.model_id)
                if existing is not None:
                    _same_or_conflict("model", model.model_id, existing.model_type == model.model_type)
                    counts.unchanged += 1
                    continue
                await repo.insert_model(
                    conn, model=dataclasses.replace(model, created_by=model.created_by or actor)
                )
                counts.models += 1
        for path, version in doc.versions:
            with _entry(path):
                version = checked_version(version, self.artifact_roots)
                found = await repo.get_version(conn, model_id=version.model_id, version=version.version)
                if found is not None:
                    _same_or_conflict(
                        "version",
                        f"{version.model_id} {version.version}",
                        found.checkpoint_hash == version.checkpoint_hash,
                    )
                    counts.unchanged += 1
                    continue
                await find_model(conn, version.model_id)
                await repo.insert_version(
                    conn, version=dataclasses.replace(version, created_by=version.created_by or actor)
                )
                await audit_remote_code(conn, version, actor=actor)
                if version.status != VersionStatus.READY or version.tags or version.description:
                    await repo.update_version(
                        conn,
                        model_id=version.model_id,
                        version=version.version,
                        tags=version.tags,
                        description=version.description,
                        status=version.status,
                    )
                counts.versions += 1
        for path, alias in doc.aliases:
            with _entry(path):
                # An imported alias is a move without gates: they were checked where it was made.
                check_name("alias", alias.alias)
                existing_alias = await repo.get_alias(conn, model_id=alias.model_id, alias=alias.alias)
                if existing_alias is not None:
                    _same_or_conflict(
                        "alias", f"{alias.model_id}:{alias.alias}", existing_alias.version == alias.version
                    )
                    counts.unchanged += 1
                    continue
                target = await alias_target(conn, alias.model_id, alias.version)
                await repo.upsert_alias(
                    conn, model_id=alias.model_id, alias=alias.alias, version=target.version
                )
                counts.aliases += 1
        for path, deployment in doc.deployments:
            with _entry(path):
                check_name("deployment name", deployment.name)
                existing_dep = await repo.get_deployment(conn, name=deployment.name)
                if existing_dep is not None:
                    _same_or_conflict("deployment", deployment.name, existing_dep.routes == deployment.routes)
                    counts.unchanged += 1
                    continue
                new = await check_new_deployment(
                    conn, deployment.model_id, deployment.routes, deployment.follow_alias
                )
                deployment.routes = new.routes
                deployment.signature = deployment.signature or contract(new.routes, new.versions)
                await insert_deployment(
                    conn, deployment, new.versions, action="registry.import", actor=actor, reason="import"
                )
                counts.deployments += 1
        for path, run in doc.benchmark_runs:
            with _entry(path):
                check_run(run)
                if await repo.get_run(conn, run_id=run.run_id, with_samples=False) is not None:
                    counts.unchanged += 1
                    continue
                await find_version(conn, run.model_id, run.version)
                await repo.save_run(conn, run=dataclasses.replace(run, created_by=run.created_by or actor))
                counts.benchmark_runs += 1
        await audit.record(
            conn, actor=actor, action="registry.import", entity_type="registry", entity_id="*", after=counts
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
