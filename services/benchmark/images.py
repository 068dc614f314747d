"""Image embedding quality on scikit-learn's handwritten digits: leave-one-out kNN accuracy and recall@k."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from modelyard.benchmark.results import MetricResult, SuiteResult
from modelyard.benchmark.retrieval import Progress, embed_in_batches, normalize_rows
from modelyard.common.errors import InvalidArgument

ImageEmbedder = Callable[[list[bytes]], np.ndarray]
"""Maps N encoded images (PNG/JPEG bytes) to an [N, D] array."""


def _no_progress(fraction: float, message: str) -> None:
    return None


def encode_png(pixels: np.ndarray, *, size: int) -> bytes:
    """A greyscale PNG of `pixels` (any range), scaled to size x size."""
    span = float(pixels.max() - pixels.min()) or 1.0
    grey = ((pixels - pixels.min()) / span * 255).astype(np.uint8)
    image = Image.fromarray(grey, mode="L").convert("RGB")
    if size != grey.shape[0]:
        image = image.resize((size, size), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_digits_images(*, limit: int | None = None, size: int = 32) -> tuple[list[bytes], np.ndarray]:
    """PNG bytes and labels of the digits that ship with scikit-learn (1797 8x8 images, 10 classes)."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    digits = load_digits()
    images, labels = digits.images, digits.target
    if limit is not None:
        # Every n-th image keeps the classes balanced and the choice deterministic.
        step = max(1, len(labels) // limit)
        images, labels = images[::step][:limit], labels[::step][:limit]
    return [encode_png(img, size=size) for img in images], np.asarray(labels)


def neighbours(vectors: np.ndarray, k: int, *, batch_size: int = 512) -> np.ndarray:
    """The k nearest other rows by cosine similarity (leave-one-out: a row is never its own neighbour)."""
    unit = normalize_rows(vectors)
    k = min(k, unit.shape[0] - 1)
    result = np.empty((unit.shape[0], k), dtype=np.int64)
    for offset in range(0, unit.shape[0], batch_size):
        scores = unit[offset : offset + batch_size] @ unit.T
        rows = np.arange(scores.shape[0])
        scores[rows, rows + offset] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        result[offset : offset + batch_size] = np.take_along_axis(part, order, axis=1)
    return result


def knn_votes(neighbour_labels: np.ndarray) -> np.ndarray:
    """Majority label per row; ties go to the label of the nearer neighbour."""
    predictions = np.empty(neighbour_labels.shape[0], dtype=neighbour_labels.dtype)
    for row, labels in enumerate(neighbour_labels):
        values, first_seen, counts = np.unique(labels, return_index=True, return_counts=True)
        best = np.lexsort((first_seen, -counts))[0]
        predictions[row] = values[best]
    return predictions


class ImageEmbeddingSuite:
    """kNN accuracy (leave-one-out) and recall@k (a same-class image among the k nearest), per image."""

    kind = "image_embedding"

    def __init__(
        self,
        name: str,
        images: Sequence[bytes],
        labels: np.ndarray,
        *,
        knn_k: int = 5,
        ks: Sequence[int] = (1, 5, 10),
        batch_size: int = 64,
    ) -> None:
        if len(images) != len(labels) or len(images) < 2:
            raise InvalidArgument(
                f"need at least 2 labelled images, got {len(images)} and {len(labels)} labels"
            )
        if knn_k <= 0 or not ks or any(k <= 0 for k in ks) or batch_size <= 0:
            raise InvalidArgument("knn_k, every k and batch_size must be positive integers")
        self.name = name
        self.images = list(images)
        self.labels = np.asarray(labels)
        self.knn_k = knn_k
        self.ks = tuple(sorted(set(ks)))
        self.batch_size = batch_size

    @classmethod
    def digits(
        cls,
        *,
        limit: int | None = None,
        size: int = 32,
        knn_k: int = 5,
        ks: Sequence[int] = (1, 5, 10),
        batch_size: int = 64,
    ) -> ImageEmbeddingSuite:
        images, labels = load_digits_images(limit=limit, size=size)
        return cls("digits", images, labels, knn_k=knn_k, ks=ks, batch_size=batch_size)

    def score(self, vectors: np.ndarray) -> tuple[MetricResult, ...]:
        depth = max(self.knn_k, *self.ks)
        nearest = neighbours(vectors, depth)
        nearest_labels = self.labels[nearest]
        predicted = knn_votes(nearest_labels[:, : self.knn_k])
        accuracy = (predicted == self.labels).astype(float)
        metrics = [MetricResult(f"knn_accuracy@{self.knn_k}", float(accuracy.mean()), "", tuple(accuracy))]
        for k in self.ks:
            hit = (nearest_labels[:, :k] == self.labels[:, None]).any(axis=1).astype(float)
            metrics.append(MetricResult(f"recall@{k}", float(hit.mean()), "", tuple(hit)))
        return tuple(metrics)

    def run(self, embed_images: ImageEmbedder, progress: Progress = _no_progress) -> SuiteResult:
        started = time.perf_counter()
        vectors = embed_in_batches(
            embed_images,
            self.images,
            batch_size=self.batch_size,
            what="images",
            progress=progress,
            start=0.0,
            span=0.95,
        )
        metrics = self.score(vectors)
        progress(1.0, "scored")
        conditions = {
            "dataset_fingerprint": hashlib.sha256(b"".join(self.images) + self.labels.tobytes()).hexdigest()[
                :16
            ],
            "images": str(len(self.images)),
            "classes": str(len(np.unique(self.labels))),
            "embedding_dim": str(vectors.shape[1]),
            "batch_size": str(self.batch_size),
            "seconds": f"{time.perf_counter() - started:.3f}",
        }
        return SuiteResult(self.name, metrics, conditions)
