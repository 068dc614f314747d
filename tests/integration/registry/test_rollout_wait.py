"""GetRolloutStatus with wait_timeout_ms: woken by the heartbeats and deployment changes that reach
the replica, with a slow safety poll for heartbeats sent to another one, instead of reading the
database every 100 ms while it waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from registry_support import Stub, deploy, register

from modelyard.api import registry_pb2 as pb
from modelyard.client.channel import open_channel
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings


@contextlib.asynccontextmanager
async def replica(database_url: str, *, rollout_poll_s: float) -> AsyncIterator[tuple[RegistryServer, Stub]]:
    server = RegistryServer(
        RegistrySettings(
            database_url=database_url,
            host="127.0.0.1",
            port=0,
            metrics_port=None,
            poll_interval_s=0.5,
            grace_period_s=1.0,
            rollout_poll_interval_s=rollout_poll_s,
        )
    )
    await server.start()
    try:
        async with open_channel(server.address) as channel:
            yield server, Stub(channel)
    finally:
        await server.stop()


def heartbeat(
    revision: int, state: pb.VersionState.ValueType = pb.SERVING, worker_id: str = "w1"
) -> pb.ReportStatusRequest:
    return pb.ReportStatusRequest(
        status=pb.WorkerStatus(
            worker_id=worker_id,
            address="127.0.0.1:1",
            state="serving",
            deployments=[
                pb.DeploymentStatus(
                    deployment="text",
                    revision=revision,
                    versions=[pb.LoadedVersion(version="1.0.0", state=state)],
                )
            ],
        )
    )


async def _deployed(stub: Stub) -> pb.Deployment:
    await register(stub, "1.0.0")
    return await deploy(stub, "text", {"1.0.0": 100})


async def _wait(stub: Stub, timeout_s: float) -> tuple[pb.RolloutStatus, float]:
    """The status a wait returns, and when it returned (time.monotonic)."""
    status = await stub.GetRolloutStatus(
        pb.GetRolloutStatusRequest(deployment="text", wait_timeout_ms=int(timeout_s * 1000)),
        timeout=timeout_s + 10,
    )
    return status, time.monotonic()


async def test_wait_returns_promptly_after_the_converging_heartbeat(database_url: str) -> None:
    poll_s = 5.0  # the safety poll cannot be what ends this wait
    async with replica(database_url, rollout_poll_s=poll_s) as (_, stub):
        d = await _deployed(stub)
        await stub.ReportStatus(heartbeat(d.revision, pb.LOADING))
        waiting = asyncio.create_task(_wait(stub, timeout_s=20))
        await asyncio.sleep(0.3)
        # A heartbeat that does not converge wakes the wait, which goes on waiting.
        await stub.ReportStatus(heartbeat(d.revision, pb.LOADING))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await stub.ReportStatus(heartbeat(d.revision, pb.SERVING))
        sent = time.monotonic()
        status, returned = await asyncio.wait_for(waiting, 15)
    latency = returned - sent
    print(f"rollout wait returned {latency * 1000:.1f} ms after the converging heartbeat (same replica)")
    assert status.converged and [w.worker_id for w in status.workers] == ["w1"]
    assert latency < poll_s / 10, f"{latency:.3f} s: woken by the safety poll, not by the heartbeat"


async def test_worker_that_leaves_the_deployment_wakes_the_wait(database_url: str) -> None:
    """Its next report no longer names the deployment, so it no longer counts, and the wait ends."""
    poll_s = 5.0
    async with replica(database_url, rollout_poll_s=poll_s) as (_, stub):
        d = await _deployed(stub)
        await stub.ReportStatus(heartbeat(d.revision, pb.SERVING, worker_id="w1"))
        await stub.ReportStatus(heartbeat(d.revision, pb.LOADING, worker_id="w2"))
        waiting = asyncio.create_task(_wait(stub, timeout_s=20))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await stub.ReportStatus(
            pb.ReportStatusRequest(
                status=pb.WorkerStatus(worker_id="w2", address="127.0.0.1:2", state="serving")
            )
        )
        sent = time.monotonic()
        status, returned = await asyncio.wait_for(waiting, 15)
    assert status.converged and [w.worker_id for w in status.workers] == ["w1"]
    assert returned - sent < poll_s / 10, f"{returned - sent:.3f} s: woken by the safety poll"


async def test_wait_converges_on_a_heartbeat_sent_to_another_replica(database_url: str) -> None:
    poll_s = 1.0
    async with (
        replica(database_url, rollout_poll_s=poll_s) as (_, waiter),
        replica(database_url, rollout_poll_s=poll_s) as (_, other),
    ):
        d = await _deployed(waiter)
        await other.ReportStatus(heartbeat(d.revision, pb.LOADING))
        waiting = asyncio.create_task(_wait(waiter, timeout_s=20))
        await asyncio.sleep(0.3)
        await other.ReportStatus(heartbeat(d.revision, pb.SERVING))
        sent = time.monotonic()
        status, returned = await asyncio.wait_for(waiting, 15)
    latency = returned - sent
    print(f"rollout wait returned {latency * 1000:.1f} ms after the converging heartbeat (other replica)")
    assert status.converged
    assert latency < poll_s * 3, f"{latency:.3f} s: the safety poll should have seen it within {poll_s} s"


async def test_deployment_deleted_on_another_replica_ends_the_wait_at_once(database_url: str) -> None:
    poll_s = 5.0
    async with (
        replica(database_url, rollout_poll_s=poll_s) as (_, waiter),
        replica(database_url, rollout_poll_s=poll_s) as (_, other),
    ):
        d = await _deployed(waiter)
        await waiter.ReportStatus(heartbeat(d.revision, pb.LOADING))
        waiting = asyncio.create_task(_wait(waiter, timeout_s=20))
        await asyncio.sleep(0.3)
        await other.DeleteDeployment(pb.DeleteDeploymentRequest(name="text"))
        sent = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(waiting, 15)
        latency = time.monotonic() - sent
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "unknown deployment 'text'" in (
        err.value.details() or ""
    )
    print(f"rollout wait ended {latency * 1000:.1f} ms after the deployment was deleted on another replica")
    assert latency < poll_s / 5, f"{latency:.3f} s: the broadcast (NOTIFY) should have woken the wait"


async def test_waiting_reads_the_database_at_the_safety_poll_not_every_100_ms(database_url: str) -> None:
    """While nothing happens, a wait costs one rollout read per safety poll (it was one per 100 ms)."""
    poll_s = 1.0
    async with replica(database_url, rollout_poll_s=poll_s) as (server, stub):
        d = await _deployed(stub)
        await stub.ReportStatus(heartbeat(d.revision, pb.LOADING))
        worker_reads = await _count_worker_reads(server, database_url)

        idle_s = wait_s = 3.0
        before = len(worker_reads)
        await asyncio.sleep(idle_s)
        idle = len(worker_reads) - before  # the rollout gauge's own reads, about one a second

        before = len(worker_reads)
        status, _ = await _wait(stub, timeout_s=wait_s)
        waiting = len(worker_reads) - before
    assert not status.converged
    extra = waiting - idle
    print(f"worker reads in {wait_s:.0f} s: {waiting} while waiting, {idle} idle")
    assert extra <= wait_s / poll_s + 3, f"{extra} extra reads of the workers table in a {wait_s} s wait"


async def _count_worker_reads(server: RegistryServer, database_url: str) -> list[str]:
    """Give the in-process registry a pool whose connections log every query that reads the
    workers table; the list grows as the registry runs."""
    seen: list[str] = []

    def logged(record: asyncpg.connection.LoggedQuery) -> None:
        if "FROM workers" in record.query:
            seen.append(record.query)

    async def init(conn: asyncpg.Connection) -> None:
        for typename in ("json", "jsonb"):
            await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        conn.add_query_logger(logged)

    assert server.db is not None
    replaced = server.db.pool
    server.db.pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4, init=init)
    await replaced.close()
    return seen
