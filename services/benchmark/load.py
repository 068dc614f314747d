"""Load measurement in plain asyncio: warm-up, then each concurrency level for N requests or a duration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from modelyard.benchmark.results import MetricResult
from modelyard.benchmark.retrieval import Progress
from modelyard.common.errors import InvalidArgument

PERCENTILES = (50, 90, 95, 99)


def _no_progress(fraction: float, message: str) -> None:
    return None


@dataclass(frozen=True)
class LoadPlan:
    """Concurrency levels to measure; each stops after `requests` requests or `duration_s`, first reached."""

    concurrency: tuple[int, ...]
    requests: int = 0
    duration_s: float = 0.0
    warmup_requests: int = 0

    def __post_init__(self) -> None:
        if not self.concurrency:
            raise InvalidArgument("load plan needs at least one concurrency level")
        bad = [c for c in self.concurrency if c <= 0]
        if bad:
            raise InvalidArgument(f"concurrency must be > 0, got {bad[0]}")
        if self.requests < 0 or self.duration_s < 0 or self.warmup_requests < 0:
            raise InvalidArgument("requests, duration_s and warmup_requests must not be negative")
        if self.requests == 0 and self.duration_s == 0:
            raise InvalidArgument("load plan needs a request count or a duration (or both)")


@dataclass
class LevelResult:
    """Every request at one concurrency level: latencies of successes, outcome of each request."""

    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: list[float] = field(default_factory=list)  # 1.0 = failed, in issue order
    elapsed_s: float = 0.0
    first_error: str = ""

    @property
    def requests(self) -> int:
        return len(self.outcomes)

    @property
    def errors(self) -> int:
        return int(sum(self.outcomes))

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def throughput_rps(self) -> float:
        """Successful requests per second of wall time."""
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def metrics(self) -> list[MetricResult]:
        level = f"[c={self.concurrency}]"
        latencies = tuple(self.latencies_ms)
        mean = float(np.mean(latencies)) if latencies else float("nan")
        metrics = [MetricResult(f"latency_ms{level}", mean, "ms", latencies)]
        metrics += [MetricResult(f"latency_p{q}_ms{level}", self.percentile_ms(q), "ms") for q in PERCENTILES]
        metrics.append(MetricResult(f"throughput_rps{level}", self.throughput_rps, "requests/s"))
        metrics.append(MetricResult(f"error_rate{level}", self.error_rate, "", tuple(self.outcomes)))
        return metrics


@dataclass
class LoadResult:
    levels: list[LevelResult]
    warmup_errors: int = 0

    def metrics(self) -> tuple[MetricResult, ...]:
        return tuple(m for level in self.levels for m in level.metrics())

    @property
    def first_error(self) -> str:
        return next((level.first_error for level in self.levels if level.first_error), "")


async def measure_load(
    call: Callable[[], Awaitable[object]],
    plan: LoadPlan,
    *,
    progress: Progress = _no_progress,
) -> LoadResult:
    """Run `call` under `plan`. Failures are counted, never raised; the first message is kept."""
    warmup = LevelResult(concurrency=1)
    for _ in range(plan.warmup_requests):
        await _one(call, warmup)
    progress(0.0, f"warm-up done ({plan.warmup_requests} requests, {warmup.errors} failed)")
    levels: list[LevelResult] = []
    for index, concurrency in enumerate(plan.concurrency):
        level = await _measure_level(call, concurrency, plan)
        levels.append(level)
        progress(
            (index + 1) / len(plan.concurrency),
            f"concurrency {concurrency}: {level.requests} requests, p50 {level.percentile_ms(50):.1f} ms, "
            f"{level.throughput_rps:.1f} req/s, {level.errors} errors",
        )
    return LoadResult(levels, warmup_errors=warmup.errors)


async def _one(call: Callable[[], Awaitable[object]], level: LevelResult) -> None:
    started = time.perf_counter()
    try:
        await call()
    except Exception as exc:  # a failed request is a measurement, not a crash
        level.outcomes.append(1.0)
        if not level.first_error:
            level.first_error = f"{type(exc).__name__}: {exc}"
        return
    level.latencies_ms.append((time.perf_counter() - started) * 1000)
    level.outcomes.append(0.0)


async def _measure_level(
    call: Callable[[], Awaitable[object]], concurrency: int, plan: LoadPlan
) -> LevelResult:
    level = LevelResult(concurrency=concurrency)
    issued = 0
    started = time.perf_counter()
    deadline = started + plan.duration_s if plan.duration_s > 0 else float("inf")

    async def client() -> None:
        nonlocal issued
        while (plan.requests == 0 or issued < plan.requests) and time.perf_counter() < deadline:
            issued += 1
            await _one(call, level)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    level.elapsed_s = time.perf_counter() - started
    return level
