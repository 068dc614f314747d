"""Rollout guards: what a step of a rollout plan must show on the live figures before the canary's
weight moves on, and the verdict over one window (pure functions: `rollout_plans` reads the figures
and acts on the verdict)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from modelyard.common.errors import InvalidArgument
from modelyard.registry.domain import GuardReading, LiveFigures
from modelyard.registry.validation import Gate, parse_comparison

# The caller's mistake, not the version's: never counted against a candidate.
NOT_THE_VERSIONS_FAULT = frozenset({"INVALID_ARGUMENT"})


def served(f: LiveFigures) -> int:
    """Requests the version is answerable for: all but those refused for the caller's input."""
    return f.requests - sum(n for code, n in f.errors.items() if code in NOT_THE_VERSIONS_FAULT)


def error_rate(f: LiveFigures) -> float:
    """Failed requests (other than bad input) over the requests the version is answerable for."""
    failed = sum(n for code, n in f.errors.items() if code not in NOT_THE_VERSIONS_FAULT)
    total = served(f)
    return failed / total if total > 0 else math.nan


def _percentile(name: str) -> Callable[[LiveFigures], float]:
    def read(f: LiveFigures) -> float:
        return float(getattr(f, name)) if sum(f.buckets) > 0 else math.nan

    return read


# Items of a signal a window needs before its drift judges a rollout step: the score of a sample
# of n items against a 200-item reference is noisy by about sqrt((B - 1) / (8 ln 2) * (1/n + 1/200))
# over B occupied bins, 0.12 at n = 100 but 0.09 at 300 (an int8 copy of MiniLM scored 0.21 over
# 104 items once, 0.09-0.11 over more).
DRIFT_GUARD_ITEMS = 300


def drift(f: LiveFigures) -> float:
    """The largest drift score over the signals with DRIFT_GUARD_ITEMS items in the window (NaN
    when none has them yet)."""
    scores = [
        score for signal, score in f.drift.items() if sum(f.drift_live.get(signal, ())) >= DRIFT_GUARD_ITEMS
    ]
    return max(scores, default=math.nan)


def agreement(f: LiveFigures) -> float:
    """Mean agreement of the candidate's mirrored answers with the primary's (NaN without any)."""
    return f.agreement if f.agreement_items > 0 else math.nan


def _ratio(read: Callable[[LiveFigures], float]) -> Callable[[LiveFigures, LiveFigures], float]:
    def ratio(candidate: LiveFigures, baseline: LiveFigures) -> float:
        below = read(baseline)
        return read(candidate) / below if below > 0 else math.nan

    return ratio


def _delta(candidate: LiveFigures, baseline: LiveFigures) -> float:
    return error_rate(candidate) - error_rate(baseline)


# Metrics of the candidate alone, and metrics against the baseline over the same window.
CANDIDATE_METRICS: dict[str, Callable[[LiveFigures], float]] = {
    "error_rate": error_rate,
    "p50_ms": _percentile("p50_ms"),
    "p95_ms": _percentile("p95_ms"),
    "p99_ms": _percentile("p99_ms"),
    "drift": drift,
    "agreement": agreement,
}
RELATIVE_METRICS: dict[str, Callable[[LiveFigures, LiveFigures], float]] = {
    "p50_ratio": _ratio(_percentile("p50_ms")),
    "p95_ratio": _ratio(_percentile("p95_ms")),
    "p99_ratio": _ratio(_percentile("p99_ms")),
    "error_rate_delta": _delta,
}
METRICS = (*CANDIDATE_METRICS, *RELATIVE_METRICS)
# Judged in a plan's shadow step only: later steps send no mirrored copies to compare.
SHADOW_ONLY_METRICS = frozenset({"agreement"})
# Successful requests a percentile needs on each side before it is judged: 1 / (1 - q), so that at
# least one observation lies above it.
TAIL_SAMPLES = {"p50_ms": 2, "p95_ms": 20, "p99_ms": 100, "p50_ratio": 2, "p95_ratio": 20, "p99_ratio": 100}
MAX_GUARDS = 16


def parse_guard(text: str) -> Gate:
    guard = parse_comparison(text, what="guard", example="p99_ratio <= 1.5")
    if guard.metric not in METRICS:
        raise InvalidArgument(
            f"unknown guard metric {guard.metric!r} in {text!r}; known: {', '.join(METRICS)}"
        )
    return Gate(f"{guard.metric} {guard.op} {guard.threshold:g}", guard.metric, guard.op, guard.threshold)


def parse_guards(texts: Sequence[str]) -> list[Gate]:
    if len(texts) > MAX_GUARDS:
        raise InvalidArgument(f"{len(texts)} guards are more than {MAX_GUARDS}")
    guards = [parse_guard(t) for t in texts]
    seen: set[str] = set()
    for guard in guards:
        if guard.text in seen:
            raise InvalidArgument(f"guard `{guard.text}` is given twice")
        seen.add(guard.text)
    return guards


class Decision(StrEnum):
    WAIT = "wait"  # not enough evidence yet, or the step's time is not up
    ADVANCE = "advance"  # every guard held over the step's whole duration
    ROLL_BACK = "roll_back"  # a guard failed


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    readings: list[GuardReading]
    failed: GuardReading | None = None


def judge(
    guards: Sequence[Gate],
    candidate: LiveFigures,
    baseline: LiveFigures,
    *,
    min_requests: int,
    step_elapsed_s: float,
    step_duration_s: float,
) -> Verdict:
    """A guard is judged once the candidate served `min_requests` in the window (a relative one also
    needs `min_requests` from the baseline, so a ratio never rests on a handful of requests), and a
    percentile once each side it reads has `TAIL_SAMPLES` successes (a p99 of 30 requests is their
    maximum: one cold first request would decide it); the first judged guard that fails rolls back at once, whatever the step's time. The step advances
    when its time is up and every guard was judged and held."""
    enough = served(candidate) >= min_requests
    enough_baseline = enough and served(baseline) >= min_requests
    readings = []
    for guard in guards:
        needed = TAIL_SAMPLES.get(guard.metric, 0)
        if guard.metric in CANDIDATE_METRICS:
            ready = enough and sum(candidate.buckets) >= needed
            value = CANDIDATE_METRICS[guard.metric](candidate) if ready else math.nan
        else:
            ready = enough_baseline and min(sum(candidate.buckets), sum(baseline.buckets)) >= needed
            value = RELATIVE_METRICS[guard.metric](candidate, baseline) if ready else math.nan
        judged = not math.isnan(value)
        readings.append(
            GuardReading(
                guard=guard.text,
                metric=guard.metric,
                op=guard.op,
                threshold=guard.threshold,
                value=value,
                judged=judged,
                holds=judged and guard.passes(value),
            )
        )
    failed = next((r for r in readings if r.judged and not r.holds), None)
    if failed is not None:
        return Verdict(Decision.ROLL_BACK, readings, failed)
    if enough and step_elapsed_s >= step_duration_s and all(r.judged for r in readings):
        return Verdict(Decision.ADVANCE, readings)
    return Verdict(Decision.WAIT, readings)
