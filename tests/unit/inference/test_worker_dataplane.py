"""Data plane + deployment applier in one process on tiny models: routing, swaps, refusals."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
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


async def test_a_large_request_of_mixed_lengths_is_split_and_answers_as_encode(
    plane: Plane, tiny_st: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    await _apply(plane, deployment_spec("mixed", {"1.0.0": 100}, [version_spec(tiny_st, "1.0.0")]))
    rng = np.random.default_rng(3)
    texts = [" ".join(f"w{rng.integers(100)}" for _ in range(rng.integers(1, 120))) for _ in range(16)]
    passes: list[int] = []
    loaded = plane.table.get("mixed").versions["1.0.0"]
    two = DataPlane(plane.table, plane.dataplane._executor, instances=2)
    predict = loaded.runtime.predict

    def counting(name: str, items: list[Any]) -> Any:
        passes.append(len(items))
        return predict(name, items)

    loaded.runtime.predict = counting
    try:
        response = await two.infer(_text("mixed", texts))
    finally:
        del loaded.runtime.predict
    assert passes == [4, 4, 4, 4]  # a pass's share of max_batch_size 16 with two instances is 5
    got = np.asarray(response.outputs[0].data).reshape(16, -1)
    expected = SentenceTransformer(str(tiny_st), device="cpu").encode(texts)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


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


async def _settle(dataplane: DataPlane) -> None:
    for _ in range(500):
        if not dataplane._shadow_tasks:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("shadow calls did not finish")


async def test_a_shadow_gets_a_copy_of_unpinned_requests_and_callers_only_the_primary_answer(
    plane: Plane, tiny_st: Path, tiny_st_other: Path
) -> None:
    v1, v2 = version_spec(tiny_st, "1"), version_spec(tiny_st_other, "2")
    spec = dataclasses.replace(deployment_spec("sh", {"1": 100, "2": 0}, [v1, v2]), mirrors=(("2", 100),))
    await _apply(plane, spec)
    texts = ["the cat sat on the mat", "a much longer sentence about serving models without restarts"]
    alone = np.asarray((await plane.dataplane.infer(_text("sh", texts, version="1"))).outputs[0].data)
    other = np.asarray((await plane.dataplane.infer(_text("sh", texts, version="2"))).outputs[0].data)
    await _settle(plane.dataplane)
    before = plane.dataplane.counters.series("sh", "2").shadow_requests  # pinned calls are never mirrored
    responses = [await plane.dataplane.infer(_text("sh", texts)) for _ in range(10)]
    assert {r.version for r in responses} == {"1"}
    for r in responses:
        np.testing.assert_array_equal(np.asarray(r.outputs[0].data), alone)
    await _settle(plane.dataplane)
    series = plane.dataplane.counters.series("sh", "2")
    assert before == 0 and series.shadow_requests == 10
    assert series.requests == 11 and series.items == 2 + 20  # the pinned call and the ten copies
    assert series.agreement_items == 20
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    expected = float((unit(alone) * unit(other)).sum(axis=1).mean())
    assert series.agreement_sum / series.agreement_items == pytest.approx(expected, abs=1e-5)
    assert expected < 0.99  # two different models: agreement says so


async def test_a_failing_shadow_never_fails_the_primary_and_counts_its_errors(
    plane: Plane, tiny_st: Path, tiny_st_other: Path
) -> None:
    v1, v2 = version_spec(tiny_st, "1"), version_spec(tiny_st_other, "2")
    spec = dataclasses.replace(deployment_spec("shf", {"1": 100, "2": 0}, [v1, v2]), mirrors=(("2", 100),))
    await _apply(plane, spec)
    shadow = plane.table.get("shf").versions["2"]

    def broken(name: str, items: list[Any]) -> Any:
        raise RuntimeError("shadow exploded")

    shadow.runtime.predict = broken
    try:
        responses = await asyncio.gather(*(plane.dataplane.infer(_text("shf", ["x", "y"])) for _ in range(8)))
        await _settle(plane.dataplane)
    finally:
        del shadow.runtime.predict
    assert {r.version for r in responses} == {"1"}
    series = plane.dataplane.counters.series("shf", "2")
    assert series.shadow_requests == 8 and series.errors == {"INTERNAL": 8}
    assert shadow.inflight == 0  # every copy released the version


async def test_mirroring_is_bounded_and_drops_what_exceeds_the_limit(
    plane: Plane, tiny_st: Path, tiny_st_other: Path
) -> None:
    from modelyard.inference.shadow import SHADOW_ITEMS_IN_FLIGHT

    v1, v2 = version_spec(tiny_st, "1"), version_spec(tiny_st_other, "2")
    spec = dataclasses.replace(deployment_spec("shb", {"1": 100, "2": 0}, [v1, v2]), mirrors=(("2", 100),))
    await _apply(plane, spec)
    shadow = plane.table.get("shb").versions["2"]
    gate = threading.Event()
    predict = shadow.runtime.predict

    def slow(name: str, items: list[Any]) -> Any:
        gate.wait(10)
        return predict(name, items)

    shadow.runtime.predict = slow
    try:
        count = SHADOW_ITEMS_IN_FLIGHT // 8 + 4
        responses = [await plane.dataplane.infer(_text("shb", ["w"] * 8)) for _ in range(count)]
        assert plane.dataplane._shadow_items == SHADOW_ITEMS_IN_FLIGHT  # the rest were not mirrored
        gate.set()
        await _settle(plane.dataplane)
    finally:
        gate.set()
        del shadow.runtime.predict
    assert len(responses) == count and {r.version for r in responses} == {"1"}
    assert plane.dataplane.counters.series("shb", "2").shadow_requests == SHADOW_ITEMS_IN_FLIGHT // 8
