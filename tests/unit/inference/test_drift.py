"""Drift summaries: the distance and its bins, the reference a deployment takes from its first
items, and what a version counts after it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelyard.common.drift import (
    DRIFT_BINS,
    INPUT_SIZE,
    OUTPUT_COSINE,
    cosine_bins,
    js_distance,
    text_size_bin,
)
from modelyard.inference.drift import DriftMonitor, SignalWindow
from modelyard.inference.live_counters import LiveCounters


def test_the_distance_is_bounded_symmetric_and_blind_to_order_and_scale() -> None:
    p = [5, 10, 0, 3] + [0] * (DRIFT_BINS - 4)
    q = [0, 2, 9, 7] + [0] * (DRIFT_BINS - 4)
    assert js_distance(p, p) == 0.0
    assert js_distance(p, q) == pytest.approx(js_distance(q, p))
    assert js_distance([10 * n for n in p], q) == pytest.approx(js_distance(p, q)), "sample size"
    assert js_distance([1] + [0] * 19, [0] * 19 + [1]) == pytest.approx(1.0), "disjoint"
    assert math.isnan(js_distance([0] * DRIFT_BINS, q))


def test_bins_cover_their_ranges() -> None:
    assert cosine_bins(np.array([-1.0, -0.95, 0.0, 0.99, 1.0])).tolist() == [0, 0, 10, 19, 19]
    assert [text_size_bin(n) for n in (0, 1, 2, 3, 100, 1024, 10**6)] == [0, 0, 2, 3, 13, 19, 19]


def rows(vectors: np.ndarray) -> dict[str, np.ndarray]:
    return {"embedding": vectors.astype(np.float32)}


def test_the_reference_takes_the_mean_then_the_histograms_then_versions_count() -> None:
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(reference_items=50, window_items=120)
    windows: dict[str, SignalWindow] = {}
    center = rng.normal(size=8)
    texts = [b"x" * 30] * 10
    for _ in range(5):  # 50 items: the mean
        monitor.observe("d", windows, "text", texts, rows(center + 0.3 * rng.normal(size=(10, 8))))
    assert monitor.reference_of("d", 8) == {} and windows == {}
    for _ in range(5):  # 50 more: the histograms
        monitor.observe("d", windows, "text", texts, rows(center + 0.3 * rng.normal(size=(10, 8))))
    reference = monitor.reference_of("d", 8)
    assert sum(reference[OUTPUT_COSINE]) == 50 and sum(reference[INPUT_SIZE]) == 50
    assert windows == {}, "nothing counted against the reference while it was taken"
    for _ in range(12):
        monitor.observe("d", windows, "text", texts, rows(center + 0.3 * rng.normal(size=(10, 8))))
    assert sum(windows[OUTPUT_COSINE].counts) == 120 and windows[OUTPUT_COSINE].filled == 120
    same = monitor.scores("d", 8, windows)[OUTPUT_COSINE]
    # Vectors of another space: their cosine to the reference mean is spread around 0.
    for _ in range(12):  # the ring now holds only these
        monitor.observe("d", windows, "text", texts, rows(rng.normal(size=(10, 8))))
    moved = monitor.scores("d", 8, windows)[OUTPUT_COSINE]
    assert same < 0.2 < moved, (same, moved)
    # Another dimension is another reference; the first is kept.
    other: dict[str, SignalWindow] = {}
    monitor.observe("d", other, "text", texts, rows(rng.normal(size=(10, 16))))
    assert monitor.reference_of("d", 8) == reference and monitor.reference_of("d", 16) == {}


def test_heartbeat_snapshots_carry_reference_and_counts_and_forget_gone_deployments() -> None:
    counters = LiveCounters(drift=DriftMonitor(reference_items=10, window_items=100))
    vectors = rows(np.ones((5, 4)))
    for _ in range(6):
        counters.observe_outputs("d", "1.0.0", "m", "text", [b"hello world"] * 5, vectors)
    [series] = counters.snapshot(present={("d", "1.0.0")}).series
    reference, live = series.drift[OUTPUT_COSINE]
    assert (sum(reference), sum(live)) == (10, 10)
    counters.snapshot(present=set())
    assert counters.drift.references == {}
