"""Bootstrap confidence intervals for the difference between two runs' metrics, with a seeded RNG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelyard.common.errors import InvalidArgument

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 20240101
# Bound the memory of one vectorised resampling step (indices for resamples x samples).
_MAX_CELLS_PER_CHUNK = 4_000_000


@dataclass(frozen=True)
class DifferenceInterval:
    """candidate - baseline of a statistic, and a percentile bootstrap interval around it."""

    delta: float
    low: float
    high: float
    confidence: float
    paired: bool
    resamples: int

    @property
    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


def _statistic(values: np.ndarray, percentile: float | None) -> np.ndarray:
    """Mean (or a percentile) along the last axis."""
    if percentile is None:
        return values.mean(axis=-1)
    return np.percentile(values, percentile, axis=-1)


def _resampled(
    values: np.ndarray, rng: np.random.Generator, resamples: int, percentile: float | None
) -> np.ndarray:
    out = np.empty(resamples)
    chunk = max(1, _MAX_CELLS_PER_CHUNK // len(values))
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        picks = rng.integers(0, len(values), size=(count, len(values)))
        out[start : start + count] = _statistic(values[picks], percentile)
    return out


def bootstrap_difference(
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    *,
    paired: bool,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = DEFAULT_SEED,
    percentile: float | None = None,
) -> DifferenceInterval:
    """Interval for statistic(candidate) - statistic(baseline); statistic = mean unless `percentile`.

    Paired: both runs observed the same items in the same order (per-query quality scores), so
    the item is resampled and the difference taken within it. Unpaired: each run is resampled on
    its own (per-request latencies).
    """
    b = np.asarray(baseline, dtype=float)
    c = np.asarray(candidate, dtype=float)
    if b.size == 0 or c.size == 0:
        raise InvalidArgument("bootstrap needs at least one sample in each run")
    if resamples <= 0:
        raise InvalidArgument(f"resamples must be > 0, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise InvalidArgument(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    delta = float(_statistic(c, percentile) - _statistic(b, percentile))
    if paired:
        if b.size != c.size:
            raise InvalidArgument(f"paired samples differ in length: {b.size} vs {c.size}")
        if percentile is None:
            draws = _resampled(c - b, rng, resamples, None)
        else:
            picks = rng.integers(0, b.size, size=(resamples, b.size))
            draws = _statistic(c[picks], percentile) - _statistic(b[picks], percentile)
    else:
        draws = _resampled(c, rng, resamples, percentile) - _resampled(b, rng, resamples, percentile)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return DifferenceInterval(delta, float(low), float(high), confidence, paired, resamples)
