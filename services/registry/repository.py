"""SQL of the registry. Each function takes a connection (the caller owns the transaction) and
keyword arguments, and returns domain objects. Constraint violations become domain errors here."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg

from modelyard.common.errors import AlreadyExists, NotFound
from modelyard.common.states import PlanState
from modelyard.registry.db import Conn
from modelyard.registry.domain import (
    Alias,
    AuditEvent,
    BenchmarkRun,
    Deployment,
    DeploymentEvent,
    DeploymentStatus,
    GuardReading,
    InferenceConfig,
    Judgement,
    Lineage,
    LiveCounters,
    LiveWindow,
    LoadedVersion,
    Metric,
    Model,
    ModelVersion,
    RolloutPlan,
    Route,
    SeriesCounters,
    Signature,
    VersionMetric,
    WorkerStatus,
    deployment_from_json,
    signature_from_json,
    to_json,
)


def _returned(row: asyncpg.Record | None, what: str) -> asyncpg.Record:
    """The row an INSERT/UPDATE ... RETURNING gave back; none means the row is gone (deleted by a
    concurrent transaction after the caller read it)."""
    if row is None:
        raise NotFound(f"{what} no longer exists; re-read it and retry")
    return row


@contextlib.contextmanager
def _translate(what: str) -> Iterator[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise AlreadyExists(f"{what} already exists; registered entries are immutable") from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise NotFound(f"{what} refers to something that does not exist: {exc.detail or exc}") from exc


# ---- models -------------------------------------------------------------------------------------


def _model(row: asyncpg.Record) -> Model:
    return Model(
        model_id=row["model_id"],
        model_type=row["model_type"],
        description=row["description"],
        tags=row["tags"],
        created_by=row["created_by"],
        created_at=row["created_at"],
    )


async def insert_model(conn: Conn, *, model: Model) -> Model:
    with _translate(f"model {model.model_id!r}"):
        row = await conn.fetchrow(
            "INSERT INTO models (model_id, model_type, description, tags, created_by)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING *",
            model.model_id,
            model.model_type,
            model.description,
            model.tags,
            model.created_by,
        )
    return _model(_returned(row, f"model {model.model_id!r}"))


async def get_model(conn: Conn, *, model_id: str) -> Model | None:
    row = await conn.fetchrow("SELECT * FROM models WHERE model_id = $1", model_id)
    return _model(row) if row else None


async def list_models(conn: Conn, *, model_type: str, after: str, limit: int) -> list[Model]:
    rows = await conn.fetch(
        "SELECT * FROM models WHERE ($1 = '' OR model_type = $1) AND model_id > $2"
        " ORDER BY model_id LIMIT $3",
        model_type,
        after,
        limit,
    )
    return [_model(r) for r in rows]


# ---- versions -----------------------------------------------------------------------------------

_VERSION_COLUMNS = (
    "v.id, v.model_id, v.version, v.source_uri, v.checkpoint_hash, v.loader, v.inference_config,"
    " v.signature, v.lineage, v.tags, v.description, v.created_by, v.created_at, v.status,"
    " COALESCE((SELECT array_agg(a.alias ORDER BY a.alias) FROM aliases a"
    "           WHERE a.model_id = v.model_id AND a.version = v.version), '{}') AS aliases"
)


def _version(row: asyncpg.Record) -> ModelVersion:
    return ModelVersion(
        model_id=row["model_id"],
        version=row["version"],
        source_uri=row["source_uri"],
        checkpoint_hash=row["checkpoint_hash"],
        loader=row["loader"],
        inference_config=InferenceConfig(**row["inference_config"]),
        signature=signature_from_json(row["signature"]) or Signature(),
        lineage=Lineage(**row["lineage"]),
        tags=row["tags"],
        description=row["description"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        status=row["status"],
        aliases=list(row["aliases"]),
    )


async def insert_version(conn: Conn, *, version: ModelVersion) -> ModelVersion:
    """The stored version (a new version has no aliases yet)."""
    with _translate(f"version {version.model_id} {version.version}"):
        row = await conn.fetchrow(
            "INSERT INTO model_versions (model_id, version, source_uri, checkpoint_hash, loader,"
            " inference_config, signature, lineage, tags, description, created_by, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, COALESCE($12, now()))"
            " RETURNING *, '{}'::text[] AS aliases",
            version.model_id,
            version.version,
            version.source_uri,
            version.checkpoint_hash,
            version.loader,
            to_json(version.inference_config),
            to_json(version.signature),
            to_json(version.lineage),
            version.tags,
            version.description,
            version.created_by,
            version.created_at,  # kept on import, set by the database on registration
        )
    return _version(_returned(row, f"version {version.model_id} {version.version}"))


async def get_version(conn: Conn, *, model_id: str, version: str) -> ModelVersion | None:
    row = await conn.fetchrow(
        f"SELECT {_VERSION_COLUMNS} FROM model_versions v WHERE v.model_id = $1 AND v.version = $2",
        model_id,
        version,
    )
    return _version(row) if row else None


async def get_versions(conn: Conn, *, model_id: str, versions: Sequence[str]) -> dict[str, ModelVersion]:
    rows = await conn.fetch(
        f"SELECT {_VERSION_COLUMNS} FROM model_versions v WHERE v.model_id = $1 AND v.version = ANY($2)",
        model_id,
        list(versions),
    )
    return {r["version"]: _version(r) for r in rows}


async def list_versions(
    conn: Conn,
    *,
    model_id: str,
    model_type: str,
    tags: dict[str, str | None],
    status: str,
    alias: str,
    query: str,
    before_id: int,
    limit: int,
) -> list[tuple[int, ModelVersion]]:
    """Newest first; keyset paging on the version row id."""
    clauses = ["($1 = '' OR v.model_id = $1)", "($2 = 0 OR v.id < $2)", "($3 = '' OR v.status = $3)"]
    args: list[Any] = [model_id, before_id, status]
    if model_type:
        args.append(model_type)
        clauses.append(f"v.model_id IN (SELECT model_id FROM models WHERE model_type = ${len(args)})")
    if alias:
        args.append(alias)
        clauses.append(
            f"EXISTS (SELECT 1 FROM aliases a WHERE a.model_id = v.model_id"
            f" AND a.version = v.version AND a.alias = ${len(args)})"
        )
    if query:  # a case-insensitive substring of version, description or loader (no wildcards)
        args.append(query)
        clauses.append(f"strpos(v.search_text, lower(${len(args)})) > 0")
    for key, value in tags.items():
        if value is None:
            args.append(key)
            clauses.append(f"v.tags ? ${len(args)}")
        else:
            args.append({key: value})
            clauses.append(f"v.tags @> ${len(args)}")
    args.append(limit)
    sql = (
        f"SELECT {_VERSION_COLUMNS} FROM model_versions v WHERE {' AND '.join(clauses)}"
        f" ORDER BY v.id DESC LIMIT ${len(args)}"
    )
    return [(r["id"], _version(r)) for r in await conn.fetch(sql, *args)]


async def version_ids_newest_first(conn: Conn, *, model_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT version FROM model_versions WHERE model_id = $1 ORDER BY id DESC", model_id
    )
    return [r["version"] for r in rows]


async def update_version(
    conn: Conn, *, model_id: str, version: str, tags: dict[str, str], description: str, status: str
) -> ModelVersion:
    row = await conn.fetchrow(
        "UPDATE model_versions v SET tags = $3, description = $4, status = $5"
        f" WHERE v.model_id = $1 AND v.version = $2 RETURNING {_VERSION_COLUMNS}",
        model_id,
        version,
        tags,
        description,
        status,
    )
    return _version(_returned(row, f"version {model_id} {version}"))


async def delete_versions(conn: Conn, *, model_id: str, versions: Sequence[str]) -> list[ModelVersion]:
    """The versions removed, as they were."""
    rows = await conn.fetch(
        "DELETE FROM model_versions v WHERE v.model_id = $1 AND v.version = ANY($2)"
        f" RETURNING {_VERSION_COLUMNS}",
        model_id,
        list(versions),
    )
    return [_version(r) for r in rows]


async def versions_in_use(conn: Conn, *, model_id: str) -> dict[str, list[str]]:
    """version -> why it must stay (routed by a deployment, pointed at by an alias)."""
    uses: dict[str, list[str]] = {}
    for row in await conn.fetch(
        "SELECT d.name, r->>'version' AS version FROM deployments d,"
        " jsonb_array_elements(d.routes) r WHERE d.model_id = $1",
        model_id,
    ):
        uses.setdefault(row["version"], []).append(f"routed by deployment {row['name']}")
    for row in await conn.fetch("SELECT alias, version FROM aliases WHERE model_id = $1", model_id):
        uses.setdefault(row["version"], []).append(f"alias {row['alias']}")
    return uses


# ---- aliases ------------------------------------------------------------------------------------


def _alias(row: asyncpg.Record) -> Alias:
    return Alias(row["model_id"], row["alias"], row["version"], row["updated_at"])


async def get_alias(conn: Conn, *, model_id: str, alias: str) -> Alias | None:
    row = await conn.fetchrow("SELECT * FROM aliases WHERE model_id = $1 AND alias = $2", model_id, alias)
    return _alias(row) if row else None


async def upsert_alias(conn: Conn, *, model_id: str, alias: str, version: str) -> Alias:
    row = await conn.fetchrow(
        "INSERT INTO aliases (model_id, alias, version) VALUES ($1, $2, $3)"
        " ON CONFLICT (model_id, alias) DO UPDATE SET version = $3, updated_at = now() RETURNING *",
        model_id,
        alias,
        version,
    )
    return _alias(_returned(row, f"alias {model_id}:{alias}"))


async def delete_alias(conn: Conn, *, model_id: str, alias: str) -> None:
    await conn.execute("DELETE FROM aliases WHERE model_id = $1 AND alias = $2", model_id, alias)


async def list_aliases(conn: Conn, *, model_id: str) -> list[Alias]:
    rows = await conn.fetch(
        "SELECT * FROM aliases WHERE ($1 = '' OR model_id = $1) ORDER BY model_id, alias", model_id
    )
    return [_alias(r) for r in rows]


# ---- deployments, revisions and events ----------------------------------------------------------

_DEPLOYMENT_COLUMNS = "d.*, m.model_type"


def _deployment(row: asyncpg.Record, versions: dict[str, ModelVersion]) -> Deployment:
    """A deployment row (with its model's `model_type`) and its routed versions."""
    routes = [Route(r["version"], int(r["weight"]), int(r.get("mirror_percent", 0))) for r in row["routes"]]
    return Deployment(
        name=row["name"],
        model_id=row["model_id"],
        model_type=row["model_type"],
        routes=routes,
        follow_alias=row["follow_alias"],
        signature=signature_from_json(row["signature"]),
        revision=row["revision"],
        updated_at=row["updated_at"],
        description=row["description"],
        versions=[versions[r.version] for r in routes if r.version in versions],
    )


async def _with_versions(conn: Conn, rows: Sequence[asyncpg.Record]) -> list[Deployment]:
    """Deployments from their rows, the versions of all of them read in one query (not one each)."""
    if len(rows) == 1:
        row = rows[0]
        versions = [r["version"] for r in row["routes"]]
        return [_deployment(row, await get_versions(conn, model_id=row["model_id"], versions=versions))]
    model_ids = [row["model_id"] for row in rows for _ in row["routes"]]
    versions = [r["version"] for row in rows for r in row["routes"]]
    if not versions:
        return [_deployment(row, {}) for row in rows]
    found = await conn.fetch(
        f"SELECT {_VERSION_COLUMNS} FROM model_versions v"
        " WHERE (v.model_id, v.version) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        model_ids,
        versions,
    )
    by_model: dict[str, dict[str, ModelVersion]] = {}
    for r in found:
        by_model.setdefault(r["model_id"], {})[r["version"]] = _version(r)
    return [_deployment(row, by_model.get(row["model_id"], {})) for row in rows]


async def get_deployment(conn: Conn, *, name: str, for_update: bool = False) -> Deployment | None:
    lock = " FOR UPDATE OF d" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments d JOIN models m USING (model_id)"
        f" WHERE d.name = $1{lock}",
        name,
    )
    return (await _with_versions(conn, [row]))[0] if row else None


async def list_deployments(conn: Conn, *, model_id: str = "", follow_alias: str = "") -> list[Deployment]:
    rows = await conn.fetch(
        f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments d JOIN models m USING (model_id)"
        " WHERE ($1 = '' OR d.model_id = $1) AND ($2 = '' OR d.follow_alias = $2) ORDER BY d.name",
        model_id,
        follow_alias,
    )
    return await _with_versions(conn, rows)


async def lock_deployments(
    conn: Conn, *, model_id: str, follow_alias: str, names: Sequence[str]
) -> list[Deployment]:
    """Lock the deployments of `model_id` that follow `follow_alias`, and those named, in name order
    (the rows are sorted before they are locked), and return them as they are once locked."""
    rows = await conn.fetch(
        f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments d JOIN models m USING (model_id)"
        " WHERE (d.model_id = $1 AND d.follow_alias = $2) OR d.name = ANY($3)"
        " ORDER BY d.name FOR UPDATE OF d",
        model_id,
        follow_alias,
        list(names),
    )
    return await _with_versions(conn, rows)


def _deployment_args(deployment: Deployment) -> tuple[Any, ...]:
    return (
        deployment.name,
        deployment.model_id,
        to_json(deployment.routes),
        deployment.follow_alias,
        to_json(deployment.signature),
        deployment.description,
        deployment.revision,
    )


# RETURNING gives back what the database set (updated_at) with the model's type.
_RETURNING_DEPLOYMENT = "RETURNING *, (SELECT model_type FROM models WHERE model_id = $2) AS model_type"


async def insert_deployment(
    conn: Conn, *, deployment: Deployment, versions: dict[str, ModelVersion]
) -> Deployment:
    """Store a new deployment; `versions` are its routed versions (read by the caller's checks)."""
    with _translate(f"deployment {deployment.name!r}"):
        row = await conn.fetchrow(
            "INSERT INTO deployments (name, model_id, routes, follow_alias, signature, description, revision)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7) {_RETURNING_DEPLOYMENT}",
            *_deployment_args(deployment),
        )
    return _deployment(_returned(row, f"deployment {deployment.name!r}"), versions)


async def update_deployment(
    conn: Conn, *, deployment: Deployment, versions: dict[str, ModelVersion]
) -> Deployment:
    """Store a deployment's new routes and settings; `versions` are its routed versions."""
    row = await conn.fetchrow(
        "UPDATE deployments SET model_id = $2, routes = $3, follow_alias = $4, signature = $5,"
        f" description = $6, revision = $7, updated_at = now() WHERE name = $1 {_RETURNING_DEPLOYMENT}",
        *_deployment_args(deployment),
    )
    return _deployment(_returned(row, f"deployment {deployment.name!r}"), versions)


async def delete_deployment(conn: Conn, *, name: str) -> None:
    await conn.execute("DELETE FROM deployments WHERE name = $1", name)


async def next_revision(conn: Conn) -> int:
    """Take the next revision; the row lock serializes deployment changes until commit."""
    revision: int = await conn.fetchval(
        "UPDATE registry_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision"
    )
    return revision


async def current_revision(conn: Conn) -> int:
    revision: int = await conn.fetchval("SELECT revision FROM registry_revision WHERE id = 1")
    return revision


async def insert_event(conn: Conn, *, event: DeploymentEvent, channel: str) -> None:
    await conn.execute(
        "INSERT INTO deployment_events (revision, deployment, kind, action, state)"
        " VALUES ($1, $2, $3, $4, $5)",
        event.revision,
        event.deployment.name,
        event.kind,
        event.action,
        to_json(event.deployment),
    )
    # Delivered to every listening replica when this transaction commits, never before.
    await conn.execute("SELECT pg_notify($1, $2)", channel, str(event.revision))


def _event(row: asyncpg.Record) -> DeploymentEvent:
    return DeploymentEvent(
        revision=row["revision"],
        kind=row["kind"],
        action=row["action"],
        deployment=deployment_from_json(row["state"]),
    )


async def events_after(conn: Conn, *, revision: int, limit: int) -> list[DeploymentEvent]:
    rows = await conn.fetch(
        "SELECT * FROM deployment_events WHERE revision > $1 ORDER BY revision LIMIT $2", revision, limit
    )
    return [_event(r) for r in rows]


async def deployment_state_before(conn: Conn, *, name: str, revision: int) -> Deployment | None:
    row = await conn.fetchrow(
        "SELECT * FROM deployment_events WHERE deployment = $1 AND revision < $2 AND kind = 'upserted'"
        " ORDER BY revision DESC LIMIT 1",
        name,
        revision,
    )
    return _event(row).deployment if row else None


async def deployment_state_at(conn: Conn, *, name: str, revision: int) -> Deployment | None:
    row = await conn.fetchrow(
        "SELECT * FROM deployment_events WHERE deployment = $1 AND revision = $2 AND kind = 'upserted'",
        name,
        revision,
    )
    return _event(row).deployment if row else None


# ---- audit log ----------------------------------------------------------------------------------


async def insert_audit(
    conn: Conn,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    before: Any,
    after: Any,
    reason: str,
    revision: int = 0,
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, entity_type, entity_id, before, after, reason, revision)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        actor,
        action,
        entity_type,
        entity_id,
        to_json(before),
        to_json(after),
        reason,
        revision,
    )


async def list_audit(
    conn: Conn, *, entity_type: str, entity_id: str, action: str, before_id: int, limit: int
) -> list[AuditEvent]:
    rows = await conn.fetch(
        "SELECT * FROM audit_log WHERE ($1 = '' OR entity_type = $1) AND ($2 = '' OR entity_id = $2)"
        " AND ($3 = '' OR action = $3) AND ($4 = 0 OR id < $4) ORDER BY id DESC LIMIT $5",
        entity_type,
        entity_id,
        action,
        before_id,
        limit,
    )
    return [
        AuditEvent(
            id=r["id"],
            at=r["at"],
            actor=r["actor"],
            action=r["action"],
            entity_type=r["entity_type"],
            entity_id=r["entity_id"],
            before=r["before"],
            after=r["after"],
            reason=r["reason"],
            revision=r["revision"],
        )
        for r in rows
    ]


# ---- workers ------------------------------------------------------------------------------------


# One statement per heartbeat (the registry's hot path): the status, the newest counters stamped with
# the database's clock (`r`, the same for every replica), and, when the newest history entry is older
# than `sample_every`, the history trimmed to `keep` with this snapshot appended. Between appends the
# history's value passes through unchanged, so PostgreSQL keeps its stored (TOASTed) copy.
_UPSERT_WORKER = """
INSERT INTO workers AS w (worker_id, address, state, last_error, deployments, fallback, last_seen,
                          live_latest, live_history, live_sampled_at)
SELECT $1, $2, $3, $4, $5, $6, now(), s.sample::json,
       CASE WHEN s.sample IS NULL THEN '[]'::jsonb ELSE jsonb_build_array(s.sample) END,
       CASE WHEN s.sample IS NULL THEN NULL ELSE now() END
FROM (SELECT $7::jsonb || jsonb_build_object('r', extract(epoch FROM now())) AS sample) AS s
ON CONFLICT (worker_id) DO UPDATE SET
    address = $2, state = $3, last_error = $4, deployments = $5, fallback = $6, last_seen = now(),
    live_latest = EXCLUDED.live_latest,
    live_history = CASE
        WHEN EXCLUDED.live_latest IS NULL OR w.live_sampled_at > now() - $8::interval THEN w.live_history
        ELSE (SELECT COALESCE(jsonb_agg(h.e ORDER BY h.i), '[]'::jsonb)
              FROM jsonb_array_elements(w.live_history) WITH ORDINALITY AS h(e, i)
              WHERE (h.e->>'r')::float8 >= extract(epoch FROM now() - $9::interval))
             || jsonb_build_array(EXCLUDED.live_latest::jsonb)
    END,
    live_sampled_at = CASE
        WHEN EXCLUDED.live_latest IS NULL OR w.live_sampled_at > now() - $8::interval THEN w.live_sampled_at
        ELSE now()
    END
"""


async def upsert_worker(
    conn: Conn, *, status: WorkerStatus, sample_every: dt.timedelta, keep: dt.timedelta
) -> None:
    """Store a heartbeat; its counters join the worker's live history (see `_UPSERT_WORKER`)."""
    await conn.execute(
        _UPSERT_WORKER,
        status.worker_id,
        status.address,
        status.state,
        status.last_error,
        to_json(status.deployments),
        status.fallback,
        _counters_json(status.counters),
        sample_every,
        keep,
    )


def _counters_json(counters: LiveCounters | None) -> dict[str, Any] | None:
    """Compact: one array per series, as a history holds dozens of snapshots per worker."""
    if counters is None:
        return None
    return {
        "s": counters.started_at_ns,
        "u": counters.uptime_s,
        "v": [_series_json(c) for c in counters.series],
    }


def _series_json(c: SeriesCounters) -> list[Any]:
    """8 fields, then the drift summaries when there are any or a shadow follows, then the shadow's
    [requests, agreement sum, agreement items] when it mirrored any."""
    row: list[Any] = [
        c.deployment,
        c.version,
        c.since_s,
        c.requests,
        c.items,
        c.latency_sum_s,
        c.buckets,
        c.errors,
    ]
    if c.drift or c.shadow_requests:
        row.append({signal: [ref, live] for signal, (ref, live) in c.drift.items()})
    if c.shadow_requests:
        row.append([c.shadow_requests, c.agreement_sum, c.agreement_items])
    return row


def _series_from_json(row: list[Any]) -> SeriesCounters:
    d, v, since, requests, items, latency_sum, buckets, errors, *rest = row
    drift = rest[0] if rest else {}
    shadow = rest[1] if len(rest) > 1 else [0, 0.0, 0]
    return SeriesCounters(
        deployment=d,
        version=v,
        since_s=float(since),
        requests=int(requests),
        items=int(items),
        latency_sum_s=float(latency_sum),
        buckets=[int(b) for b in buckets],
        errors={str(k): int(n) for k, n in errors.items()},
        drift={
            str(signal): ([int(n) for n in ref], [int(n) for n in live])
            for signal, (ref, live) in drift.items()
        },
        shadow_requests=int(shadow[0]),
        agreement_sum=float(shadow[1]),
        agreement_items=int(shadow[2]),
    )


def _counters_from_json(data: dict[str, Any]) -> LiveCounters:
    # Snapshots stored before drift summaries have 8 fields per series, later ones 9 or 10.
    return LiveCounters(
        started_at_ns=int(data["s"]),
        uptime_s=float(data["u"]),
        series=[_series_from_json(r) for r in data["v"]],
    )


def _received_at(data: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(data["r"]), dt.UTC)


async def live_windows(
    conn: Conn, *, live_within: dt.timedelta, window_s: float, deployment: str = "", covering: bool = False
) -> list[LiveWindow]:
    """For each live worker with counters (of those serving `deployment`, if given): its newest
    snapshot and a baseline of the same counter epoch: the oldest other snapshot received in the
    last `window_s`, else (a window shorter than the history's spacing) the newest one before it.
    `covering` prefers the newest snapshot before the window and else the oldest inside it, so the
    window covers at least `window_s` (by up to the history's spacing more) instead of at most.
    The history is searched in SQL, so only two snapshots per worker leave the database."""
    rows = await conn.fetch(
        "SELECT w.worker_id, w.live_latest AS newest, b.baseline, b.samples + 1 AS samples, now() AS now"
        " FROM workers AS w"
        # The newest snapshot's epoch and uptime, parsed once per worker (OFFSET 0 keeps PostgreSQL
        # from inlining them into the filter below, which parsed the json once per element: 2x slower).
        " CROSS JOIN LATERAL ("
        "   SELECT w.live_latest->>'s' AS s, (w.live_latest->>'u')::float8 AS u OFFSET 0"
        " ) AS n"
        " CROSS JOIN LATERAL ("
        "   SELECT (array_agg(h.e ORDER BY h.inside = $4, CASE WHEN h.inside THEN h.i ELSE -h.i END))[1]"
        "            AS baseline,"
        "          count(*) FILTER (WHERE h.inside) AS samples"
        "   FROM ("
        "     SELECT e, i, (e->>'r')::float8 >= extract(epoch FROM now()) - $2 AS inside"
        "     FROM jsonb_array_elements(w.live_history) WITH ORDINALITY AS x(e, i)"
        "     WHERE e->>'s' = n.s AND (e->>'u')::float8 <> n.u"
        "   ) AS h"
        " ) AS b"
        " WHERE w.live_latest IS NOT NULL AND w.last_seen > now() - $1::interval"
        "   AND ($3 = '' OR w.deployments @> jsonb_build_array(jsonb_build_object('deployment', $3::text)))"
        " ORDER BY w.worker_id",
        live_within,
        window_s,
        deployment,
        covering,
    )
    return [
        LiveWindow(
            worker_id=r["worker_id"],
            newest=_counters_from_json(r["newest"]),
            newest_at=_received_at(r["newest"]),
            baseline=_counters_from_json(r["baseline"]) if r["baseline"] is not None else None,
            baseline_at=_received_at(r["baseline"]) if r["baseline"] is not None else None,
            samples=int(r["samples"]),
            now=r["now"],
        )
        for r in rows
    ]


async def list_workers(conn: Conn, *, live_within: dt.timedelta, deployment: str = "") -> list[WorkerStatus]:
    """Every worker, or those whose last report names `deployment` (without the live counters: a
    history is dozens of snapshots, and rollouts read this list often)."""
    rows = await conn.fetch(
        "SELECT worker_id, address, state, last_error, deployments, fallback, last_seen,"
        " last_seen > now() - $1::interval AS live FROM workers"
        " WHERE ($2 = '' OR deployments @> jsonb_build_array(jsonb_build_object('deployment', $2::text)))"
        " ORDER BY worker_id",
        live_within,
        deployment,
    )
    return [
        WorkerStatus(
            worker_id=r["worker_id"],
            address=r["address"],
            state=r["state"],
            last_error=r["last_error"],
            deployments=[
                DeploymentStatus(
                    deployment=d["deployment"],
                    revision=int(d["revision"]),
                    versions=[_loaded_version(v) for v in d["versions"]],
                )
                for d in r["deployments"]
            ],
            last_seen=r["last_seen"],
            live=r["live"],
            fallback=r["fallback"],
        )
        for r in rows
    ]


def _loaded_version(data: dict[str, Any]) -> LoadedVersion:
    when = data.get("next_attempt_at")
    return LoadedVersion(**{**data, "next_attempt_at": dt.datetime.fromisoformat(when) if when else None})


# ---- performance store --------------------------------------------------------------------------


async def save_run(conn: Conn, *, run: BenchmarkRun) -> BenchmarkRun:
    """Insert or replace a run and all its metrics (the caller's transaction makes it all-or-nothing);
    returns the stored run (a replaced run keeps its first `created_by`)."""
    row = await conn.fetchrow(
        "INSERT INTO benchmark_runs (run_id, suite, model_id, version, deployment, status, error,"
        " conditions, hardware, started_at, finished_at, created_by)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        " ON CONFLICT (run_id) DO UPDATE SET status = $6, error = $7, conditions = $8, hardware = $9,"
        " started_at = $10, finished_at = $11, recorded_at = now() RETURNING *",
        run.run_id,
        run.suite,
        run.model_id,
        run.version,
        run.deployment,
        run.status,
        run.error,
        run.conditions,
        run.hardware,
        run.started_at,
        run.finished_at,
        run.created_by,
    )
    await conn.execute("DELETE FROM benchmark_metrics WHERE run_id = $1", run.run_id)
    await conn.executemany(
        "INSERT INTO benchmark_metrics (run_id, name, value, unit, samples) VALUES ($1, $2, $3, $4, $5)",
        [(run.run_id, m.name, m.value, m.unit, m.samples) for m in run.metrics],
    )
    # Metrics as every read lists them: ordered by name in the database's collation.
    metrics = (await _metrics(conn, [run.run_id], with_samples=True)).get(run.run_id, [])
    return _run(_returned(row, f"benchmark run {run.run_id!r}"), metrics)


def _run(row: asyncpg.Record, metrics: list[Metric]) -> BenchmarkRun:
    return BenchmarkRun(
        run_id=row["run_id"],
        suite=row["suite"],
        model_id=row["model_id"],
        version=row["version"],
        deployment=row["deployment"],
        status=row["status"],
        error=row["error"],
        conditions=row["conditions"],
        hardware=row["hardware"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        metrics=metrics,
        created_by=row["created_by"],
    )


async def _metrics(conn: Conn, run_ids: list[str], with_samples: bool) -> dict[str, list[Metric]]:
    samples = "samples" if with_samples else "'{}'::float8[] AS samples"
    rows = await conn.fetch(
        f"SELECT run_id, name, value, unit, {samples} FROM benchmark_metrics"
        " WHERE run_id = ANY($1) ORDER BY run_id, name",
        run_ids,
    )
    found: dict[str, list[Metric]] = {}
    for r in rows:
        found.setdefault(r["run_id"], []).append(Metric(r["name"], r["value"], r["unit"], list(r["samples"])))
    return found


async def get_run(conn: Conn, *, run_id: str, with_samples: bool) -> BenchmarkRun | None:
    row = await conn.fetchrow("SELECT * FROM benchmark_runs WHERE run_id = $1", run_id)
    if not row:
        return None
    return _run(row, (await _metrics(conn, [run_id], with_samples)).get(run_id, []))


async def list_runs(
    conn: Conn, *, model_id: str, version: str, suite: str, status: str, before_seq: int, limit: int
) -> list[tuple[int, BenchmarkRun]]:
    rows = await conn.fetch(
        "SELECT * FROM benchmark_runs WHERE ($1 = '' OR model_id = $1) AND ($2 = '' OR version = $2)"
        " AND ($3 = '' OR suite = $3) AND ($4 = '' OR status = $4) AND ($5 = 0 OR seq < $5)"
        " ORDER BY seq DESC LIMIT $6",
        model_id,
        version,
        suite,
        status,
        before_seq,
        limit,
    )
    metrics = await _metrics(conn, [r["run_id"] for r in rows], with_samples=False)
    return [(r["seq"], _run(r, metrics.get(r["run_id"], []))) for r in rows]


async def version_metrics(conn: Conn, *, model_id: str, version: str, suite: str) -> list[VersionMetric]:
    """Newest value of each metric over the version's successful runs."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (m.name) m.name, m.value, m.unit, r.run_id, r.suite, r.recorded_at"
        " FROM benchmark_metrics m JOIN benchmark_runs r USING (run_id)"
        " WHERE r.model_id = $1 AND r.version = $2 AND ($3 = '' OR r.suite = $3)"
        " AND r.status = 'succeeded' ORDER BY m.name, r.seq DESC",
        model_id,
        version,
        suite,
    )
    return [
        VersionMetric(r["name"], r["value"], r["unit"], r["run_id"], r["suite"], r["recorded_at"])
        for r in rows
    ]


# ---- rollout plans ------------------------------------------------------------------------------

_ACTIVE = (PlanState.RUNNING.value, PlanState.PAUSED.value)


def _judgement_json(judgement: Judgement | None) -> dict[str, Any]:
    if judgement is None:
        return {}
    data = to_json(judgement)
    # JSON has no NaN: a value not judged yet is stored as null.
    for reading in data["readings"]:
        if reading["value"] != reading["value"]:
            reading["value"] = None
    return data


def _judgement(data: dict[str, Any]) -> Judgement | None:
    if not data:
        return None
    readings = [
        GuardReading(**{**r, "value": float("nan") if r["value"] is None else float(r["value"])})
        for r in data["readings"]
    ]
    return Judgement(
        readings=readings,
        candidate_requests=int(data["candidate_requests"]),
        baseline_requests=int(data["baseline_requests"]),
        window_s=float(data["window_s"]),
        at=dt.datetime.fromisoformat(data["at"]),
        driver=str(data["driver"]),
    )


def _plan(row: asyncpg.Record) -> RolloutPlan:
    return RolloutPlan(
        plan_id=row["plan_id"],
        deployment=row["deployment"],
        model_id=row["model_id"],
        baseline=row["baseline"],
        candidate=row["candidate"],
        steps=list(row["steps"]),
        step_index=row["step_index"],
        step_duration_s=row["step_duration_s"],
        min_requests=row["min_requests"],
        guards=list(row["guards"]),
        state=PlanState(row["state"]),
        step_started_at=row["step_started_at"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        outcome=row["outcome"],
        judgement=_judgement(row["judgement"]),
        warmup_s=row["warmup_s"],
        shadow_percent=row["shadow_percent"],
    )


async def insert_plan(conn: Conn, *, plan: RolloutPlan) -> RolloutPlan:
    """A new running plan; a deployment with an active one already is refused (unique index)."""
    try:
        row = await conn.fetchrow(
            "INSERT INTO rollout_plans (deployment, model_id, baseline, candidate, steps, step_duration_s,"
            " min_requests, guards, state, created_by, warmup_s, shadow_percent)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *",
            plan.deployment,
            plan.model_id,
            plan.baseline,
            plan.candidate,
            plan.steps,
            plan.step_duration_s,
            plan.min_requests,
            plan.guards,
            plan.state.value,
            plan.created_by,
            plan.warmup_s,
            plan.shadow_percent,
        )
    except asyncpg.UniqueViolationError as exc:
        raise AlreadyExists(
            f"deployment {plan.deployment} already has an active rollout plan; pause, resume or abort it "
            f"(`modelyard deployments rollout-status {plan.deployment}`)"
        ) from exc
    return _plan(_returned(row, f"rollout plan of {plan.deployment}"))


async def get_plan(
    conn: Conn, *, deployment: str, active_only: bool = False, for_update: bool = False
) -> RolloutPlan | None:
    """The deployment's active plan, else (unless `active_only`) its newest one."""
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        "SELECT * FROM rollout_plans WHERE deployment = $1 AND ($2 OR state = ANY($3::text[]))"
        f" ORDER BY state = ANY($3::text[]) DESC, plan_id DESC LIMIT 1{lock}",
        deployment,
        not active_only,
        list(_ACTIVE),
    )
    return _plan(row) if row else None


async def running_plans(conn: Conn) -> list[RolloutPlan]:
    rows = await conn.fetch("SELECT * FROM rollout_plans WHERE state = 'running' ORDER BY plan_id")
    return [_plan(r) for r in rows]


async def lock_plan(conn: Conn, *, plan_id: int) -> RolloutPlan | None:
    row = await conn.fetchrow("SELECT * FROM rollout_plans WHERE plan_id = $1 FOR UPDATE", plan_id)
    return _plan(row) if row else None


async def update_plan(
    conn: Conn,
    *,
    plan_id: int,
    state: PlanState,
    step_index: int,
    new_step: bool,
    outcome: str,
    judgement: Judgement | None,
) -> RolloutPlan:
    """Store where the plan stands; `new_step` restarts the step's clock; an ended state is stamped."""
    row = await conn.fetchrow(
        "UPDATE rollout_plans SET state = $2, step_index = $3,"
        " step_started_at = CASE WHEN $4 THEN now() ELSE step_started_at END,"
        " outcome = $5, judgement = CASE WHEN $6::jsonb = '{}'::jsonb THEN judgement ELSE $6::jsonb END,"
        " finished_at = CASE WHEN $2 = ANY($7::text[]) THEN NULL ELSE now() END"
        " WHERE plan_id = $1 RETURNING *",
        plan_id,
        state.value,
        step_index,
        new_step,
        outcome,
        _judgement_json(judgement),
        list(_ACTIVE),
    )
    return _plan(_returned(row, f"rollout plan {plan_id}"))


async def record_judgement(conn: Conn, *, plan_id: int, judgement: Judgement) -> None:
    """A judgement that changed nothing (the plan waits): stored only while the plan still runs."""
    await conn.execute(
        "UPDATE rollout_plans SET judgement = $2 WHERE plan_id = $1 AND state = 'running'",
        plan_id,
        _judgement_json(judgement),
    )


# ---- export -------------------------------------------------------------------------------------


async def all_models(conn: Conn) -> list[Model]:
    return [_model(r) for r in await conn.fetch("SELECT * FROM models ORDER BY model_id")]


async def all_versions(conn: Conn) -> list[ModelVersion]:
    rows = await conn.fetch(f"SELECT {_VERSION_COLUMNS} FROM model_versions v ORDER BY v.id")
    return [dataclasses.replace(_version(r), aliases=[]) for r in rows]


async def all_runs(conn: Conn) -> list[BenchmarkRun]:
    rows = await conn.fetch("SELECT * FROM benchmark_runs ORDER BY seq")
    metrics = await _metrics(conn, [r["run_id"] for r in rows], with_samples=True)
    return [_run(r, metrics.get(r["run_id"], [])) for r in rows]
