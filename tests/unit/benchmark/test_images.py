"""Digits image suite: PNG encoding, leave-one-out neighbours, and scores that separate embedders."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from modelyard.benchmark.images import ImageEmbeddingSuite, knn_votes, load_digits_images, neighbours
from modelyard.common.errors import InvalidArgument


def pixel_embedder(images: list[bytes]) -> np.ndarray:
    """Decoded greyscale pixels, centred: a simple honest image embedding."""
    rows = [np.asarray(Image.open(io.BytesIO(b)).convert("L"), dtype=np.float32).ravel() for b in images]
    stacked = np.stack(rows)
    return stacked - stacked.mean(axis=0)


def noise_embedder(images: list[bytes]) -> np.ndarray:
    """Ignores the image content: vectors drawn from a hash of the bytes."""
    return np.stack([np.random.default_rng(abs(hash(b)) % 2**32).normal(size=16) for b in images])


def test_digits_ship_as_png_bytes_with_labels() -> None:
    images, labels = load_digits_images(limit=50, size=16)
    assert len(images) == 50
    assert set(labels.tolist()) == set(range(10))
    decoded = Image.open(io.BytesIO(images[0]))
    assert decoded.format == "PNG"
    assert decoded.size == (16, 16)


def test_neighbours_never_include_the_image_itself() -> None:
    vectors = np.random.default_rng(0).normal(size=(30, 4))
    nearest = neighbours(vectors, 3, batch_size=7)
    assert nearest.shape == (30, 3)
    assert not (nearest == np.arange(30)[:, None]).any()


def test_knn_vote_takes_the_majority_and_breaks_ties_by_the_nearest() -> None:
    votes = knn_votes(np.array([[3, 1, 1, 5], [2, 4, 4, 2], [7, 8, 9, 6]]))
    assert votes.tolist() == [1, 2, 7]


def test_pixel_embedder_beats_noise_on_digits() -> None:
    suite = ImageEmbeddingSuite.digits(limit=400, size=8)
    good = suite.run(pixel_embedder)
    noise = suite.run(noise_embedder)
    accuracy = "knn_accuracy@5"
    assert len(good.metric(accuracy).samples) == 400
    assert good.metric(accuracy).value > 0.85
    assert noise.metric(accuracy).value < 0.3
    assert good.metric("recall@10").value >= good.metric("recall@1").value
    assert good.conditions["classes"] == "10"


def test_suite_refuses_mismatched_labels() -> None:
    with pytest.raises(InvalidArgument):
        ImageEmbeddingSuite("x", [b"a", b"b"], np.array([1]))
