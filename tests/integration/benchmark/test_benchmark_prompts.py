"""A retrieval run against a real worker process serving a tiny E5-style model sends its queries with
`prompt_name=query` and its documents with `prompt_name=passage`, gets those prompted embeddings back,
and records the prompts in the run's conditions; against a model without prompts it sends none."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format
from prompt_support import with_prompts
from support import ServerProcess
from worker_support import registry_version, wait_model_ready

import modelyard.inference.torchvision_compat  # noqa: F401  (before any torchvision import)
from modelyard.api import registry_pb2 as rpb
from modelyard.benchmark.oip import WorkerDeployment
from modelyard.benchmark.runner import BenchmarkRunner, RunSpec, WorkerClient
from modelyard.benchmark.store import InMemoryRunStore

# Words of the tiny models' vocabulary, so that texts are not all [UNK].
CORPUS = {
    "d1": "the cat sat on the mat",
    "d2": "a dog ran fast in the park",
    "d3": "the quick brown fox jumps over the lazy dog",
    "d4": "a small red bird and a blue fish",
}
QUERIES = {"q1": "cat on a mat", "q2": "fox jumps", "q3": "red bird"}
QRELS = {"q1": "d1", "q2": "d3", "q3": "d4"}


@pytest.fixture(scope="module")
def models(tiny_encoders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "e5": with_prompts(tiny_encoders["a"], tmp_path_factory.mktemp("prompts") / "e5"),
        "plain": tiny_encoders["a"],
    }


@pytest.fixture(scope="module")
def worker(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("worker")
    deployments = [
        rpb.Deployment(
            name=name,
            model_id=name,
            routes=[rpb.Route(version="1.0.0", weight=100)],
            versions=[registry_version(path, "1.0.0", model_id=name, dim=32)],
            revision=1,
        )
        for name, path in models.items()
    ]
    static = root / "static.json"
    static.write_text(json.dumps([json_format.MessageToDict(d) for d in deployments]))
    process = ServerProcess(
        ["-m", "modelyard.inference", "--port", "0", "--metrics-port", "0", "--no-preimport",
         "--static-deployments", str(static), "--cache-dir", str(root / "cache"), "--grace-period-s", "1"],
        timeout=120,
    )  # fmt: skip
    try:
        for name in models:
            wait_model_ready(process.address, name)
        yield process.address
    finally:
        process.kill()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("beir") / "tiny"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in CORPUS.items())
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items())
    )
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in QRELS.items())
    )
    return root


class Observed(WorkerDeployment):
    """The real worker client, keeping what each embedding call sent and got back."""

    def __init__(self, address: str, deployment: str) -> None:
        super().__init__(address, deployment)
        self.calls: list[tuple[str, list[str], np.ndarray]] = []

    async def embed_texts(self, version: str, texts: Sequence[str], *, prompt_name: str = "") -> np.ndarray:
        vectors = await super().embed_texts(version, texts, prompt_name=prompt_name)
        self.calls.append((prompt_name, list(texts), vectors))
        return vectors


async def _run(worker: str, deployment: str, dataset: Path) -> tuple[Observed, dict[str, str]]:
    observed: list[Observed] = []

    def connect(address: str, name: str) -> WorkerClient:
        observed.append(Observed(address, name))
        return observed[-1]

    store = InMemoryRunStore()
    runner = BenchmarkRunner(store, connect, call_named_workers=True)
    spec = RunSpec(worker=worker, deployment=deployment, model_id=deployment, versions=("1.0.0",),
                   suite=f"beir:{dataset}", options={"batch_size": "2"})  # fmt: skip
    events = [event async for event in runner.run(spec)]
    final = events[-1].run
    assert final is not None and final.status == "succeeded", final
    assert final.metric("recall@10").value >= 0
    return observed[0], dict(final.conditions)


async def test_a_retrieval_run_sends_the_query_and_passage_prompts_and_records_them(
    worker: str, dataset: Path, models: dict[str, Path]
) -> None:
    from sentence_transformers import SentenceTransformer

    observed, conditions = await _run(worker, "e5", dataset)
    assert conditions["prompt_name.queries"] == "query" and conditions["prompt.queries"] == "query: "
    assert conditions["prompt_name.documents"] == "passage" and conditions["prompt.documents"] == "passage: "
    sent = {
        prompt: sorted(t for p, texts, _ in observed.calls if p == prompt for t in texts)
        for prompt in ("query", "passage")
    }
    assert sent == {"query": sorted(QUERIES.values()), "passage": sorted(CORPUS.values())}
    # What came back is the prompted embedding: the worker read the parameter.
    model = SentenceTransformer(str(models["e5"]), device="cpu")
    for prompt, texts, vectors in observed.calls:
        np.testing.assert_allclose(vectors, model.encode(texts, prompt_name=prompt), rtol=0, atol=1e-4)


async def test_a_model_without_prompts_gets_none(worker: str, dataset: Path) -> None:
    observed, conditions = await _run(worker, "plain", dataset)
    assert not any(key.startswith("prompt") for key in conditions)
    assert {prompt for prompt, _, _ in observed.calls} == {""}
