"""Data plane + deployment applier in one process on tiny models: routing, swaps, refusals."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from worker_support import artifact_cache, deployment_spec, version_spec

from modelyard.common.states import VersionState
from modelyard.inference.dataplane import DataPlane
from modelyard.inference.deployments import DeploymentApplier
from modelyard.inference.domain import InferenceRequest, InputTensor
from modelyard.inference.errors import BadInput, ModelNotFound
from modelyard.inference.limits import Admission
from modelyard.inference.routing import RoutingTable


@dataclass
class Plane:
    table: RoutingTable
    dataplane: DataPlane
    applier: DeploymentApplier


@pytest_asyncio.fixture(loop_scope="session")
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    infer, load = ThreadPoolExecutor(2), ThreadPoolExecutor(1)
    table = RoutingTable()
    applier = DeploymentApplier(table, artifact_cache(tmp_path / "cache"), load)
    # The canary test sends 400 requests at once, over the default admission limit (256 items).
    yield Plane(table, DataPlane(table, infer, admission=Admission(limit=1000)), applier)
    await applier.close()
    infer.shutdown()
    load.shutdown()


def _text(deployment: str, texts: list[str], version: str = "", **overrides: Any) -> InferenceRequest:
    tensor = InputTensor("text", "BYTES", [len(texts)], [t.encode() for t in texts])
    for key, value in overrides.items():
        setattr(tensor, key, value)
    return InferenceRequest(deployment=deployment, version=version, id="r", inputs=[tensor])


async def _apply(plane: Plane, spec: object) -> None:
    plane.applier.submit(spec)  # type: ignore[arg-type]
    await asyncio.wait_for(plane.applier.settled(spec.name), 60)  # type: ignore[attr-defined]


async def test_requests_are_served_and_name_their_version(plane: Plane, tiny_st: Path) -> None:
    await _apply(plane, deployment_spec("emb", {"1.0.0": 100}, [version_spec(tiny_st, "1.0.0")]))
    assert plane.dataplane.ready() and plane.dataplane.model_ready("emb")
    response = await plane.dataplane.infer(_text("emb", ["hello world", "the cat"]))
    assert response.version == "1.0.0"
    (embedding,) = response.outputs
    assert embedding.name == "embedding" and embedding.shape == [2, 32]
    meta = plane.dataplane.model_metadata("emb")
    assert meta.versions == ["1.0.0"] and meta.inputs[0].name == "text"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"datatype": "FP32"}, "datatype"),
        ({"shape": [1, 1]}, "shape"),
        ({"shape": [0], "data": []}, "empty batch"),
        ({"name": "image"}, "not accepted"),
    ],
)
async def test_bad_input_is_refused_and_serving_continues(
    plane: Plane, tiny_st: Path, overrides: dict[str, Any], message: str
) -> None:
    await _apply(plane, deployment_spec("emb", {"1": 100}, [version_spec(tiny_st, "1", max_batch_size=4)]))
    with pytest.raises(BadInput, match=message):
        await plane.dataplane.infer(_text("emb", ["x"], **overrides))
    with pytest.raises(BadInput, match="at most 4"):
        await plane.dataplane.infer(_text("emb", ["x"] * 5))
    with pytest.raises(ModelNotFound):
        await plane.dataplane.infer(_text("nope", ["x"]))
    with pytest.raises(ModelNotFound):
        await plane.dataplane.infer(_text("emb", ["x"], version="9.9.9"))
    assert (await plane.dataplane.infer(_text("emb", ["still serving"]))).version == "1"


async def test_swap_loads_before_unloading_and_running_requests_finish_on_their_version(
    plane: Plane, tiny_st: Path, tiny_st_other: Path
) -> None:
    v1, v2 = version_spec(tiny_st, "1"), version_spec(tiny_st_other, "2")
    await _apply(plane, deployment_spec("emb", {"1": 100}, [v1], revision=1))
    old = plane.table.get("emb").versions["1"]
    old.enter()  # a request still running on version 1
    await _apply(plane, deployment_spec("emb", {"2": 100, "1": 0}, [v1, v2], revision=2))
    assert (await plane.dataplane.infer(_text("emb", ["x"]))).version == "2"
    assert (await plane.dataplane.infer(_text("emb", ["x"], version="1"))).version == "1"  # staged
    assert plane.table.get("emb").versions["1"] is old  # kept loaded, not reloaded
    await _apply(plane, deployment_spec("emb", {"2": 100}, [v2], revision=3))
    await asyncio.sleep(0.05)
    assert old.runtime.model is not None  # still draining: not unloaded under a running request
    assert plane.applier.status["emb"].versions.get("1") is not None
    old.exit()
    for _ in range(100):
        if "1" not in plane.applier.status["emb"].versions:
            break
        await asyncio.sleep(0.02)
    assert old.runtime.model is None
    assert set(plane.applier.status["emb"].versions) == {"2"}
    assert plane.applier.status["emb"].revision == 3


async def test_a_version_that_fails_to_load_leaves_the_old_one_serving(plane: Plane, tiny_st: Path) -> None:
    good = version_spec(tiny_st, "1")
    await _apply(plane, deployment_spec("emb", {"1": 100}, [good], revision=1))
    bad = version_spec(tiny_st, "2", checkpoint="0" * 64)
    await _apply(plane, deployment_spec("emb", {"2": 100}, [good, bad], revision=2))
    assert (await plane.dataplane.infer(_text("emb", ["x"]))).version == "1"
    status = plane.applier.status["emb"]
    assert status.revision == 1
    assert status.versions["2"].state == VersionState.FAILED
    assert "sha256" in status.versions["2"].last_error
    assert "emb@2" in plane.applier.last_error


async def test_canary_weights_split_unpinned_requests(
    plane: Plane, tiny_st: Path, tiny_st_other: Path
) -> None:
    v1, v2 = version_spec(tiny_st, "1"), version_spec(tiny_st_other, "2")
    await _apply(plane, deployment_spec("emb", {"1": 75, "2": 25}, [v1, v2]))
    responses = await asyncio.gather(*(plane.dataplane.infer(_text("emb", ["x"])) for _ in range(400)))
    counts = Counter(r.version for r in responses)
    # 400 draws at p=0.25: sd ~8.7, so 100 +- 35 is four standard deviations.
    assert abs(counts["2"] - 100) < 35, counts
    a = (await plane.dataplane.infer(_text("emb", ["x"], version="1"))).outputs[0].data
    b = (await plane.dataplane.infer(_text("emb", ["x"], version="2"))).outputs[0].data
    assert not np.allclose(np.asarray(a), np.asarray(b))  # they really are different models
