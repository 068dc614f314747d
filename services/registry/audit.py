"""The history: one helper writes a change's audit row (and for a deployment also its event and
notification) inside the caller's transaction, and `History` reads the log back in pages."""

from __future__ import annotations

from typing import Any

from modelyard.common.states import EventKind
from modelyard.registry import paging
from modelyard.registry import repository as repo
from modelyard.registry.broadcast import CHANNEL
from modelyard.registry.db import Database
from modelyard.registry.domain import AuditEvent, Deployment, DeploymentEvent, to_json
from modelyard.registry.paging import Page


async def record(
    conn: repo.Conn,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    before: Any = None,
    after: Any = None,
    reason: str = "",
    revision: int = 0,
) -> None:
    """One audit row, committed (or rolled back) with the change it describes."""
    await repo.insert_audit(
        conn,
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        before=before,
        after=after,
        reason=reason,
        revision=revision,
    )


async def record_deployment(
    conn: repo.Conn,
    before: Deployment | None,
    after: Deployment,
    *,
    action: str,
    actor: str,
    reason: str,
    deleted: bool = False,
) -> None:
    """A deployment change at `after.revision`: the event watchers read, its NOTIFY (sent by
    PostgreSQL at commit, never before) and the audit row. `deleted`: `after` is the deployment as
    it was when it was removed."""
    kind = EventKind.DELETED if deleted else EventKind.UPSERTED
    await repo.insert_event(conn, event=DeploymentEvent(after.revision, kind, action, after), channel=CHANNEL)
    await record(
        conn,
        actor=actor,
        action=action,
        entity_type="deployment",
        entity_id=after.name,
        before=audit_view(before),
        after=None if deleted else audit_view(after),
        reason=reason,
        revision=after.revision,
    )


def audit_view(deployment: Deployment | None) -> dict[str, Any] | None:
    """A deployment as history records it: without the full version documents."""
    if deployment is None:
        return None
    data: dict[str, Any] = to_json(deployment)
    data.pop("versions", None)
    return data


class History:
    """Reads of the append-only audit log, newest first."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def list_audit(
        self, *, entity_type: str, entity_id: str, action: str, page_size: int, page_token: str
    ) -> Page[AuditEvent]:
        limit = paging.page_size(page_size)
        async with self.db.connection() as conn:
            events = await repo.list_audit(
                conn,
                entity_type=entity_type,
                entity_id=entity_id,
                action=action,
                before_id=paging.int_token(page_token),
                limit=limit + 1,
            )
        return paging.page_of(events, limit, lambda e: e.id)
