"""Rollout guards: parsing, which errors count against a version, and when a step waits, advances
or rolls back."""

from __future__ import annotations

import math

import pytest

from modelyard.common.errors import InvalidArgument
from modelyard.common.latency import BUCKET_COUNT, bucket_index
from modelyard.registry.domain import LiveFigures
from modelyard.registry.guards import Decision, error_rate, judge, parse_guard, parse_guards
from modelyard.registry.rollout_plans import check_steps


def figures(ok: int, *, p99_ms: float = 4.0, errors: dict[str, int] | None = None) -> LiveFigures:
    buckets = [0] * BUCKET_COUNT
    buckets[bucket_index(p99_ms / 1000)] = ok
    errors = errors or {}
    return LiveFigures(
        requests=ok + sum(errors.values()),
        errors=errors,
        buckets=buckets,
        p50_ms=p99_ms,
        p95_ms=p99_ms,
        p99_ms=p99_ms,
    )


def test_guards_are_normalised_and_unknown_or_malformed_ones_refused() -> None:
    assert parse_guard(" p99_ratio<=1.50 ").text == "p99_ratio <= 1.5"
    assert parse_guard("drift<=0.2").metric == "drift"
    for bad, message in [
        ("latency <= 2", "unknown guard metric"),
        ("error_rate =< 0.1", "invalid guard"),
        ("error_rate <= nan", "invalid guard"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            parse_guard(bad)
    with pytest.raises(InvalidArgument, match="twice"):
        parse_guards(["error_rate <= 0.1", "error_rate<=0.1"])


def test_bad_input_is_not_the_versions_fault() -> None:
    assert error_rate(figures(90, errors={"INVALID_ARGUMENT": 50, "UNAVAILABLE": 10})) == pytest.approx(0.1)
    assert math.isnan(error_rate(figures(0, errors={"INVALID_ARGUMENT": 5})))


def test_a_step_waits_for_evidence_and_time_then_advances() -> None:
    guards = parse_guards(["error_rate <= 0.01", "p99_ratio <= 1.5"])
    base, good = figures(400), figures(100)
    few = judge(guards, figures(10), base, min_requests=50, step_elapsed_s=99, step_duration_s=10)
    assert few.decision is Decision.WAIT and not any(r.judged for r in few.readings)
    early = judge(guards, good, base, min_requests=50, step_elapsed_s=3, step_duration_s=10)
    assert early.decision is Decision.WAIT and all(r.judged and r.holds for r in early.readings)
    done = judge(guards, good, base, min_requests=50, step_elapsed_s=10, step_duration_s=10)
    assert done.decision is Decision.ADVANCE
    # A ratio needs the baseline's evidence too: without it the step cannot advance.
    lonely = judge(guards, good, figures(5), min_requests=50, step_elapsed_s=10, step_duration_s=10)
    assert lonely.decision is Decision.WAIT and [r.judged for r in lonely.readings] == [True, False]


def test_a_failed_guard_rolls_back_before_the_steps_time_is_up() -> None:
    guards = parse_guards(["error_rate <= 0.01", "p99_ratio <= 1.5"])
    slow = judge(
        guards, figures(100, p99_ms=40), figures(400), min_requests=50, step_elapsed_s=1, step_duration_s=60
    )
    assert slow.decision is Decision.ROLL_BACK and slow.failed is not None
    assert slow.failed.metric == "p99_ratio" and slow.failed.value == pytest.approx(10.0)
    failing = judge(
        guards,
        figures(90, errors={"INTERNAL": 10}),
        figures(400),
        min_requests=50,
        step_elapsed_s=1,
        step_duration_s=60,
    )
    assert failing.failed is not None and failing.failed.metric == "error_rate"


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "needs steps"),
        ([10, 10, 100], "increase"),
        ([50, 20, 100], "increase"),
        ([10, 90], "end at 100"),
        ([0, 100], "1..100"),
        ([50, 101], "1..100"),
    ],
)
def test_steps_increase_and_end_at_100(steps: list[int], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_steps(steps)
    assert check_steps([5, 25, 50, 100]) == [5, 25, 50, 100]


def test_a_percentile_waits_until_an_observation_lies_above_it() -> None:
    guards = parse_guards(["p99_ms <= 10", "p95_ratio <= 1.5"])
    few = judge(
        guards, figures(60, p99_ms=40), figures(400), min_requests=50, step_elapsed_s=1, step_duration_s=60
    )
    assert [r.judged for r in few.readings] == [False, True], "a p99 of 60 requests is their maximum"
    assert few.decision is Decision.ROLL_BACK and few.failed is not None and few.failed.metric == "p95_ratio"


def test_drift_is_judged_on_enough_items_only() -> None:
    guards = parse_guards(["drift <= 0.2"])
    few = figures(400)
    few.drift, few.drift_live = {"output_cosine": 0.3}, {"output_cosine": [100] + [0] * 19}
    assert (
        not judge(guards, few, figures(400), min_requests=50, step_elapsed_s=1, step_duration_s=60)
        .readings[0]
        .judged
    )
    many = figures(400)
    many.drift = {"output_cosine": 0.3, "input_size": 0.05}
    many.drift_live = {"output_cosine": [300] + [0] * 19, "input_size": [300] + [0] * 19}
    verdict = judge(guards, many, figures(400), min_requests=50, step_elapsed_s=1, step_duration_s=60)
    assert verdict.decision is Decision.ROLL_BACK and verdict.failed is not None
    assert verdict.failed.value == pytest.approx(0.3), "the largest signal's score"
