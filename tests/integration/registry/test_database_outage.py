"""A database that goes away: UNAVAILABLE with a clear message, the process stays up, and recovers."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc
import pgserver
import pytest
from registry_support import Stub, register
from support import PostgresInstance, make_postgres_dir, spawn_registry

from modelyard.api import registry_pb2 as pb
from modelyard.client.channel import open_channel
from modelyard.registry.db import migrate


async def test_database_outage_and_recovery() -> None:
    root = make_postgres_dir()
    pg = PostgresInstance(root / "data")
    admin = await asyncpg.connect(pg.url())
    await admin.execute("CREATE DATABASE modelyard")
    await admin.close()
    url = pg.url("modelyard")
    await migrate(url)
    registry = spawn_registry(url)
    try:
        async with open_channel(registry.address) as channel:
            stub = Stub(channel)
            await register(stub, "1.0.0")

            # pgserver makes one function per PostgreSQL binary at import, so its types lack them.
            pgserver.pg_ctl(  # type: ignore[attr-defined]
                ["-w", "-m", "fast", "stop"], pgdata=pg.server.pgdata, user=pg.server.system_user
            )
            for call in (
                stub.GetVersion(pb.GetVersionRequest(model_id="minilm", version="1.0.0"), timeout=15),
                register(stub, "1.1.0"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "database is unreachable" in (err.value.details() or "")
                assert "nothing was changed" in (err.value.details() or "")
            assert registry.proc.poll() is None, "the registry must stay up"

            with pg.server._lock:
                pg.server.ensure_postgres_running()
            deadline = time.monotonic() + 30
            while True:
                try:
                    got = await stub.GetVersion(pb.GetVersionRequest(model_id="minilm", version="1.0.0"))
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() < deadline, "registry did not recover"
                    await asyncio.sleep(0.2)
            assert got.version == "1.0.0"
            await register(stub, "1.1.0")
            listed = await stub.ListVersions(pb.ListVersionsRequest(model_id="minilm"))
            assert [v.version for v in listed.versions] == ["1.1.0", "1.0.0"]
    finally:
        registry.kill()
        pg.server.cleanup()
