"""Drift summaries on the worker (bins and distance: `modelyard.common.drift`): constant memory per
deployment and version, a few microseconds per request, on the event loop after the forward pass.

Per deployment, a **reference** is taken from the first items it serves on this worker (any of its
versions): the first `reference_items` give the mean output embedding, the next `reference_items`
the reference histogram of every signal. Every version of the deployment is then scored against
that one reference, so a canary whose vectors live in another space than what consumers stored
(another model of the same dimension) shows as drift, while an int8 copy of the same model does not.
A version with another embedding dimension (an acknowledged incompatible switch: consumers
re-embed) has a reference of its own. A worker restart takes a new reference from what it then serves.

Per version (its live series), the items after the reference was complete are counted twice: into
cumulative bin counts, which heartbeats carry so the registry can score any window (GetLiveMetrics,
the `drift` rollout guard), and into a ring of the last `window_items` bins, which the worker scores
itself for `modelyard_drift_score` at every heartbeat."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelyard.common.drift import (
    CAPTION_LENGTH,
    DRIFT_BINS,
    INPUT_SIZE,
    MIN_DRIFT_ITEMS,
    OUTPUT_COSINE,
    caption_length_bin,
    cosine_bins,
    image_size_bin,
    js_distance,
    text_size_bin,
)

DEFAULT_REFERENCE_ITEMS = 200
DEFAULT_WINDOW_ITEMS = 500


class SignalWindow:
    """One signal of one version: cumulative bin counts and a ring of the most recent bins."""

    __slots__ = ("counts", "filled", "position", "ring")

    def __init__(self, size: int) -> None:
        self.counts = [0] * DRIFT_BINS
        self.ring = np.zeros(size, dtype=np.int8)
        self.position = 0
        self.filled = 0

    def add(self, bins: np.ndarray) -> None:
        for b in bins.tolist():
            self.counts[b] += 1
        size = len(self.ring)
        for b in bins[-size:].tolist():
            self.ring[self.position] = b
            self.position = (self.position + 1) % size
        self.filled = min(size, self.filled + len(bins))

    def recent(self) -> list[int]:
        return np.bincount(self.ring[: self.filled], minlength=DRIFT_BINS).tolist()


class Reference:
    """A deployment's reference: the mean embedding, then the histograms."""

    def __init__(self, items: int) -> None:
        self.items = items
        self.vector_sum: np.ndarray | None = None
        self.mean: np.ndarray | None = None  # unit length, once `items` outputs were summed
        self.summed = 0
        self.histograms: dict[str, list[int]] = {}
        self.counted = 0

    @property
    def ready(self) -> bool:
        return self.counted >= self.items

    def absorb(self, vectors: np.ndarray | None, bins: dict[str, np.ndarray]) -> None:
        """Items seen while the reference is being taken (the mean first, then the histograms)."""
        if vectors is not None and self.mean is None:
            total = vectors.astype(np.float64).sum(axis=0)
            self.vector_sum = total if self.vector_sum is None else self.vector_sum + total
            self.summed += len(vectors)
            if self.summed >= self.items:
                norm = float(np.linalg.norm(self.vector_sum))
                self.mean = (self.vector_sum / norm if norm > 0 else self.vector_sum).astype(np.float32)
            return
        for signal, values in bins.items():
            histogram = self.histograms.setdefault(signal, [0] * DRIFT_BINS)
            for b in values.tolist():
                histogram[b] += 1
        self.counted += max((len(v) for v in bins.values()), default=0)


def _input_bins(input_name: str, items: Sequence[bytes]) -> np.ndarray:
    sizes = [len(item) for item in items]
    binned = (
        [image_size_bin(n) for n in sizes] if input_name == "image" else [text_size_bin(n) for n in sizes]
    )
    return np.asarray(binned, dtype=np.int64)


def _cosines(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1)
    norms[norms == 0] = 1.0
    return (vectors @ mean) / norms


class DriftMonitor:
    """Every deployment's reference and every version's windows on this worker."""

    def __init__(
        self, *, reference_items: int = DEFAULT_REFERENCE_ITEMS, window_items: int = DEFAULT_WINDOW_ITEMS
    ) -> None:
        self.reference_items = reference_items
        self.window_items = window_items
        # By deployment and embedding dimension (0 without embeddings): during an acknowledged
        # incompatible canary, both dimensions are served at once and each has its own reference.
        self.references: dict[tuple[str, int], Reference] = {}

    def observe(
        self,
        deployment: str,
        windows: dict[str, SignalWindow],
        input_name: str,
        items: Sequence[bytes],
        rows: dict[str, Any],
    ) -> None:
        """One successful request: its inputs and the rows it got back; `windows` are the version's."""
        embedding = rows.get("embedding")
        vectors = embedding if isinstance(embedding, np.ndarray) and embedding.ndim == 2 else None
        key = (deployment, vectors.shape[1] if vectors is not None else 0)
        reference = self.references.get(key)
        if reference is None:
            reference = self.references[key] = Reference(self.reference_items)
        bins: dict[str, np.ndarray] = {INPUT_SIZE: _input_bins(input_name, items)}
        captions = rows.get("caption")
        if captions is not None and not isinstance(captions, np.ndarray):
            words = [len((c.decode() if isinstance(c, bytes) else str(c)).split()) for c in captions]
            bins[CAPTION_LENGTH] = np.asarray([caption_length_bin(w) for w in words], dtype=np.int64)
        if vectors is not None and reference.mean is not None:
            bins[OUTPUT_COSINE] = cosine_bins(_cosines(vectors, reference.mean))
        if not reference.ready:
            reference.absorb(vectors, bins)
            return
        for signal, values in bins.items():
            window = windows.get(signal)
            if window is None:
                window = windows[signal] = SignalWindow(self.window_items)
            window.add(values)

    def reference_of(self, deployment: str, dim: int) -> dict[str, list[int]]:
        reference = self.references.get((deployment, dim))
        return dict(reference.histograms) if reference is not None and reference.ready else {}

    def scores(self, deployment: str, dim: int, windows: dict[str, SignalWindow]) -> dict[str, float]:
        """The worker's own score per signal over its recent items (at least MIN_DRIFT_ITEMS)."""
        reference = self.reference_of(deployment, dim)
        return {
            signal: js_distance(reference[signal], window.recent())
            for signal, window in windows.items()
            if signal in reference and window.filled >= MIN_DRIFT_ITEMS
        }

    def forget(self, deployments: set[str]) -> None:
        """Drop the references of deployments this worker no longer serves."""
        for key in [k for k in self.references if k[0] not in deployments]:
            del self.references[key]
