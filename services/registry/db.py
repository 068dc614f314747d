"""PostgreSQL access: the embedded default server, the connection pool, migrations, and the
translation of connection failures into UNAVAILABLE."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Literal, TypeAlias

import asyncpg

from modelyard.common.errors import Unavailable
from modelyard.common.log import event

log = logging.getLogger("modelyard.registry.db")

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
Isolation = Literal["read_committed", "repeatable_read", "serializable"]

MIGRATION_LOCK_ID = 0x6D6F64656C  # pg_advisory_lock key shared by every replica
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    TimeoutError,
)


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the private PostgreSQL kept in `data_dir`; return a URL to its `modelyard` db.

    Blocking: call from an executor.
    """
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir / "pgdata", cleanup_mode="stop")
    exists = server.psql("SELECT 1 FROM pg_database WHERE datname = 'modelyard';")
    if "(1 row)" not in exists:
        server.psql("CREATE DATABASE modelyard;")
    return str(server.get_uri("modelyard"))


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url, timeout=5)
    await _init_connection(conn)
    return conn


class Database:
    """One pool per process. `transaction()` and `connection()` turn a lost database into Unavailable."""

    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self.url = url
        self.pool = pool

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> Database:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            command_timeout=30,
            timeout=5,
            init=_init_connection,
        )
        assert pool is not None
        return cls(url, pool)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pool.close(), 5)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        try:
            async with self.pool.acquire(timeout=5) as conn:
                yield conn
        except CONNECTION_ERRORS as exc:
            raise _unavailable(exc) from exc

    @contextlib.asynccontextmanager
    async def transaction(self, *, isolation: Isolation = "read_committed") -> AsyncIterator[Conn]:
        try:
            async with self.pool.acquire(timeout=5) as conn, conn.transaction(isolation=isolation):
                yield conn
        except CONNECTION_ERRORS as exc:
            raise _unavailable(exc) from exc


def _unavailable(exc: BaseException) -> Unavailable:
    event(log, "db.unreachable", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}")
    return Unavailable(
        "registry database is unreachable; nothing was changed. Retry when it is back "
        f"(cause: {type(exc).__name__})"
    )


def migration_files() -> list[tuple[int, str, str]]:
    """(number, name, sql) for every migrations/NNNN_name.sql, in order."""
    found = []
    for entry in resources.files("modelyard.registry").joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


async def migrate(url: str) -> list[int]:
    """Apply pending migrations under an advisory lock; return the numbers applied."""
    conn = await asyncpg.connect(url, timeout=10)
    applied: list[int] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version int PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for number, name, sql in migration_files():
                if number in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name
                    )
                applied.append(number)
                event(log, "db.migrated", version=number, name=name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    finally:
        await conn.close()
    return applied
