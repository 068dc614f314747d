"""Retrieval metrics and exact cosine search, checked against hand-computed rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelyard.benchmark.beir import load_beir
from modelyard.benchmark.retrieval import (
    RetrievalSuite,
    embed_in_batches,
    ndcg_at_k,
    recall_at_k,
    reciprocal_rank,
    top_k_cosine,
)
from modelyard.common.errors import InvalidArgument

from .conftest import WriteDataset


def test_recall_counts_the_share_of_relevant_documents_found() -> None:
    relevant = {"a": 1, "b": 2, "z": 0}
    assert recall_at_k(["x", "a", "y", "b"], relevant, 2) == 0.5
    assert recall_at_k(["x", "a", "y", "b"], relevant, 4) == 1.0
    # A judged-but-irrelevant document (grade 0) does not count.
    assert recall_at_k(["z"], relevant, 1) == 0.0


def test_reciprocal_rank_uses_the_first_relevant_hit_within_the_cutoff() -> None:
    assert reciprocal_rank(["x", "y", "a"], {"a": 1}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x"] * 10 + ["a"], {"a": 1}) == 0.0


def test_ndcg_rewards_putting_the_higher_grade_first() -> None:
    relevant = {"a": 2, "b": 1}
    assert ndcg_at_k(["a", "b"], relevant) == pytest.approx(1.0)
    swapped = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert ndcg_at_k(["b", "a"], relevant) == pytest.approx(swapped)
    assert ndcg_at_k(["x", "y"], relevant) == 0.0


def test_top_k_cosine_matches_a_full_sort_in_batches() -> None:
    rng = np.random.default_rng(3)
    queries, corpus = rng.normal(size=(37, 8)), rng.normal(size=(101, 8))
    got = top_k_cosine(queries, corpus, 5, batch_size=10)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    c = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    expected = np.argsort(-(q @ c.T), axis=1)[:, :5]
    np.testing.assert_array_equal(got, expected)


def test_top_k_cosine_refuses_mismatched_dimensions() -> None:
    with pytest.raises(InvalidArgument, match="dimension"):
        top_k_cosine(np.ones((2, 3)), np.ones((4, 5)), 1)


def _keyword_embedder(vocabulary: list[str]):  # type: ignore[no-untyped-def]
    def embed(texts: list[str]) -> np.ndarray:
        return np.array([[float(word in t.lower()) + 1e-3 for word in vocabulary] for t in texts])

    return embed


def test_suite_scores_every_judged_query_with_one_sample_each(write_beir: WriteDataset) -> None:
    suite = RetrievalSuite(load_beir(write_beir()), ks=(1, 2))
    good = suite.run(_keyword_embedder(["purr", "bark", "rails"]))
    bad = suite.run(_keyword_embedder(["sea", "mice", "cities"]))
    for name in ("recall@1", "recall@2", "mrr@10", "ndcg@10"):
        assert len(good.metric(name).samples) == 3
    assert good.metric("recall@1").value == 1.0
    assert good.metric("mrr@10").samples == (1.0, 1.0, 1.0)
    assert bad.metric("mrr@10").value < good.metric("mrr@10").value
    assert good.conditions["queries"] == "3"


def test_suite_refuses_an_embedder_returning_the_wrong_shape(write_beir: WriteDataset) -> None:
    suite = RetrievalSuite(load_beir(write_beir()))
    with pytest.raises(InvalidArgument, match="expected"):
        suite.run(lambda texts: np.ones((len(texts) + 1, 4)))


def test_suite_reports_progress_up_to_completion(write_beir: WriteDataset) -> None:
    seen: list[float] = []
    RetrievalSuite(load_beir(write_beir()), batch_size=2).run(
        _keyword_embedder(["purr"]), lambda fraction, message: seen.append(fraction)
    )
    assert seen == sorted(seen)
    assert seen[-1] == 1.0
    assert len(seen) >= 4


@pytest.mark.parametrize("ks", [(), (0, 5), (-1,)])
def test_suite_refuses_non_positive_cutoffs(write_beir: WriteDataset, ks: tuple[int, ...]) -> None:
    with pytest.raises(InvalidArgument):
        RetrievalSuite(load_beir(write_beir()), ks=ks)


def test_fingerprint_changes_when_the_labels_change(write_beir: WriteDataset, tmp_path: object) -> None:
    first = RetrievalSuite(load_beir(write_beir(name="a"))).fingerprint()
    again = RetrievalSuite(load_beir(write_beir(name="b"))).fingerprint()
    relabelled = write_beir(name="c", qrels="query-id\tcorpus-id\tscore\nq1\td2\t1\n")
    assert first == again
    assert RetrievalSuite(load_beir(relabelled)).fingerprint() != first


def test_texts_are_embedded_in_length_order_and_rows_come_back_in_item_order() -> None:
    texts = ["a" * n for n in np.random.default_rng(5).permutation(50) + 1]
    batches: list[list[str]] = []

    def embed(batch: list[str]) -> np.ndarray:
        batches.append(batch)
        return np.array([[len(t), 1.0] for t in batch])

    vectors = embed_in_batches(
        embed, texts, batch_size=8, what="texts", progress=lambda *_: None, start=0, span=1
    )
    assert vectors[:, 0].tolist() == [len(t) for t in texts]
    assert [len(t) for batch in batches for t in batch] == list(range(1, 51))
    images = [b"x" * n for n in (3, 1, 2)]  # images keep their order: they all cost the same
    sent: list[list[bytes]] = []

    def embed_images(batch: list[bytes]) -> np.ndarray:
        sent.append(batch)
        return np.ones((len(batch), 2))

    embed_in_batches(
        embed_images, images, batch_size=2, what="images", progress=lambda *_: None, start=0, span=1
    )
    assert sent == [images[:2], images[2:]]
