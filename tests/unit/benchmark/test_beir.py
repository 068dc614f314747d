"""BEIR loading: valid datasets load; every malformed file is refused naming the file and line."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import pytest

from modelyard.benchmark.beir import MalformedDataset, load_beir
from modelyard.common.errors import InvalidArgument, NotFound

from .conftest import CORPUS, QUERIES, WriteDataset


def _jsonl(rows: Sequence[Mapping[str, object]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_loads_corpus_queries_and_graded_qrels(write_beir: WriteDataset) -> None:
    dataset = load_beir(write_beir())
    assert set(dataset.corpus) == {"d1", "d2", "d3", "d4"}
    assert dataset.corpus["d1"].passage == "Cats. cats purr and chase mice around the house"
    assert dataset.qrels["q2"] == {"d2": 2}
    assert dataset.qrels["q3"] == {"d4": 1, "d3": 0}
    # q4 has no judgements and is not scored.
    assert dataset.judged_query_ids == ["q1", "q2", "q3"]


def test_uses_the_only_split_when_test_is_absent(write_beir: WriteDataset) -> None:
    dataset = load_beir(write_beir(split="dev"))
    assert dataset.qrels["q1"] == {"d1": 1}


def test_names_the_available_splits_when_the_wanted_one_is_missing(write_beir: WriteDataset) -> None:
    root = write_beir(split="dev")
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(InvalidArgument, match="dev, train"):
        load_beir(root)


def test_missing_directory_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_beir(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("file", "content", "line", "problem"),
    [
        ("corpus.jsonl", _jsonl(CORPUS[:2]) + '{"_id": "d3", "text": \n', 3, "invalid JSON"),
        ("corpus.jsonl", _jsonl([*CORPUS[:1], {"title": "x", "text": "no id"}, *CORPUS[1:]]), 2, "`_id`"),
        ("corpus.jsonl", _jsonl([*CORPUS, {"_id": "d1", "text": "again"}]), 5, "duplicate"),
        ("corpus.jsonl", _jsonl([*CORPUS, {"_id": "d9", "title": "no text"}]), 5, "missing `text`"),
        ("queries.jsonl", _jsonl(QUERIES[:3]) + "\n" + "[1, 2]\n", 5, "JSON object"),
        ("queries.jsonl", _jsonl([*QUERIES, {"_id": "q9", "text": 7}]), 5, "must be a string"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\n", 3, "3 tab-separated columns"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\textra\n", 3, "got 4"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n", 2, "not an integer"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1.5\n", 2, "not an integer"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq7\td1\t1\n", 3, "query-id 'q7'"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n\nq2\tdx\t1\n", 4, "corpus-id 'dx'"),
    ],
)
def test_malformed_file_error_names_file_and_line(
    write_beir: WriteDataset, file: str, content: str, line: int, problem: str
) -> None:
    root = write_beir()
    (root / file).write_text(content)
    with pytest.raises(MalformedDataset) as caught:
        load_beir(root)
    error = caught.value
    assert error.path == root / file
    assert error.line == line
    assert f"{root / file}:{line}:" in error.message
    assert problem in error.message
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT


def test_missing_queries_file_is_named(write_beir: WriteDataset) -> None:
    root = write_beir()
    (root / "queries.jsonl").unlink()
    with pytest.raises(MalformedDataset, match=r"queries\.jsonl"):
        load_beir(root)


def test_qrels_without_any_relevant_document_are_refused(write_beir: WriteDataset) -> None:
    root = write_beir(qrels="query-id\tcorpus-id\tscore\nq1\td1\t0\n")
    with pytest.raises(MalformedDataset, match="no relevant"):
        load_beir(root)
