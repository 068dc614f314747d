"""Comparing two runs: paired quality deltas, latency percentiles from per-request samples, winners."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.benchmark.compare import BASELINE, CANDIDATE, MIXED, TIE, compare_runs
from modelyard.benchmark.results import MetricResult, RunRecord, higher_is_better
from modelyard.common.errors import FailedPrecondition


def _quality(name: str, samples: np.ndarray) -> MetricResult:
    return MetricResult(name, float(samples.mean()), "", tuple(float(x) for x in samples))


def _latency(samples: np.ndarray, level: str = "[c=4]") -> list[MetricResult]:
    values = tuple(float(x) for x in samples)
    metrics = [MetricResult(f"latency_ms{level}", float(samples.mean()), "ms", values)]
    metrics += [
        MetricResult(f"latency_p{q}_ms{level}", float(np.percentile(samples, q)), "ms") for q in (50, 99)
    ]
    return metrics


def _run(run_id: str, metrics: list[MetricResult], suite: str = "stdlib-docstrings") -> RunRecord:
    return RunRecord(run_id, suite, "minilm", run_id, tuple(metrics))


def test_direction_follows_the_metric_name() -> None:
    assert higher_is_better("recall@10")
    assert higher_is_better("throughput_rps[c=8]")
    assert not higher_is_better("latency_p99_ms[c=8]")
    assert not higher_is_better("error_rate[c=1]")


def test_faster_candidate_with_equal_quality_wins_on_latency_only() -> None:
    rng = np.random.default_rng(0)
    quality = (rng.random(400) < 0.8).astype(float)
    # A few queries flip each way: quality unchanged overall.
    flipped = quality.copy()
    flipped[np.flatnonzero(quality == 1)[:4]] = 0.0
    flipped[np.flatnonzero(quality == 0)[:4]] = 1.0
    slow = rng.lognormal(3.0, 0.3, size=500)
    fast = rng.lognormal(2.7, 0.3, size=500)
    baseline = _run("fp32", [_quality("recall@10", quality), *_latency(slow)])
    candidate = _run("int8", [_quality("recall@10", flipped), *_latency(fast)])
    comparison = compare_runs(baseline, candidate, resamples=1000)
    by_name = {m.metric: m for m in comparison.metrics}

    recall = by_name["recall@10"]
    assert recall.paired and recall.winner == TIE
    assert recall.ci_low is not None and recall.ci_low <= 0 <= (recall.ci_high or 0)

    mean = by_name["latency_ms[c=4]"]
    assert not mean.paired
    assert mean.winner == CANDIDATE and mean.delta < 0
    assert mean.ci_high is not None and mean.ci_high < 0

    p99 = by_name["latency_p99_ms[c=4]"]
    assert p99.baseline_samples == 500  # bootstrapped from the level's per-request latencies
    assert p99.ci_low is not None and p99.ci_low <= p99.delta <= (p99.ci_high or 0)
    assert p99.winner == CANDIDATE
    assert comparison.winner == CANDIDATE


def test_swapping_the_runs_swaps_the_winner_and_the_sign() -> None:
    rng = np.random.default_rng(1)
    a = _run("a", [_quality("ndcg@10", rng.random(300))])
    b = _run("b", [_quality("ndcg@10", np.clip(np.asarray(a.metrics[0].samples) + 0.1, 0, 1))])
    forward, backward = compare_runs(a, b), compare_runs(b, a)
    assert forward.metrics[0].winner == CANDIDATE
    assert backward.metrics[0].winner == BASELINE
    assert forward.metrics[0].delta == pytest.approx(-backward.metrics[0].delta)


def test_metrics_without_samples_are_decided_by_the_delta_without_an_interval() -> None:
    base = _run("a", [MetricResult("throughput_rps[c=1]", 100.0, "requests/s")])
    cand = _run("b", [MetricResult("throughput_rps[c=1]", 80.0, "requests/s")])
    metric = compare_runs(base, cand).metrics[0]
    assert metric.ci_low is None and metric.ci_high is None
    assert metric.winner == BASELINE


def test_mixed_when_each_side_wins_something() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random(300)
    base = _run("a", [_quality("recall@10", scores), *_latency(rng.lognormal(2.0, 0.2, 400))])
    cand = _run("b", [_quality("recall@10", scores + 0.2), *_latency(rng.lognormal(2.5, 0.2, 400))])
    assert compare_runs(base, cand).winner == MIXED


def test_only_metrics_both_runs_have_are_compared() -> None:
    rng = np.random.default_rng(3)
    base = _run("a", [_quality("recall@1", rng.random(50)), _quality("recall@10", rng.random(50))])
    cand = _run("b", [_quality("recall@10", rng.random(50))])
    assert [m.metric for m in compare_runs(base, cand).metrics] == ["recall@10"]


def test_runs_of_different_suites_or_failed_runs_are_refused() -> None:
    metric = [MetricResult("recall@10", 0.5, "", (0.5,))]
    with pytest.raises(FailedPrecondition, match="same suite"):
        compare_runs(_run("a", metric), _run("b", metric, suite="digits"))
    failed = RunRecord("c", "stdlib-docstrings", "m", "2", (), status="failed", error="worker gone")
    with pytest.raises(FailedPrecondition, match="failed"):
        compare_runs(_run("a", metric), failed)


def test_quality_samples_pair_only_when_the_dataset_fingerprints_match() -> None:
    rng = np.random.default_rng(4)
    scores = rng.random(100)
    base = RunRecord(
        "a", "beir:x", "m", "1", (_quality("recall@10", scores),), conditions={"dataset_fingerprint": "f1"}
    )
    same = RunRecord(
        "b", "beir:x", "m", "2", (_quality("recall@10", scores),), conditions={"dataset_fingerprint": "f1"}
    )
    edited = RunRecord(
        "c", "beir:x", "m", "2", (_quality("recall@10", scores),), conditions={"dataset_fingerprint": "f2"}
    )
    assert compare_runs(base, same).metrics[0].paired
    assert not compare_runs(base, edited).metrics[0].paired
