"""The file of deployments a worker last applied: what goes in (only what was applied), that it reads
back into the same specs the registry sent, and that workers sharing a cache keep each other's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest_asyncio
from worker_support import artifact_cache, registry_version

from modelyard.api import registry_pb2 as rpb
from modelyard.inference.applied_state import AppliedState
from modelyard.inference.converters import deployment_from_registry
from modelyard.inference.deployments import DeploymentApplier
from modelyard.inference.domain import DeploymentSpec
from modelyard.inference.routing import RoutingTable
from modelyard.inference.worker import load_static_deployments


def _registry_deployment(
    name: str, path: Path, routes: dict[str, int], revision: int, **kw: object
) -> rpb.Deployment:
    versions = [registry_version(path, v, model_id="tiny", dim=32, **kw) for v in routes]  # type: ignore[arg-type]
    return rpb.Deployment(
        name=name,
        model_id="tiny",
        routes=[rpb.Route(version=v, weight=w) for v, w in routes.items()],
        versions=versions,
        revision=revision,
    )


def _spec(name: str, path: Path, routes: dict[str, int], revision: int, **kw: object) -> DeploymentSpec:
    return deployment_from_registry(_registry_deployment(name, path, routes, revision, **kw))


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_recorded_deployments_read_back_equal_and_in_the_static_deployments_format(
    tmp_path: Path, tiny_st: Path
) -> None:
    state = AppliedState(tmp_path / "applied.json")
    a = _spec("a", tiny_st, {"1.0.0": 90, "1.1.0": 10}, 4)
    b = _spec("b", tiny_st, {"2.0.0": 100}, 6)
    state.record("a", a)
    state.record("b", b)
    await state.close()
    # Equal specs, so the registry's snapshot of the same routes swaps nothing and reloads nothing.
    assert state.read() == [a, b]
    assert load_static_deployments(str(tmp_path / "applied.json")) == [a, b]
    assert _names(tmp_path) == ["applied.json", "applied.json.lock"]  # no temporary file left

    state.record("a", None)
    await state.close()
    assert state.read() == [b]


async def test_workers_sharing_a_cache_keep_each_others_deployments(tmp_path: Path, tiny_st: Path) -> None:
    one, two = AppliedState(tmp_path / "applied.json"), AppliedState(tmp_path / "applied.json")
    a, b = _spec("a", tiny_st, {"1.0.0": 100}, 1), _spec("b", tiny_st, {"1.0.0": 100}, 2)
    one.record("a", a)
    await one.close()
    two.record("b", b)
    await two.close()
    assert one.read() == [a, b]


async def test_an_unreadable_file_reads_as_nothing_and_the_next_write_replaces_it(
    tmp_path: Path, tiny_st: Path
) -> None:
    path = tmp_path / "applied.json"
    path.write_text('{"not": "a list"')
    state = AppliedState(path)
    assert state.read() == []
    a = _spec("a", tiny_st, {"1.0.0": 100}, 1)
    state.record("a", a)
    await state.close()
    assert state.read() == [a]
    assert json.loads(path.read_text())[0]["name"] == "a"


@pytest_asyncio.fixture(loop_scope="session")
async def recorded(tmp_path: Path) -> AsyncIterator[tuple[DeploymentApplier, AppliedState]]:
    load = ThreadPoolExecutor(1)
    state = AppliedState(tmp_path / "cache" / "applied.json")
    applier = DeploymentApplier(
        RoutingTable(), artifact_cache(tmp_path / "cache"), load, on_applied=state.record
    )
    yield applier, state
    await applier.close()
    load.shutdown()


async def test_only_what_was_applied_is_recorded(
    recorded: tuple[DeploymentApplier, AppliedState], tiny_st: Path
) -> None:
    applier, state = recorded

    async def apply(spec: DeploymentSpec | None, name: str = "a") -> list[DeploymentSpec]:
        applier.submit(spec) if spec is not None else applier.delete(name)
        await asyncio.wait_for(applier.settled(name), 60)
        await state.close()
        return state.read()

    first = _spec("a", tiny_st, {"1.0.0": 100}, 1)
    assert await apply(first) == [first]
    refused = _spec("a", tiny_st, {"2.0.0": 100}, 2, checkpoint="0" * 64)
    assert await apply(refused) == [first]  # a refused change is not what the worker serves

    # A staged version that fails is left out of the applied routes, and of the file.
    good = registry_version(tiny_st, "1.0.0", model_id="tiny", dim=32)
    bad = registry_version(tiny_st, "3.0.0", model_id="tiny", dim=32, checkpoint="1" * 64)
    staged = deployment_from_registry(
        rpb.Deployment(
            name="a",
            model_id="tiny",
            routes=[rpb.Route(version="1.0.0", weight=100), rpb.Route(version="3.0.0", weight=0)],
            versions=[good, bad],
            revision=3,
        )
    )
    (stored,) = await apply(staged)
    assert stored.revision == 3 and stored.routes == (("1.0.0", 100),)
    assert [v.version for v in stored.versions] == ["1.0.0"]

    assert await apply(None) == []  # a deleted deployment leaves the file
