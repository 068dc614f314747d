"""Caption scores: token F1 and BLEU behave as defined; the suite times batches and scores captions."""

from __future__ import annotations

import math

import pytest

from modelyard.benchmark.captions import CaptionSuite, sentence_bleu, token_f1, tokenize
from modelyard.benchmark.catalog import digits_captions
from modelyard.common.errors import InvalidArgument


def test_tokenize_ignores_case_and_punctuation() -> None:
    assert tokenize("A Dog, running!") == ["a", "dog", "running"]


def test_token_f1_takes_the_best_reference() -> None:
    assert token_f1("a dog runs", ["a cat sleeps", "a dog runs"]) == 1.0
    # overlap {a, dog} = 2; precision 2/3, recall 2/2 -> F1 0.8
    assert token_f1("a dog runs", ["a dog"]) == pytest.approx(0.8)
    assert token_f1("zebra", ["a dog"]) == 0.0
    assert token_f1("", ["a dog"]) == 0.0


def test_bleu_is_one_for_an_exact_match_and_zero_without_overlap() -> None:
    assert sentence_bleu("the cat sat on the mat", ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert sentence_bleu("purple elephants", ["the cat sat on the mat"]) == 0.0
    assert sentence_bleu("", ["the cat"]) == 0.0


def test_bleu_prefers_word_order_and_penalises_brevity() -> None:
    reference = ["the cat sat on the mat"]
    ordered = sentence_bleu("the cat sat on a mat", reference)
    shuffled = sentence_bleu("mat a on sat cat the", reference)
    short = sentence_bleu("the cat", reference)
    assert ordered > shuffled
    assert 0 < short < ordered
    # Unigram precision is 1 for "the cat"; only smoothing and the brevity penalty lower it.
    assert short <= math.exp(1 - 6 / 2)


def test_suite_scores_captions_against_references_and_times_batches() -> None:
    suite = digits_captions(limit=40, batch_size=8)
    labels = [r[0].rsplit(" ", 1)[1] for r in suite.references or []]
    answers = iter(labels)

    def right(batch: list[bytes]) -> list[str]:
        return [f"a handwritten digit {next(answers)}" for _ in batch]

    good = suite.run(right)
    bad = suite.run(lambda batch: ["a photo of a cat"] * len(batch))
    assert good.metric("token_f1").value == 1.0
    assert bad.metric("token_f1").value < 0.5
    assert good.metric("bleu").value > bad.metric("bleu").value
    assert len(good.metric("latency_ms").samples) == 5  # 40 images in batches of 8
    assert good.metric("throughput_images_per_s").value > 0


def test_suite_without_references_reports_speed_only() -> None:
    result = CaptionSuite("plain", [b"x"] * 3, batch_size=2).run(lambda batch: ["c"] * len(batch))
    assert {m.name for m in result.metrics} == {"latency_ms", "throughput_images_per_s"}


def test_suite_refuses_a_captioner_that_drops_images() -> None:
    with pytest.raises(InvalidArgument, match="2 captions for 3"):
        CaptionSuite("plain", [b"x"] * 3, batch_size=3).run(lambda batch: ["c", "d"])
