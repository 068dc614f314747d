"""Routing table: weighted choice, pinned (staged) versions, atomic swaps, in-flight draining."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from modelyard.inference.domain import VersionSpec
from modelyard.inference.errors import ModelNotFound, NotReady
from modelyard.inference.routing import DeploymentRoutes, LoadedRuntime, RoutingTable


def _loaded(version: str) -> LoadedRuntime:
    spec = VersionSpec("m", version, str(Path("/nowhere")), "0" * 64, "sentence-transformers")
    return LoadedRuntime(spec, runtime=None)


def _routes(weights: dict[str, int], revision: int = 1) -> DeploymentRoutes:
    return DeploymentRoutes("d", "m", {v: _loaded(v) for v in weights}, weights, revision)


def test_weighted_choice_follows_the_weights() -> None:
    routes = _routes({"1": 90, "2": 10, "3": 0})
    rng = random.Random(7)
    counts = {"1": 0, "2": 0, "3": 0}
    for _ in range(10_000):
        counts[routes.choose("", rng).version] += 1
    assert counts["3"] == 0  # staged: only reachable when pinned
    assert 0.08 < counts["2"] / 10_000 < 0.12


def test_pinned_requests_reach_staged_versions_and_unknown_ones_are_not_found() -> None:
    routes = _routes({"1": 100, "2": 0})
    assert routes.choose("2").version == "2"
    with pytest.raises(ModelNotFound, match="not loaded"):
        routes.choose("9")


def test_a_deployment_with_only_staged_versions_is_not_ready() -> None:
    with pytest.raises(NotReady):
        _routes({"1": 0}).choose("")


def test_unknown_deployment_is_not_found() -> None:
    with pytest.raises(ModelNotFound, match="not served"):
        RoutingTable().get("nope")


async def test_swap_is_atomic_and_old_version_drains_after_in_flight_requests_finish() -> None:
    table = RoutingTable()
    table.swap(_routes({"1": 100}))
    release = asyncio.Event()

    async def long_request() -> str:
        async with table.acquire("d") as loaded:
            await release.wait()
            return loaded.version

    running = asyncio.create_task(long_request())
    await asyncio.sleep(0)
    previous = table.swap(_routes({"2": 100}, revision=2))
    assert previous is not None
    old = previous.versions["1"]
    assert old.inflight == 1
    async with table.acquire("d") as loaded:
        assert loaded.version == "2"  # new requests see the new table at once
    drained = asyncio.create_task(old.drained())
    await asyncio.sleep(0.01)
    assert not drained.done()
    release.set()
    assert await running == "1"  # the running request finished on the version it started on
    await asyncio.wait_for(drained, 1)
    assert old.inflight == 0
