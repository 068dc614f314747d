"""Fixtures for the benchmark unit tests: small BEIR datasets written to a temporary directory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

CORPUS = [
    {"_id": "d1", "title": "Cats", "text": "cats purr and chase mice around the house"},
    {"_id": "d2", "title": "Dogs", "text": "dogs bark loudly and fetch sticks in the park"},
    {"_id": "d3", "title": "Boats", "text": "boats sail across the sea with wind in the sails"},
    {"_id": "d4", "title": "Trains", "text": "trains run on rails between distant cities"},
]
QUERIES = [
    {"_id": "q1", "text": "which animal purrs"},
    {"_id": "q2", "text": "what barks in the park"},
    {"_id": "q3", "text": "vehicles that run on rails"},
    {"_id": "q4", "text": "a query nobody judged"},
]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq3\td4\t1\nq3\td3\t0\n"

WriteDataset = Callable[..., Path]


@pytest.fixture
def write_beir(tmp_path: Path) -> WriteDataset:
    """Writes a BEIR dataset; each file's content can be replaced to make it malformed."""

    def write(
        *,
        corpus: str | None = None,
        queries: str | None = None,
        qrels: str | None = None,
        split: str = "test",
        name: str = "tiny",
    ) -> Path:
        root = tmp_path / name
        (root / "qrels").mkdir(parents=True)
        (root / "corpus.jsonl").write_text(
            corpus if corpus is not None else "".join(json.dumps(d) + "\n" for d in CORPUS)
        )
        (root / "queries.jsonl").write_text(
            queries if queries is not None else "".join(json.dumps(q) + "\n" for q in QUERIES)
        )
        (root / "qrels" / f"{split}.tsv").write_text(qrels if qrels is not None else QRELS)
        return root

    return write
