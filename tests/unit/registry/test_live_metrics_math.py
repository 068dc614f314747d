"""The live figures' arithmetic: percentiles from bucket counts (as Prometheus' histogram_quantile),
and rates from two snapshots across restarts, new series and the window's start."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from modelyard.common.latency import BUCKET_COUNT, LATENCY_BUCKETS_S, bucket_index
from modelyard.registry.domain import LiveCounters, LiveWindow, SeriesCounters
from modelyard.registry.live_metrics import live_metrics, quantile_from_buckets, worker_figures

BOUNDS = (1.0, 2.0, 4.0)
NOW = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def test_a_quantile_is_interpolated_linearly_inside_its_bucket() -> None:
    # 10 in (0, 1], 10 in (1, 2], 20 in (2, 4]: the median rank 20 ends the second bucket.
    counts = [10, 10, 20, 0]
    assert quantile_from_buckets(BOUNDS, counts, 0.5) == pytest.approx(2.0)
    assert quantile_from_buckets(BOUNDS, counts, 0.25) == pytest.approx(1.0)
    # Rank 30 is halfway through the 20 of (2, 4].
    assert quantile_from_buckets(BOUNDS, counts, 0.75) == pytest.approx(3.0)
    # Rank 2 of the first bucket, which starts at 0.
    assert quantile_from_buckets(BOUNDS, counts, 0.05) == pytest.approx(0.2)


def test_empty_buckets_are_skipped_and_the_overflow_bucket_answers_the_largest_bound() -> None:
    assert quantile_from_buckets(BOUNDS, [0, 0, 4, 0], 0.5) == pytest.approx(3.0)
    assert quantile_from_buckets(BOUNDS, [1, 0, 0, 9], 0.99) == 4.0  # nothing known above 4
    assert quantile_from_buckets(BOUNDS, [0, 0, 0, 0], 0.99) == 0.0


def test_quantiles_of_real_buckets_stay_inside_the_bucket_of_the_exact_quantile() -> None:
    rng = np.random.default_rng(7)
    durations = rng.lognormal(mean=np.log(0.012), sigma=0.6, size=5000)
    counts = [0] * BUCKET_COUNT
    for d in durations:
        counts[bucket_index(float(d))] += 1
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(durations, q))
        i = bucket_index(exact)
        lower = LATENCY_BUCKETS_S[i - 1] if i > 0 else 0.0
        estimate = quantile_from_buckets(LATENCY_BUCKETS_S, counts, q)
        assert lower <= estimate <= LATENCY_BUCKETS_S[i], (q, exact, estimate)


def test_bucket_index_matches_prometheus_le() -> None:
    assert bucket_index(0.001) == 0, "a duration equal to a bound is in that bound's bucket"
    assert bucket_index(0.0010001) == 1
    assert bucket_index(0.0) == 0
    assert bucket_index(99.0) == len(LATENCY_BUCKETS_S)


def series(
    requests: int, *, since: float = 0.0, version: str = "1.0.0", errors: dict[str, int] | None = None
) -> SeriesCounters:
    buckets = [0] * BUCKET_COUNT
    failed = sum((errors or {}).values())
    buckets[3] = requests - failed  # every success in (5, 10] ms
    return SeriesCounters(
        deployment="text",
        version=version,
        since_s=since,
        requests=requests,
        items=2 * (requests - failed),
        errors=dict(errors or {}),
        buckets=buckets,
        latency_sum_s=0.008 * (requests - failed),
    )


def window(
    newest: LiveCounters, baseline: LiveCounters | None, *, baseline_age_s: float = 50.0
) -> LiveWindow:
    return LiveWindow(
        worker_id="w1",
        newest=newest,
        newest_at=NOW,
        baseline=baseline,
        baseline_at=NOW - dt.timedelta(seconds=baseline_age_s) if baseline else None,
        samples=11,
        now=NOW,
    )


def test_rates_are_differences_over_the_workers_own_uptime() -> None:
    old = LiveCounters(1, 1000.0, [series(500, errors={"INVALID_ARGUMENT": 5})])
    new = LiveCounters(1, 1050.0, [series(1500, errors={"INVALID_ARGUMENT": 15, "CANCELLED": 1})])
    f = worker_figures(window(new, old), new.series[0], window_s=60)
    assert f.requests == 1000 and f.window_s == pytest.approx(50.0)
    assert f.requests_per_s == pytest.approx(20.0)
    assert f.errors == {"CANCELLED": 1, "INVALID_ARGUMENT": 10}
    assert f.error_rate == pytest.approx(11 / 1000)
    assert f.items == 2 * (1000 - 11) and f.items_per_s == pytest.approx(f.items / 50)
    assert 5.0 <= f.p50_ms <= f.p99_ms <= 10.0 and f.mean_ms == pytest.approx(8.0)
    assert f.window_end == NOW and f.window_start == NOW - dt.timedelta(seconds=50)


def test_a_restart_inside_the_window_counts_from_the_new_process_start_never_negative() -> None:
    # The old process had counted 90,000; the new one, started 20 s ago, 400 since.
    old = LiveCounters(1, 5000.0, [series(90_000)])
    new = LiveCounters(2, 20.0, [series(400)])
    # The SQL picks a baseline of the newest epoch only, so the old process's snapshot never reaches
    # the arithmetic; even a stale one offered here must not be used.
    f = worker_figures(window(new, old), new.series[0], window_s=60)
    assert f.requests == 400 and f.window_s == pytest.approx(20.0)
    assert f.requests_per_s == pytest.approx(20.0)


def test_a_series_started_after_the_baseline_counts_from_its_own_start() -> None:
    old = LiveCounters(1, 1000.0, [series(500)])
    new = LiveCounters(1, 1050.0, [series(1500), series(300, since=1040.0, version="2.0.0")])
    f = worker_figures(window(new, old), new.series[1], window_s=60)
    assert f.requests == 300 and f.window_s == pytest.approx(10.0) and f.requests_per_s == pytest.approx(30.0)


def test_a_series_started_again_reads_as_new_not_as_a_drop() -> None:
    # 2.0.0 was unloaded and loaded again at uptime 1030: a new since_s, counting from 0 again.
    old = LiveCounters(1, 1000.0, [series(800, version="2.0.0", since=10.0)])
    new = LiveCounters(1, 1050.0, [series(100, version="2.0.0", since=1030.0)])
    f = worker_figures(window(new, old), new.series[0], window_s=60)
    assert f.requests == 100 and f.requests_per_s == pytest.approx(5.0)


def test_a_worker_with_only_its_newest_snapshot_has_no_rate() -> None:
    new = LiveCounters(1, 1050.0, [series(1500)])
    f = worker_figures(window(new, None), new.series[0], window_s=60)
    assert f.requests == 0 and f.requests_per_s == 0.0 and f.window_s == 0.0


def test_versions_sum_over_workers_and_take_percentiles_from_the_summed_buckets() -> None:
    def w(worker: str, slow: bool) -> LiveWindow:
        old = series(0)
        new = series(100)
        if slow:  # every success of this worker in (250, 500] ms
            new.buckets = [0] * BUCKET_COUNT
            new.buckets[8] = 100
            new.latency_sum_s = 100 * 0.3
        return LiveWindow(
            worker_id=worker,
            newest=LiveCounters(1, 110.0, [new]),
            newest_at=NOW,
            baseline=LiveCounters(1, 100.0, [old]),
            baseline_at=NOW - dt.timedelta(seconds=10),
            samples=3,
            now=NOW,
        )

    metrics = live_metrics([w("a", False), w("b", True)], window_s=60, at=NOW)
    [row] = metrics.versions
    assert [x.worker_id for x in row.workers] == ["a", "b"]
    assert row.total.requests == 200 and row.total.requests_per_s == pytest.approx(20.0)
    assert row.total.samples == 6
    assert 5.0 <= row.total.p50_ms <= 10.0, "half the requests were fast"
    assert 250.0 <= row.total.p99_ms <= 500.0
    assert row.total.mean_ms == pytest.approx((100 * 8 + 100 * 300) / 200)
