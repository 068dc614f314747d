"""Registry events -> applied deployments, and the heartbeat the worker builds from its state
(no network: the events are fed in as the registry would stream them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest_asyncio
from worker_support import artifact_cache, registry_version

from modelyard.api import registry_pb2 as rpb
from modelyard.client import ClientSettings
from modelyard.inference.deployments import DeploymentApplier
from modelyard.inference.registry_sync import RegistrySync
from modelyard.inference.routing import RoutingTable

Kind = rpb.WatchDeploymentsResponse


@pytest_asyncio.fixture(loop_scope="session")
async def sync(tmp_path: Path) -> AsyncIterator[RegistrySync]:
    load = ThreadPoolExecutor(1)
    applier = DeploymentApplier(RoutingTable(), artifact_cache(tmp_path), load)
    yield RegistrySync(
        "127.0.0.1:1", applier, deployments=["a", "b"], worker_id="w1", advertise_address="w:1",
        client=ClientSettings(),
    )  # fmt: skip
    await applier.close()
    load.shutdown()


def _deployment(name: str, path: Path, routes: dict[str, int], revision: int, **kw: object) -> rpb.Deployment:
    versions = [registry_version(path, v, model_id="tiny", dim=32, **kw) for v in routes]  # type: ignore[arg-type]
    return rpb.Deployment(
        name=name,
        model_id="tiny",
        routes=[rpb.Route(version=v, weight=w) for v, w in routes.items()],
        versions=versions,
        revision=revision,
    )


async def _settle(sync: RegistrySync, *names: str) -> None:
    for name in names:
        await asyncio.wait_for(sync.applier.settled(name), 60)


async def test_snapshot_upsert_delete_and_heartbeat(sync: RegistrySync, tiny_st: Path) -> None:
    sync._handle(
        Kind(
            kind=Kind.SNAPSHOT,
            revision=7,
            deployments=[
                _deployment("a", tiny_st, {"1.0.0": 100}, 5),
                _deployment("b", tiny_st, {"1.0.0": 100}, 7),
            ],
        )
    )
    await _settle(sync, "a", "b")
    assert sync.revision == 7 and sync.applier.table.deployments() == ["a", "b"]

    bad = _deployment("a", tiny_st, {"2.0.0": 100}, 8, checkpoint="0" * 64)
    sync._handle(Kind(kind=Kind.UPSERTED, revision=8, deployments=[bad]))
    sync._handle(Kind(kind=Kind.DELETED, revision=9, deployments=[rpb.Deployment(name="b", revision=9)]))
    await _settle(sync, "a", "b")
    assert sync.revision == 9  # resume point for the next reconnect
    assert sync.applier.table.deployments() == ["a"]

    status = sync.worker_status()
    assert (status.worker_id, status.address, status.state, status.live) == ("w1", "w:1", "degraded", True)
    (a,) = status.deployments
    assert a.deployment == "a" and a.revision == 5  # the refused change did not advance it
    versions = {v.version: v for v in a.versions}
    assert versions["1.0.0"].state == rpb.SERVING and versions["1.0.0"].device == "cpu"
    assert versions["2.0.0"].state == rpb.FAILED and "sha256" in versions["2.0.0"].last_error
    assert "a@2.0.0" in status.last_error


async def test_upserts_of_deployments_not_watched_are_ignored(sync: RegistrySync, tiny_st: Path) -> None:
    # `names()` counts a submitted spec at once (before any load), so an upsert that got past the
    # filter shows here even though nothing has been loaded yet.
    sync._handle(
        Kind(kind=Kind.UPSERTED, revision=3, deployments=[_deployment("other", tiny_st, {"1.0.0": 100}, 3)])
    )
    assert sync.applier.names() == set() and sync.revision == 3  # nothing submitted

    # The same event for a watched deployment is submitted and served: the filter lets it through.
    sync._handle(
        Kind(kind=Kind.UPSERTED, revision=4, deployments=[_deployment("a", tiny_st, {"1.0.0": 100}, 4)])
    )
    assert sync.applier.names() == {"a"}
    await _settle(sync, "a")
    assert sync.applier.table.deployments() == ["a"] and sync.revision == 4
    assert "other" not in sync.applier.status
