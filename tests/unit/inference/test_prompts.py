"""Named prompts (E5's `query: ` / `passage: `) chosen per request with the `prompt_name` parameter:
the served embeddings are `SentenceTransformer.encode(prompt_name=...)`'s on every engine, the
model's default prompt applies without one, and a bad one is refused before any work."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pytest
import pytest_asyncio
from prompt_support import E5_PROMPTS, with_prompts
from worker_support import artifact_cache, deployment_spec, version_spec

from modelyard.api import grpc_predict_v2_pb2 as pb
from modelyard.common.modelspec import PROMPT_NAME, RequestParameter, parameters_from_metadata
from modelyard.inference.converters import request_from_grpc
from modelyard.inference.dataplane import DataPlane
from modelyard.inference.deployments import DeploymentApplier
from modelyard.inference.domain import InferenceRequest, InputTensor
from modelyard.inference.errors import BadInput
from modelyard.inference.loaders import create_runtime
from modelyard.inference.routing import RoutingTable

if TYPE_CHECKING:
    from modelyard.inference.loaders.sentence_transformers import SentenceTransformerRuntime

TEXTS = ["the cat sat on the mat", "hello world", "a quick brown fox jumps over the lazy dog"]
ATOL = 1e-4  # fp32, as the brief of the feature asks; measured here: under 1e-6


@pytest.fixture(scope="module")
def e5(tiny_st: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_prompts(tiny_st, tmp_path_factory.mktemp("prompts") / "e5")


@pytest.fixture(scope="module")
def e5_default(tiny_st: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_prompts(tiny_st, tmp_path_factory.mktemp("prompts") / "e5-default", default="query")


@pytest.fixture(scope="module")
def e5_excluding(tiny_st: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_prompts(tiny_st, tmp_path_factory.mktemp("prompts") / "e5-excl", include_prompt=False)


def _encode(path: Path, texts: list[str], **options: Any) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    return np.asarray(model.encode(texts, **options), dtype=np.float32)


def _runtime(path: Path, **config: Any) -> SentenceTransformerRuntime:
    runtime = cast("SentenceTransformerRuntime", create_runtime(version_spec(path, "1", **config), path))
    runtime.load()
    runtime.optimize()
    runtime.warmup()
    return runtime


def _served(runtime: SentenceTransformerRuntime, texts: list[str], prompt: str | None) -> np.ndarray:
    parameters = {} if prompt is None else {PROMPT_NAME: prompt}
    prepared = runtime.prepare_request("text", [t.encode() for t in texts], parameters)
    return cast(np.ndarray, runtime.predict("text", prepared)["embedding"])


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_each_prompt_serves_what_encode_gives_on_the_fast_engines(e5: Path, engine: str) -> None:
    runtime = _runtime(e5, engine=engine)
    # The prompts do not cost the faster path: the trace (or onnxruntime session) still serves.
    if engine == "torch":
        assert runtime.traced is not None
    else:
        assert runtime.engine == "onnxruntime", runtime.engine_note
    query, passage = _served(runtime, TEXTS, "query"), _served(runtime, TEXTS, "passage")
    np.testing.assert_allclose(query, _encode(e5, TEXTS, prompt_name="query"), rtol=0, atol=ATOL)
    np.testing.assert_allclose(passage, _encode(e5, TEXTS, prompt_name="passage"), rtol=0, atol=ATOL)
    plain = _served(runtime, TEXTS, None)
    np.testing.assert_allclose(plain, _encode(e5, TEXTS), rtol=0, atol=ATOL)
    assert np.abs(query - passage).max() > 1e-2 and np.abs(query - plain).max() > 1e-2
    runtime.unload()


def test_texts_with_different_prompts_share_a_pass(e5: Path) -> None:
    runtime = _runtime(e5)
    batch = runtime.prepare_request("text", [b"hello world"], {PROMPT_NAME: "query"})
    batch += runtime.prepare_request("text", [b"hello world", b"the cat"], {PROMPT_NAME: "passage"})
    batch += runtime.prepare_request("text", [b"the cat"], {})
    rows = cast(np.ndarray, runtime.predict("text", batch)["embedding"])
    np.testing.assert_allclose(rows[0], _encode(e5, ["hello world"], prompt_name="query")[0], atol=ATOL)
    np.testing.assert_allclose(
        rows[1:3], _encode(e5, ["hello world", "the cat"], prompt_name="passage"), atol=ATOL
    )
    np.testing.assert_allclose(rows[3], _encode(e5, ["the cat"])[0], atol=ATOL)


def test_the_signature_declares_the_prompts_and_the_default(
    e5: Path, e5_default: Path, tiny_st: Path
) -> None:
    declared = RequestParameter(PROMPT_NAME, (("passage", "passage: "), ("query", "query: ")))
    assert _runtime(e5).signature().parameters == (declared,)
    assert _runtime(e5_default).signature().parameters == (dataclasses.replace(declared, default="query"),)
    # Every model has empty `query` and `document` prompts in sentence-transformers: not prompts.
    assert _runtime(tiny_st).signature().parameters == ()


def test_a_pooling_that_leaves_prompt_tokens_out_is_served_through_encode(
    e5_excluding: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="modelyard.inference.loaders"):
        runtime = _runtime(e5_excluding)
    assert runtime.traced is None
    (skipped,) = [r for r in caplog.records if r.getMessage() == "model.trace_skipped"]
    assert "include_prompt false" in skipped.fields["reason"]  # type: ignore[attr-defined]
    batch = runtime.prepare_request("text", [t.encode() for t in TEXTS], {PROMPT_NAME: "query"})
    batch += runtime.prepare_request("text", [t.encode() for t in TEXTS], {PROMPT_NAME: "passage"})
    rows = cast(np.ndarray, runtime.predict("text", batch)["embedding"])
    query = _encode(e5_excluding, TEXTS, prompt_name="query")
    np.testing.assert_allclose(rows[:3], query, rtol=0, atol=ATOL)
    np.testing.assert_allclose(
        rows[3:], _encode(e5_excluding, TEXTS, prompt_name="passage"), rtol=0, atol=ATOL
    )
    # What a prompt before the text would give instead: the prompt's tokens pooled in.
    assert np.abs(_encode(e5_excluding, [f"query: {t}" for t in TEXTS]) - query).max() > 1e-2
    onnx = _runtime(e5_excluding, engine="onnxruntime")
    assert onnx.engine == "torch" and "include_prompt" in onnx.engine_note


# The data plane: parameters from the request, checked against the signature before any work.


@dataclasses.dataclass
class Plane:
    dataplane: DataPlane
    applier: DeploymentApplier
    table: RoutingTable


@pytest_asyncio.fixture(loop_scope="session")
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    infer, load = ThreadPoolExecutor(2), ThreadPoolExecutor(1)
    table = RoutingTable()
    applier = DeploymentApplier(table, artifact_cache(tmp_path / "cache"), load)
    yield Plane(DataPlane(table, infer), applier, table)
    await applier.close()
    infer.shutdown()
    load.shutdown()


async def _deploy(plane: Plane, name: str, path: Path, version: str = "1", **extra: Any) -> None:
    spec = deployment_spec(name, {version: 100}, [version_spec(path, version)])
    if extra:
        spec = dataclasses.replace(spec, **extra)
    plane.applier.submit(spec)
    await asyncio.wait_for(plane.applier.settled(name), 60)


def _request(deployment: str, texts: list[str], **parameters: Any) -> InferenceRequest:
    tensor = InputTensor("text", "BYTES", [len(texts)], [t.encode() for t in texts])
    return InferenceRequest(deployment=deployment, version="", id="r", inputs=[tensor], parameters=parameters)


async def _embed(plane: Plane, deployment: str, texts: list[str], **parameters: Any) -> np.ndarray:
    response = await plane.dataplane.infer(_request(deployment, texts, **parameters))
    return np.asarray(response.outputs[0].data).reshape(len(texts), -1)


async def test_requests_choose_their_prompt_and_the_metadata_names_them(plane: Plane, e5: Path) -> None:
    await _deploy(plane, "e5", e5)
    query = await _embed(plane, "e5", TEXTS, prompt_name="query")
    passage = await _embed(plane, "e5", TEXTS, prompt_name="passage")
    np.testing.assert_allclose(query, _encode(e5, TEXTS, prompt_name="query"), rtol=0, atol=ATOL)
    np.testing.assert_allclose(passage, _encode(e5, TEXTS, prompt_name="passage"), rtol=0, atol=ATOL)
    assert np.abs(query - passage).max() > 1e-2
    meta = plane.dataplane.model_metadata("e5")
    assert meta.parameters == {
        "prompt_name.choice.passage": "passage: ",
        "prompt_name.choice.query": "query: ",
    }
    assert (
        parameters_from_metadata(meta.parameters)
        == plane.table.get("e5").versions["1"].runtime.signature().parameters
    )


async def test_without_prompt_name_the_default_prompt_applies(plane: Plane, e5_default: Path) -> None:
    await _deploy(plane, "e5d", e5_default)
    served = await _embed(plane, "e5d", TEXTS)
    np.testing.assert_allclose(served, _encode(e5_default, TEXTS), rtol=0, atol=ATOL)
    np.testing.assert_allclose(served, _encode(e5_default, TEXTS, prompt_name="query"), rtol=0, atol=ATOL)
    assert np.abs(served - _encode(e5_default, TEXTS, prompt="")).max() > 1e-2  # a prompt did apply
    passage = await _embed(plane, "e5d", TEXTS, prompt_name="passage")  # a named one overrides it
    np.testing.assert_allclose(passage, _encode(e5_default, TEXTS, prompt_name="passage"), rtol=0, atol=ATOL)
    assert plane.dataplane.model_metadata("e5d").parameters["prompt_name.default"] == "query"


@pytest.mark.parametrize(
    ("deployment", "value", "message"),
    [
        ("e5", "document", r"'document', not one of version 1's prompts: passage \('passage: '\), query"),
        ("e5", "", r"'', not one of version 1's prompts"),
        ("e5", 3, r"is a int \(3\); send a string, one of version 1's prompts: passage"),
        ("e5", True, "is a bool"),
        ("e5", None, "unset"),
        ("plain", "query", "version 1 defines no prompts; leave prompt_name out"),
    ],
)
async def test_a_bad_prompt_name_is_refused_before_any_work(
    plane: Plane, e5: Path, tiny_st: Path, deployment: str, value: Any, message: str
) -> None:
    await _deploy(plane, deployment, e5 if deployment == "e5" else tiny_st)
    loaded = plane.table.get(deployment).versions["1"]
    touched: list[str] = []
    prepare, predict = loaded.runtime.prepare_request, loaded.runtime.predict

    def preparing(*args: Any) -> Any:
        touched.append("prepare")
        return prepare(*args)

    def predicting(*args: Any) -> Any:
        touched.append("predict")
        return predict(*args)

    loaded.runtime.prepare_request = preparing
    loaded.runtime.predict = predicting
    try:
        with pytest.raises(BadInput, match=message):
            await plane.dataplane.infer(_request(deployment, TEXTS, prompt_name=value))
        assert touched == []
        # Parameters no model reads are ignored, as OIP lets a server do.
        await plane.dataplane.infer(_request(deployment, TEXTS, priority=1))
        assert touched == ["prepare", "predict"]
    finally:
        del loaded.runtime.prepare_request, loaded.runtime.predict


async def test_a_shadow_prepares_the_request_itself(plane: Plane, e5: Path, tiny_st: Path) -> None:
    """The primary's prepared texts carry its prompt; a shadow without prompts must not embed them,
    and refuses a prompt_name as it would if called (counted, never the caller's failure)."""
    v1, v2 = version_spec(e5, "1"), version_spec(tiny_st, "2")
    spec = dataclasses.replace(deployment_spec("esh", {"1": 100, "2": 0}, [v1, v2]), mirrors=(("2", 100),))
    plane.applier.submit(spec)
    await asyncio.wait_for(plane.applier.settled("esh"), 60)
    shadow = plane.table.get("esh").versions["2"]
    seen: list[list[str]] = []
    predict = shadow.runtime.predict

    def predicting(name: str, items: list[Any]) -> Any:
        seen.append(list(items))
        return predict(name, items)

    shadow.runtime.predict = predicting
    try:
        await _embed(plane, "esh", ["hello world"], prompt_name="query")
        await _embed(plane, "esh", ["the cat"])
        for _ in range(500):
            if not plane.dataplane._shadow_tasks:
                break
            await asyncio.sleep(0.01)
    finally:
        del shadow.runtime.predict
    assert seen == [["the cat"]]
    series = plane.dataplane.counters.series("esh", "2")
    assert series.shadow_requests == 2 and series.errors == {"INVALID_ARGUMENT": 1}


def test_grpc_request_parameters_reach_the_domain_request() -> None:
    message = pb.ModelInferRequest(model_name="e5")
    message.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
    message.parameters["prompt_name"].string_param = "query"
    message.parameters["priority"].int64_param = 3
    message.parameters["unset"].SetInParent()
    assert request_from_grpc(message).parameters == {"prompt_name": "query", "priority": 3, "unset": None}


def test_metadata_parameters_read_back_into_the_signature_parameters() -> None:
    from modelyard.common.modelspec import parameters_to_metadata

    parameters = (RequestParameter(PROMPT_NAME, tuple(sorted(E5_PROMPTS.items())), "query"),)
    assert parameters_from_metadata(parameters_to_metadata(parameters)) == parameters
    assert parameters_from_metadata({"binary_data_output": "true"}) == ()
