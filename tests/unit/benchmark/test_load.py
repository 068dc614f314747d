"""Load measurement: validation, request counts, real concurrency, durations and error counting."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.benchmark.load import LoadPlan, measure_load
from modelyard.common.errors import InvalidArgument


class FakeEndpoint:
    """An async call that sleeps, tracks how many calls overlap, and fails on chosen call numbers."""

    def __init__(self, delay_s: float = 0.002, fail_every: int = 0) -> None:
        self.delay_s = delay_s
        self.fail_every = fail_every
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self) -> str:
        self.calls += 1
        number = self.calls
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail_every and number % self.fail_every == 0:
                raise ConnectionError(f"worker dropped call {number}")
            return "ok"
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("levels", [(0,), (-1,), (4, 0), ()])
def test_concurrency_zero_or_negative_is_refused(levels: tuple[int, ...]) -> None:
    with pytest.raises(InvalidArgument, match="concurrency"):
        LoadPlan(levels, requests=10)


def test_plan_needs_a_stop_condition() -> None:
    with pytest.raises(InvalidArgument, match="request count or a duration"):
        LoadPlan((1,))
    with pytest.raises(InvalidArgument):
        LoadPlan((1,), requests=-5)


async def test_each_level_sends_exactly_the_requested_count_at_its_concurrency() -> None:
    endpoint = FakeEndpoint()
    result = await measure_load(endpoint, LoadPlan((1, 4), requests=40, warmup_requests=3))
    assert [level.requests for level in result.levels] == [40, 40]
    assert endpoint.calls == 83  # warm-up requests are sent but not measured
    assert endpoint.max_in_flight == 4
    level = result.levels[1]
    assert len(level.latencies_ms) == 40
    assert level.error_rate == 0.0
    assert level.percentile_ms(50) <= level.percentile_ms(90) <= level.percentile_ms(99)
    assert min(level.latencies_ms) >= 2.0  # every request slept 2 ms


async def test_more_concurrency_gives_more_throughput_on_a_latency_bound_endpoint() -> None:
    result = await measure_load(FakeEndpoint(delay_s=0.01), LoadPlan((1, 8), requests=48))
    single, eight = result.levels
    assert eight.throughput_rps > 2 * single.throughput_rps


async def test_errors_are_counted_not_raised_and_the_first_message_is_kept() -> None:
    endpoint = FakeEndpoint(fail_every=4)
    progress: list[str] = []
    result = await measure_load(
        endpoint, LoadPlan((2,), requests=20), progress=lambda f, message: progress.append(message)
    )
    level = result.levels[0]
    assert level.requests == 20
    assert level.errors == 5
    assert level.error_rate == 0.25
    assert len(level.latencies_ms) == 15
    assert level.first_error == "ConnectionError: worker dropped call 4"
    assert result.first_error == level.first_error
    assert "5 errors" in progress[-1]


async def test_duration_bounds_a_level_without_a_request_count() -> None:
    result = await measure_load(FakeEndpoint(delay_s=0.005), LoadPlan((2,), duration_s=0.2))
    level = result.levels[0]
    assert 0 < level.requests
    assert level.elapsed_s >= 0.2
    # Two clients sleeping 5 ms for 0.2 s cannot complete more than ~80 requests.
    assert level.requests <= 2 * (0.2 / 0.005) + 2


async def test_metrics_name_their_level_and_carry_per_request_samples() -> None:
    result = await measure_load(FakeEndpoint(fail_every=5), LoadPlan((3,), requests=10))
    metrics = {m.name: m for m in result.metrics()}
    assert set(metrics) == {
        "latency_ms[c=3]",
        "latency_p50_ms[c=3]",
        "latency_p90_ms[c=3]",
        "latency_p95_ms[c=3]",
        "latency_p99_ms[c=3]",
        "throughput_rps[c=3]",
        "error_rate[c=3]",
    }
    assert len(metrics["latency_ms[c=3]"].samples) == 8
    assert metrics["error_rate[c=3]"].samples.count(1.0) == 2
    assert not metrics["latency_ms[c=3]"].higher_is_better
    assert metrics["throughput_rps[c=3]"].higher_is_better


async def test_cancellation_is_not_swallowed_as_an_error() -> None:
    async def hangs() -> None:
        await asyncio.sleep(10)

    task = asyncio.ensure_future(measure_load(hangs, LoadPlan((2,), requests=4)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
