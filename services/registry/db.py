"""PostgreSQL access: the connection pool, migrations, and the translation of connection failures
into UNAVAILABLE (the embedded default server lives in `embedded.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from importlib import resources
from typing import Literal, TypeAlias

import asyncpg

from modelyard.common.errors import InvalidArgument, Unavailable
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
        if pool is None:  # typed optional by asyncpg; an awaited create_pool always returns one
            raise RuntimeError("asyncpg.create_pool returned no pool")
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
        except asyncpg.DataError as exc:
            raise _unstorable(exc) from exc

    @contextlib.asynccontextmanager
    async def transaction(self, *, isolation: Isolation = "read_committed") -> AsyncIterator[Conn]:
        try:
            async with self.pool.acquire(timeout=5) as conn, conn.transaction(isolation=isolation):
                yield conn
        except CONNECTION_ERRORS as exc:
            raise _unavailable(exc) from exc
        except asyncpg.DataError as exc:
            raise _unstorable(exc) from exc


def _unstorable(exc: asyncpg.DataError) -> InvalidArgument:
    """A value PostgreSQL cannot store (a NUL character in text, a number out of range): the
    caller's input, refused whole; the transaction rolled back."""
    return InvalidArgument(
        f"a value in the request cannot be stored ({exc.__class__.__name__}: {str(exc).splitlines()[0]}); "
        "remove NUL characters and out-of-range numbers; nothing was changed"
    )


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
