"""Bootstrap intervals: calibrated on synthetic data with a known difference, and tighter with more data."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.benchmark.stats import bootstrap_difference
from modelyard.common.errors import InvalidArgument


def _coverage(
    *, paired: bool, n: int, trials: int = 200, true_delta: float = 0.3, confidence: float = 0.95
) -> float:
    rng = np.random.default_rng(1234)
    hits = 0
    for trial in range(trials):
        if paired:
            # Per-query scores: a shared query difficulty plus model noise.
            difficulty = rng.normal(size=n)
            baseline = difficulty + rng.normal(scale=0.5, size=n)
            candidate = difficulty + true_delta + rng.normal(scale=0.5, size=n)
        else:
            # Skewed latencies, as real ones are.
            baseline = rng.lognormal(mean=0.0, sigma=0.5, size=n)
            candidate = rng.lognormal(mean=0.0, sigma=0.5, size=n) + true_delta
        interval = bootstrap_difference(
            baseline, candidate, paired=paired, resamples=500, seed=trial, confidence=confidence
        )
        hits += interval.low <= true_delta <= interval.high
    return hits / trials


@pytest.mark.parametrize("paired", [True, False])
def test_95_percent_interval_contains_the_true_difference_most_of_the_time(paired: bool) -> None:
    coverage = _coverage(paired=paired, n=100)
    assert 0.89 <= coverage <= 0.99, coverage
    # The confidence level is honoured, not just wide intervals: a 50% interval covers about half.
    assert 0.38 <= _coverage(paired=paired, n=100, confidence=0.5) <= 0.62


@pytest.mark.parametrize("paired", [True, False])
def test_interval_shrinks_with_more_samples(paired: bool) -> None:
    rng = np.random.default_rng(7)
    widths = []
    for n in (50, 200, 800):
        baseline = rng.normal(size=n)
        candidate = (baseline if paired else rng.normal(size=n)) + 0.2 + rng.normal(scale=0.5, size=n)
        interval = bootstrap_difference(baseline, candidate, paired=paired, seed=1)
        widths.append(interval.high - interval.low)
    assert widths[0] > widths[1] > widths[2]
    # Width falls roughly as 1/sqrt(n): 16x the samples, about a quarter of the width.
    assert widths[2] < widths[0] / 2.5


def test_pairing_uses_shared_query_difficulty_to_narrow_the_interval() -> None:
    rng = np.random.default_rng(11)
    difficulty = rng.normal(scale=2.0, size=300)
    baseline = difficulty + rng.normal(scale=0.2, size=300)
    candidate = difficulty + 0.1 + rng.normal(scale=0.2, size=300)
    paired = bootstrap_difference(baseline, candidate, paired=True)
    unpaired = bootstrap_difference(baseline, candidate, paired=False)
    assert paired.high - paired.low < (unpaired.high - unpaired.low) / 3
    assert not paired.contains_zero  # the small improvement is visible only when paired
    assert unpaired.contains_zero


def test_same_seed_same_interval_and_the_delta_is_the_plain_difference() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=60) + 1
    first = bootstrap_difference(a, b, paired=False, seed=5)
    again = bootstrap_difference(a, b, paired=False, seed=5)
    other = bootstrap_difference(a, b, paired=False, seed=6)
    assert (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high)
    assert first.delta == pytest.approx(b.mean() - a.mean())


def test_percentile_statistic_bootstraps_the_percentile_difference() -> None:
    rng = np.random.default_rng(2)
    base = rng.exponential(scale=10.0, size=2000)
    cand = base * 2  # every latency doubles, so p95 doubles too
    interval = bootstrap_difference(base, cand, paired=False, percentile=95)
    assert interval.delta == pytest.approx(np.percentile(base, 95))
    assert interval.low > 0


def test_large_sample_counts_are_resampled_in_chunks() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=50_000), rng.normal(size=50_000) + 0.05
    interval = bootstrap_difference(a, b, paired=False, resamples=200)
    assert interval.low < 0.05 < interval.high


def test_refuses_empty_or_mismatched_input() -> None:
    with pytest.raises(InvalidArgument):
        bootstrap_difference([], [1.0], paired=False)
    with pytest.raises(InvalidArgument, match="differ in length"):
        bootstrap_difference([1.0, 2.0], [1.0], paired=True)
    with pytest.raises(InvalidArgument):
        bootstrap_difference([1.0], [1.0], paired=False, resamples=0)
