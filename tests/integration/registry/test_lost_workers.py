"""Rollout status with workers that vanish: one that stops heartbeating is shown lost and keeps the
rollout from converging until the lost window has passed; one that said `stopping` is simply gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator

import pytest_asyncio
from registry_support import Stub, deploy, register

from modelyard.api import registry_pb2 as pb
from modelyard.client.channel import open_channel
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings

TTL_S = 0.6
WINDOW_S = 3.0


@contextlib.asynccontextmanager
async def serving(database_url: str, window_s: float) -> AsyncIterator[RegistryServer]:
    server = RegistryServer(
        RegistrySettings(
            database_url=database_url,
            host="127.0.0.1",
            port=0,
            metrics_port=None,
            poll_interval_s=0.5,
            grace_period_s=1.0,
            heartbeat_ttl_s=TTL_S,
            lost_worker_window_s=window_s,
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def stub(database_url: str) -> AsyncIterator[Stub]:
    async with serving(database_url, WINDOW_S) as server, open_channel(server.address) as channel:
        yield Stub(channel)


def heartbeat(worker_id: str, revision: int, *, state: str = "serving") -> pb.ReportStatusRequest:
    return pb.ReportStatusRequest(
        status=pb.WorkerStatus(
            worker_id=worker_id,
            address=f"127.0.0.1:{len(worker_id)}",
            state=state,
            deployments=[
                pb.DeploymentStatus(
                    deployment="text",
                    revision=revision,
                    versions=[pb.LoadedVersion(version="1.0.0", state=pb.SERVING)],
                )
            ],
        )
    )


async def rollout(stub: Stub) -> pb.RolloutStatus:
    return await stub.GetRolloutStatus(pb.GetRolloutStatusRequest(deployment="text"))


async def test_silent_worker_is_lost_until_the_window_then_dropped(stub: Stub) -> None:
    await register(stub, "1.0.0")
    d = await deploy(stub, "text", {"1.0.0": 100})
    for worker in ("a", "b", "c"):
        await stub.ReportStatus(heartbeat(worker, d.revision))
    status = await rollout(stub)
    assert status.converged and [w.worker_id for w in status.workers] == ["a", "b", "c"]
    assert all(not w.lost and w.last_seen.seconds > 0 for w in status.workers)

    # b shuts down cleanly (its last heartbeat says so); c just goes silent; a keeps reporting.
    await stub.ReportStatus(heartbeat("b", d.revision, state="stopping"))
    silent_since = time.monotonic()
    deadline = silent_since + TTL_S + 0.5
    while time.monotonic() < deadline:
        await stub.ReportStatus(heartbeat("a", d.revision))
        await asyncio.sleep(0.1)

    status = await rollout(stub)
    by_id = {w.worker_id: w for w in status.workers}
    assert set(by_id) == {"a", "c"}, "a worker that said stopping is gone, not lost"
    assert not status.converged
    assert by_id["a"].converged and not by_id["a"].lost
    lost = by_id["c"]
    assert lost.lost and not lost.converged and lost.revision == d.revision
    assert lost.detail.startswith("lost: no heartbeat for ") and lost.detail.endswith(" s")
    assert time.time() - WINDOW_S < lost.last_seen.ToSeconds() <= time.time()

    # Waiting does not report convergence while c is lost.
    waited = await stub.GetRolloutStatus(pb.GetRolloutStatusRequest(deployment="text", wait_timeout_ms=300))
    assert not waited.converged and any(w.lost for w in waited.workers)

    # ListWorkers still answers as before: c only with include_stale. (a beats again first: on a busy
    # machine the calls above may take longer than its 0.6 s TTL.)
    await stub.ReportStatus(heartbeat("a", d.revision))
    live = await stub.ListWorkers(pb.ListWorkersRequest(deployment="text"))
    assert [w.worker_id for w in live.workers] == ["a"]
    every = await stub.ListWorkers(pb.ListWorkersRequest(deployment="text", include_stale=True))
    assert [w.worker_id for w in every.workers] == ["a", "b", "c"]

    # After the window c is dropped and the rollout converges on a alone.
    while time.monotonic() < silent_since + WINDOW_S + 0.3:
        await stub.ReportStatus(heartbeat("a", d.revision))
        await asyncio.sleep(0.2)
    status = await rollout(stub)
    assert status.converged and [w.worker_id for w in status.workers] == ["a"]


async def test_lost_worker_that_comes_back_counts_again(stub: Stub) -> None:
    await register(stub, "1.0.0")
    d = await deploy(stub, "text", {"1.0.0": 100})
    await stub.ReportStatus(heartbeat("a", d.revision))
    await asyncio.sleep(TTL_S + 0.3)
    status = await rollout(stub)
    assert not status.converged and [w.lost for w in status.workers] == [True]
    assert status.workers[0].detail.startswith("lost: ")
    await stub.ReportStatus(heartbeat("a", d.revision))
    status = await rollout(stub)
    assert status.converged and [w.lost for w in status.workers] == [False]


async def modelyard(address: str, *args: str) -> tuple[int, str, str]:
    """The real CLI in its own process (the registry runs on this event loop, so never block it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from modelyard.cli.main import main; main()",
        "--registry",
        address,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_status_shows_the_lost_worker_and_wait_fails(database_url: str) -> None:
    # A long window here: the CLI processes take a while to start on a busy machine.
    async with serving(database_url, 120.0) as server, open_channel(server.address) as channel:
        await _lost_worker_through_the_cli(server.address, Stub(channel))


async def _lost_worker_through_the_cli(address: str, stub: Stub) -> None:
    await register(stub, "1.0.0")
    d = await deploy(stub, "text", {"1.0.0": 100})
    await stub.ReportStatus(heartbeat("gone-1", d.revision))
    await stub.ReportStatus(heartbeat("stale-old", d.revision, state="stopping"))

    async def keep_reporting() -> None:
        while True:
            await stub.ReportStatus(heartbeat("live-1", d.revision))
            await asyncio.sleep(0.1)

    reporter = asyncio.create_task(keep_reporting())
    try:
        await asyncio.sleep(TTL_S + 0.2)
        await _check_cli(address)
    finally:
        reporter.cancel()


async def _check_cli(address: str) -> None:
    code, out, err = await modelyard(address, "deployments", "status", "text")
    assert code == 0, err
    rollout_line = next(line for line in out.splitlines() if line.strip().startswith("rollout"))
    assert "not converged" in rollout_line and "gone-1 lost: no heartbeat for" in rollout_line
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.split()[:1] in (["gone-1"], ["live-1"])
    }
    assert rows["gone-1"][2] == "lost" and rows["live-1"][2] == "serving"
    assert "stale-old" not in out

    code, out, err = await modelyard(address, "--json", "deployments", "status", "text")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["rollout"].get("converged", False) is False
    lost = [w for w in doc["rollout"]["workers"] if w.get("lost")]
    assert [w["worker_id"] for w in lost] == ["gone-1"] and lost[0]["last_seen"]
    assert sorted(w["worker_id"] for w in doc["workers"]) == ["gone-1", "live-1"]

    code, out, err = await modelyard(
        address, "deployments", "status", "text", "--wait", "--wait-timeout", "1"
    )
    assert code == 1
    assert "gone-1 lost: no heartbeat for" in err and "after 1 s" in err
