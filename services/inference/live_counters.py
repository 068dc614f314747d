"""Cumulative request counters per deployment version, sent with every heartbeat so the registry can
serve live rates and percentiles (GetLiveMetrics): O(1) per request, constant memory per version."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.common.latency import BUCKET_COUNT, bucket_index
from modelyard.inference import metrics
from modelyard.inference.drift import DriftMonitor, SignalWindow

SeriesKey = tuple[str, str]  # (deployment, version)


class VersionSeries:
    """What one version served on this worker since `since_s` (uptime). Only the event loop writes
    it (the data plane) and reads it (the heartbeat), so it needs no lock."""

    __slots__ = (
        "agreement_items",
        "agreement_sum",
        "buckets",
        "dim",
        "drift",
        "errors",
        "items",
        "latency_sum_s",
        "model",
        "requests",
        "shadow_requests",
        "since_s",
    )

    def __init__(self, since_s: float) -> None:
        self.since_s = since_s
        self.model = ""  # the model id, for the drift gauge's labels (set with the first outputs)
        self.dim = 0  # the embedding dimension of its outputs (0: none), which reference it uses
        self.drift: dict[str, SignalWindow] = {}  # by signal (modelyard.common.drift)
        self.requests = 0
        self.items = 0
        self.errors: dict[str, int] = {}  # by gRPC status code name; at most one key per code
        self.buckets = [0] * BUCKET_COUNT
        self.latency_sum_s = 0.0
        self.shadow_requests = 0  # mirrored requests among `requests`
        self.agreement_sum = 0.0  # per-item agreement with the primary's answer, summed
        self.agreement_items = 0

    def succeeded(self, seconds: float, items: int) -> None:
        self.requests += 1
        self.items += items
        self.buckets[bucket_index(seconds)] += 1
        self.latency_sum_s += seconds

    def failed(self, code: str) -> None:
        self.requests += 1
        self.errors[code] = self.errors.get(code, 0) + 1

    def agreed(self, total: float, items: int) -> None:
        """A mirrored request's agreement with the primary: `total` over its `items`."""
        self.agreement_sum += total
        self.agreement_items += items


@dataclass(frozen=True)
class SeriesSnapshot:
    deployment: str
    version: str
    since_s: float
    requests: int
    items: int
    errors: dict[str, int]
    buckets: list[int]
    latency_sum_s: float
    # By signal: (the deployment's reference histogram, this series' cumulative counts since then).
    drift: dict[str, tuple[list[int], list[int]]]
    shadow_requests: int = 0
    agreement_sum: float = 0.0
    agreement_items: int = 0


@dataclass(frozen=True)
class CountersSnapshot:
    started_at_ns: int  # the counter epoch: a restarted process has another
    uptime_s: float
    series: list[SeriesSnapshot]


class LiveCounters:
    """Every version's series in this process. A series lives while its version is in the worker's
    status (loading, serving, draining) and is reported in every heartbeat until then; the snapshot
    after it left drops it, so a version loaded again later starts a new series (a new `since_s`),
    which the registry counts from zero instead of reading a drop."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.drift = drift or DriftMonitor()
        self._clock = clock
        self._start = clock()
        self.started_at_ns = wall_ns()
        self._series: dict[SeriesKey, VersionSeries] = {}

    def uptime_s(self) -> float:
        return self._clock() - self._start

    def series(self, deployment: str, version: str) -> VersionSeries:
        key = (deployment, version)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = VersionSeries(self.uptime_s())
        return found

    def observe_outputs(
        self,
        deployment: str,
        version: str,
        model: str,
        input_name: str,
        items: Sequence[bytes],
        rows: dict[str, Any],
    ) -> None:
        """A successful request's inputs and outputs, for the drift summaries."""
        series = self.series(deployment, version)
        series.model = model
        embedding = rows.get("embedding")
        if isinstance(embedding, np.ndarray) and embedding.ndim == 2:
            series.dim = embedding.shape[1]
        self.drift.observe(deployment, series.drift, input_name, items, rows)

    def snapshot(
        self, present: Collection[SeriesKey], serving: Collection[SeriesKey] = ()
    ) -> CountersSnapshot:
        """Every series as it stands, with an empty one for each `serving` version that has none yet
        (a version that gets no traffic shows as such); then those whose version is no longer
        `present` are dropped (this snapshot carried their last counts)."""
        for key in serving:
            self.series(*key)
        taken = CountersSnapshot(
            started_at_ns=self.started_at_ns,
            uptime_s=self.uptime_s(),
            series=[
                SeriesSnapshot(
                    deployment=key[0],
                    version=key[1],
                    since_s=s.since_s,
                    requests=s.requests,
                    items=s.items,
                    errors=dict(s.errors),
                    buckets=list(s.buckets),
                    latency_sum_s=s.latency_sum_s,
                    drift=self._drift_of(key, s),
                    shadow_requests=s.shadow_requests,
                    agreement_sum=s.agreement_sum,
                    agreement_items=s.agreement_items,
                )
                for key, s in sorted(self._series.items())
            ],
        )
        for key in [k for k in self._series if k not in present]:
            gone = self._series.pop(key)
            for signal in gone.drift:
                with contextlib.suppress(KeyError):
                    metrics.DRIFT_SCORE.remove(key[0], gone.model, key[1], signal)
        self.drift.forget({d for d, _ in present})
        return taken

    def _drift_of(self, key: SeriesKey, s: VersionSeries) -> dict[str, tuple[list[int], list[int]]]:
        """The series' counts beside its reference, and its own recent score on the gauge."""
        deployment, version = key
        for signal, score in self.drift.scores(deployment, s.dim, s.drift).items():
            metrics.DRIFT_SCORE.labels(deployment, s.model, version, signal).set(score)
        reference = self.drift.reference_of(deployment, s.dim)
        return {
            signal: (reference[signal], list(window.counts))
            for signal, window in s.drift.items()
            if signal in reference
        }
