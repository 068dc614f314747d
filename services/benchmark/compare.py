"""Compares two runs of one suite metric by metric: delta, bootstrap interval and winner."""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelyard.benchmark.results import MetricResult, RunRecord, higher_is_better, is_per_request
from modelyard.benchmark.stats import DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_difference
from modelyard.common.errors import FailedPrecondition
from modelyard.common.states import RunStatus

BASELINE, CANDIDATE, TIE, MIXED = "baseline", "candidate", "tie", "mixed"
FINGERPRINT = "dataset_fingerprint"

# Percentile metrics carry no samples of their own; they are bootstrapped from the level's latencies.
_PERCENTILE = re.compile(r"^latency_p(\d+)_ms(\[.*\])?$")


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    unit: str
    baseline: float
    candidate: float
    delta: float
    ci_low: float | None
    ci_high: float | None
    higher_is_better: bool
    winner: str
    paired: bool
    baseline_samples: int
    candidate_samples: int


@dataclass(frozen=True)
class Comparison:
    baseline: RunRecord
    candidate: RunRecord
    metrics: tuple[MetricComparison, ...]
    winner: str
    resamples: int
    seed: int


def _samples_for(run: RunRecord, metric: MetricResult) -> tuple[tuple[float, ...], float | None]:
    """The observations behind `metric` and the percentile to take of them (None = the mean)."""
    if metric.samples:
        return metric.samples, None
    match = _PERCENTILE.match(metric.name)
    if match:
        try:
            return run.metric(f"latency_ms{match.group(2) or ''}").samples, float(match.group(1))
        except KeyError:
            pass
    return (), None


def _winner(delta_or_bound: float, higher_better: bool) -> str:
    if delta_or_bound == 0:
        return TIE
    return CANDIDATE if (delta_or_bound > 0) == higher_better else BASELINE


def compare_metric(
    baseline_run: RunRecord,
    candidate_run: RunRecord,
    name: str,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> MetricComparison:
    base, cand = baseline_run.metric(name), candidate_run.metric(name)
    higher = higher_is_better(name)
    b_samples, percentile = _samples_for(baseline_run, base)
    c_samples, _ = _samples_for(candidate_run, cand)
    delta = cand.value - base.value
    # Per-query samples pair up only when both runs scored the same queries in the same order.
    paired = (
        not is_per_request(name)
        and baseline_run.suite == candidate_run.suite
        and baseline_run.conditions.get(FINGERPRINT) == candidate_run.conditions.get(FINGERPRINT)
        and len(b_samples) == len(c_samples)
    )
    low: float | None = None
    high: float | None = None
    if b_samples and c_samples:
        interval = bootstrap_difference(
            b_samples, c_samples, paired=paired, resamples=resamples, seed=seed, percentile=percentile
        )
        low, high = interval.low, interval.high
        winner = TIE if interval.contains_zero else _winner(interval.delta, higher)
    else:
        # Without observations there is no interval; the sign of the delta is all there is.
        paired = False
        winner = _winner(delta, higher)
    return MetricComparison(
        metric=name,
        unit=base.unit or cand.unit,
        baseline=base.value,
        candidate=cand.value,
        delta=delta,
        ci_low=low,
        ci_high=high,
        higher_is_better=higher,
        winner=winner,
        paired=paired,
        baseline_samples=len(b_samples),
        candidate_samples=len(c_samples),
    )


def compare_runs(
    baseline: RunRecord,
    candidate: RunRecord,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    """Every metric both runs measured, in the baseline's order. Overall winner: the side that wins
    at least one metric and loses none; `tie` when neither wins any; `mixed` when both do."""
    for run in (baseline, candidate):
        if run.status != RunStatus.SUCCEEDED:
            raise FailedPrecondition(f"run {run.run_id} is {run.status}; only succeeded runs can be compared")
    if baseline.suite != candidate.suite:
        raise FailedPrecondition(
            f"run {baseline.run_id} measured suite {baseline.suite!r} but {candidate.run_id} measured "
            f"{candidate.suite!r}; compare runs of the same suite"
        )
    shared = [m.name for m in baseline.metrics if any(c.name == m.name for c in candidate.metrics)]
    if not shared:
        raise FailedPrecondition(f"runs {baseline.run_id} and {candidate.run_id} share no metric")
    metrics = tuple(
        compare_metric(baseline, candidate, name, resamples=resamples, seed=seed) for name in shared
    )
    winners = {m.winner for m in metrics} - {TIE}
    overall = TIE if not winners else winners.pop() if len(winners) == 1 else MIXED
    return Comparison(baseline, candidate, metrics, overall, resamples, seed)
