"""Plain result types every suite returns: named metrics with the observations behind them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from modelyard.common.states import RunStatus

# Metric names are `<base>` or `<base>@<k>` with an optional `[c=<concurrency>]` level suffix.
_LOWER_IS_BETTER_PREFIXES = ("latency", "error_rate", "seconds")
_LEVEL_SUFFIX = re.compile(r"\[.*\]$")


def base_name(metric: str) -> str:
    """`latency_p95_ms[c=4]` -> `latency_p95_ms`; `recall@10` -> `recall`."""
    return _LEVEL_SUFFIX.sub("", metric).split("@", 1)[0]


def higher_is_better(metric: str) -> bool:
    """Quality scores and throughput improve upwards; latencies and error rates downwards."""
    return not base_name(metric).startswith(_LOWER_IS_BETTER_PREFIXES)


def is_per_request(metric: str) -> bool:
    """Per-request observations are independent draws; per-query ones pair up across runs."""
    return base_name(metric).startswith(("latency", "error_rate", "throughput"))


@dataclass(frozen=True)
class MetricResult:
    """One measured value, its unit, and the per-query or per-request observations behind it."""

    name: str
    value: float
    unit: str = ""
    samples: tuple[float, ...] = ()

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.name)


@dataclass(frozen=True)
class SuiteResult:
    """What one suite measured for one model version."""

    suite: str
    metrics: tuple[MetricResult, ...]
    conditions: dict[str, str] = field(default_factory=dict)

    def metric(self, name: str) -> MetricResult:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)


@dataclass(frozen=True)
class RunRecord:
    """A finished (or failed) benchmark run of one version, as stored in the performance store."""

    run_id: str
    suite: str
    model_id: str
    version: str
    metrics: tuple[MetricResult, ...]
    status: str = RunStatus.SUCCEEDED
    error: str = ""
    deployment: str = ""
    conditions: dict[str, str] = field(default_factory=dict)
    hardware: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    created_by: str = ""

    def metric(self, name: str) -> MetricResult:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)
