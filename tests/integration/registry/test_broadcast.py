"""The broadcast across replicas: fast fan-out, exact resume, survival of a SIGKILLed replica."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest
from registry_support import Stub, deploy, next_event, register, routes_pb
from support import spawn_registry

from modelyard.api import registry_pb2 as pb
from modelyard.client.channel import open_channel

SNAPSHOT = pb.WatchDeploymentsResponse.SNAPSHOT
UPSERTED = pb.WatchDeploymentsResponse.UPSERTED


def _routes(d: pb.Deployment) -> dict[str, int]:
    return {r.version: r.weight for r in d.routes}


def _flip(i: int) -> dict[str, int]:
    return {"1.0.0": 100 - 10 * (i % 10), "1.1.0": 10 * (i % 10)}


async def test_change_through_one_replica_reaches_watcher_on_the_other(database_url: str) -> None:
    a, b = spawn_registry(database_url), spawn_registry(database_url)
    try:
        async with open_channel(a.address) as ca, open_channel(b.address) as cb:
            sa, sb = Stub(ca), Stub(cb)
            await register(sa, "1.0.0")
            await register(sa, "1.1.0")
            await deploy(sa, "text", {"1.0.0": 100})

            stream = sb.WatchDeployments(pb.WatchDeploymentsRequest(deployments=["text"]))
            snapshot = await next_event(stream, 5)
            assert snapshot.kind == SNAPSHOT
            assert [_routes(d) for d in snapshot.deployments] == [{"1.0.0": 100}]
            last = snapshot.revision

            for i in range(1, 6):
                changed = await sa.SetRoutes(pb.SetRoutesRequest(name="text", routes=routes_pb(_flip(i))))
                event = await next_event(stream, 1.0)  # the must-show bound
                assert event.kind == UPSERTED and event.revision == changed.revision
                assert _routes(event.deployments[0]) == _flip(i)
                assert event.revision == last + 1
                last = event.revision
            stream.cancel()

            # Missed changes while disconnected arrive on resume, each once, in order.
            missed = []
            for i in range(6, 11):
                missed.append(
                    (
                        await sa.SetRoutes(pb.SetRoutesRequest(name="text", routes=routes_pb(_flip(i))))
                    ).revision
                )
            resumed = sb.WatchDeployments(
                pb.WatchDeploymentsRequest(deployments=["text"], since_revision=last)
            )
            got = [await next_event(resumed, 5) for _ in missed]
            assert [e.revision for e in got] == missed
            assert all(e.kind == UPSERTED for e in got)
            assert [_routes(e.deployments[0]) for e in got] == [_flip(i) for i in range(6, 11)]
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(resumed.read(), 1.0)
            resumed.cancel()
    finally:
        a.kill()
        b.kill()


async def _resilient_watch(address: str, seen: list[int], stop: asyncio.Event) -> None:
    """A client that reconnects after any failure and resumes from its last revision."""
    last = 0
    async with open_channel(address) as channel:
        stub = Stub(channel)
        while not stop.is_set():
            stream = stub.WatchDeployments(
                pb.WatchDeploymentsRequest(since_revision=last), wait_for_ready=True
            )
            try:
                async for event in stream:
                    if event.kind != SNAPSHOT:
                        seen.append(event.revision)
                    last = event.revision
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
            finally:
                stream.cancel()


async def test_sigkilled_replica_loses_no_committed_change(database_url: str) -> None:
    from support import free_port

    port = free_port()
    a, b = spawn_registry(database_url, port=port), spawn_registry(database_url)
    restarted = None
    stop = asyncio.Event()
    seen: list[list[int]] = [[], [], []]
    try:
        async with open_channel(b.address) as cb:
            writer = Stub(cb)
            await register(writer, "1.0.0")
            await register(writer, "1.1.0")
            created = await deploy(writer, "text", {"1.0.0": 100})
            watchers = [asyncio.create_task(_resilient_watch(a.address, s, stop)) for s in seen]
            await asyncio.sleep(0.5)
            committed = []
            for i in range(1, 31):
                changed = await writer.SetRoutes(pb.SetRoutesRequest(name="text", routes=routes_pb(_flip(i))))
                committed.append(changed.revision)
                if i == 10:
                    a.kill()  # SIGKILL mid-stream
                if i == 15:
                    restarted = spawn_registry(database_url, port=port)
                await asyncio.sleep(0.02)
            final = committed[-1]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not all(s and s[-1] == final for s in seen):
                await asyncio.sleep(0.1)
            stop.set()
            for task in watchers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for s in seen:
            # Everything after the snapshot each watcher started from, exactly once, in order.
            assert s, "watcher saw nothing"
            assert s == list(range(s[0], final + 1)), s
            assert s[0] <= committed[0], "changes made before the kill were missed"
        assert created.revision < committed[0]
    finally:
        a.kill()
        b.kill()
        if restarted is not None:
            restarted.kill()
