"""A worker whose registry does not answer at start serves the deployments it last applied, says so in
its heartbeat and metric, and follows the registry's snapshot once one arrives (the registry's
address is a port nothing listens on; the snapshot is fed in as the registry would stream it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest_asyncio
from prometheus_client import REGISTRY
from support import free_port
from worker_support import artifact_cache, registry_version

from modelyard.api import registry_pb2 as rpb
from modelyard.client import ClientSettings
from modelyard.inference.converters import deployment_from_registry
from modelyard.inference.deployments import DeploymentApplier
from modelyard.inference.domain import DeploymentSpec
from modelyard.inference.registry_sync import RegistrySync
from modelyard.inference.routing import RoutingTable

Kind = rpb.WatchDeploymentsResponse
Factory = Callable[[list[DeploymentSpec], float], RegistrySync]


def _deployment(path: Path, routes: dict[str, int], revision: int) -> rpb.Deployment:
    return rpb.Deployment(
        name="a",
        model_id="tiny",
        routes=[rpb.Route(version=v, weight=w) for v, w in routes.items()],
        versions=[registry_version(path, v, model_id="tiny", dim=32) for v in routes],
        revision=revision,
    )


def _fallback_metric() -> float | None:
    return REGISTRY.get_sample_value("modelyard_worker_fallback")


@pytest_asyncio.fixture(loop_scope="session")
async def make_sync(tmp_path: Path) -> AsyncIterator[Factory]:
    load = ThreadPoolExecutor(1)
    applier = DeploymentApplier(RoutingTable(), artifact_cache(tmp_path), load)
    started: list[RegistrySync] = []

    def make(stored: list[DeploymentSpec], fallback_after_s: float) -> RegistrySync:
        sync = RegistrySync(
            f"127.0.0.1:{free_port()}", applier, deployments=["a"], worker_id="w1", advertise_address="w:1",
            client=ClientSettings(), reconnect_initial_s=0.05, reconnect_max_s=0.1,
            stored=lambda: stored, fallback_after_s=fallback_after_s,
        )  # fmt: skip
        started.append(sync)
        return sync

    yield make
    for sync in started:
        await sync.stop()
    await applier.close()
    load.shutdown()


async def _until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_started_without_the_registry_it_serves_the_stored_deployments_until_the_snapshot(
    make_sync: Factory, tiny_st: Path, tiny_st_other: Path
) -> None:
    stored = deployment_from_registry(_deployment(tiny_st, {"1.0.0": 100}, 4))
    sync = make_sync([stored], 30.0)
    started = time.monotonic()
    await sync.start()
    await _until(lambda: sync.applier.table.find("a") is not None)
    # The first attempt was refused at once: no waiting out the 30 s.
    assert time.monotonic() - started < 20
    assert sync.fallback and not sync.following and _fallback_metric() == 1
    status = sync.worker_status()
    assert status.fallback and status.state == "serving"
    (a,) = status.deployments
    assert a.revision == 4 and [(v.version, v.state, v.attempts) for v in a.versions] == [
        ("1.0.0", rpb.SERVING, 1)
    ]

    # The registry is back; its snapshot (other routes than the file's) replaces the stored ones.
    sync._handle(
        Kind(kind=Kind.SNAPSHOT, revision=9, deployments=[_deployment(tiny_st_other, {"2.0.0": 100}, 9)])
    )
    await _until(lambda: not sync.fallback)
    routes = sync.applier.table.get("a")
    assert routes.revision == 9 and set(routes.weights) == {"2.0.0"}
    assert _fallback_metric() == 0 and not sync.worker_status().fallback


async def test_a_snapshot_that_comes_first_wins_over_the_stored_deployments(
    make_sync: Factory, tiny_st: Path, tiny_st_other: Path
) -> None:
    stored = deployment_from_registry(_deployment(tiny_st, {"1.0.0": 100}, 4))
    sync = make_sync([stored], 0.3)
    await sync.start()
    sync._handle(
        Kind(kind=Kind.SNAPSHOT, revision=9, deployments=[_deployment(tiny_st_other, {"2.0.0": 100}, 9)])
    )
    await asyncio.sleep(1.0)  # the first attempt failed and the fallback delay passed
    await asyncio.wait_for(sync.applier.settled("a"), 60)
    assert not sync.fallback and sync.applier.table.get("a").revision == 9
