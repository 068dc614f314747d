"""Live evidence: requests/s, errors by code and latency percentiles per deployment version and
worker over a recent window, from the cumulative counters workers send with every heartbeat (kept
in each worker's row by `repository`, so every replica answers for the whole fleet)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from modelyard.common.drift import MIN_DRIFT_ITEMS, js_distance
from modelyard.common.errors import InvalidArgument
from modelyard.common.latency import BUCKET_COUNT, LATENCY_BUCKETS_S
from modelyard.registry import repository as repo
from modelyard.registry.db import Database
from modelyard.registry.deployments import find_deployment
from modelyard.registry.domain import (
    LiveCounters,
    LiveFigures,
    LiveMetrics,
    LiveWindow,
    SeriesCounters,
    VersionLiveFigures,
    WorkerLiveFigures,
)

DEFAULT_WINDOW_S = 60.0
QUANTILES = (0.5, 0.95, 0.99)


class LiveEvidence:
    """GetLiveMetrics. Only workers heartbeating within `heartbeat_ttl_s` count: a silent worker's
    last figures would describe traffic it no longer serves."""

    def __init__(self, db: Database, *, heartbeat_ttl_s: float, live_window_s: float) -> None:
        self.db = db
        self.heartbeat_ttl = dt.timedelta(seconds=heartbeat_ttl_s)
        self.live_window_s = live_window_s

    async def live_metrics(self, deployment: str, *, window_s: float, covering: bool = False) -> LiveMetrics:
        """`covering`: a window of at least `window_s` (see `repository.live_windows`); the RPC's
        windows are at most `window_s`."""
        if not math.isfinite(window_s) or window_s < 0 or window_s > self.live_window_s:
            raise InvalidArgument(
                f"window_s is {window_s:g}; give 0 (= {self.default_window_s:g} s) or up to "
                f"{self.live_window_s:g} s, the window this registry keeps (live_window_s)"
            )
        window = window_s or self.default_window_s
        async with self.db.connection() as conn:
            if deployment:
                await find_deployment(conn, deployment)  # NotFound names it
            windows = await repo.live_windows(
                conn,
                live_within=self.heartbeat_ttl,
                window_s=window,
                deployment=deployment,
                covering=covering,
            )
        at = windows[0].now if windows else dt.datetime.now(dt.UTC)
        return live_metrics(windows, window_s=window, deployment=deployment, at=at)

    @property
    def default_window_s(self) -> float:
        return min(DEFAULT_WINDOW_S, self.live_window_s)


def quantile_from_buckets(bounds: Sequence[float], counts: Sequence[int], q: float) -> float:
    """The q-quantile of observations counted per bucket (`counts[i]` in (bounds[i-1], bounds[i]],
    the first bucket from 0, the last above the largest bound), as Prometheus' histogram_quantile:
    the rank q * total is found in its bucket and interpolated linearly between the bucket's bounds,
    i.e. the observations are taken as spread evenly inside it. A rank in the bucket above the
    largest bound answers that bound (nothing is known above it). 0 without observations."""
    total = sum(counts)
    if total <= 0:
        return 0.0
    rank = q * total
    below = 0
    for i, count in enumerate(counts):
        if count > 0 and below + count >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = float(bounds[i - 1]) if i > 0 else 0.0
            return lower + (float(bounds[i]) - lower) * (rank - below) / count
        below += count
    return float(bounds[-1])


def live_metrics(
    windows: Sequence[LiveWindow], *, window_s: float, deployment: str = "", at: dt.datetime
) -> LiveMetrics:
    """Per version (of `deployment`, or all): each worker's figures and their sum."""
    per_version: dict[tuple[str, str], list[WorkerLiveFigures]] = {}
    for window in windows:
        for series in window.newest.series:
            if deployment and series.deployment != deployment:
                continue
            figures = worker_figures(window, series, window_s=window_s)
            per_version.setdefault((series.deployment, series.version), []).append(
                WorkerLiveFigures(window.worker_id, figures)
            )
    return LiveMetrics(
        versions=[
            VersionLiveFigures(deployment=d, version=v, total=total_figures(workers), workers=workers)
            for (d, v), workers in sorted(per_version.items())
        ],
        window_s=window_s,
        bounds_s=LATENCY_BUCKETS_S,
        at=at,
    )


def worker_figures(window: LiveWindow, series: SeriesCounters, *, window_s: float) -> LiveFigures:
    """One worker's figures for one series: newest counters minus those at the window's start.

    The start is the baseline snapshot; but where the worker's process (its counter epoch) started
    inside the window, it is that start, where every counter was 0, so a restart reads as the new
    process's real rate, never as a drop; and where the series began after the baseline (a version
    loaded since), it is the series' start, also from 0. Times are the worker's own uptime, so
    network delay and clock skew do not enter a rate."""
    newest = window.newest
    window_start_at = window.now - dt.timedelta(seconds=window_s)
    epoch_started_at = window.newest_at - dt.timedelta(seconds=newest.uptime_s)
    baseline: LiveCounters | None = window.baseline
    if epoch_started_at >= window_start_at:
        baseline = LiveCounters(started_at_ns=newest.started_at_ns, uptime_s=0.0)
    if baseline is None:
        return LiveFigures(samples=window.samples, window_end=window.newest_at, buckets=[0] * BUCKET_COUNT)
    base = next(
        (
            s
            for s in baseline.series
            if (s.deployment, s.version, s.since_s) == (series.deployment, series.version, series.since_s)
        ),
        None,
    )
    if base is not None and _not_behind(series, base):
        start_s = baseline.uptime_s
    else:
        # The series began after the baseline (or restarted: a counter went back): all of it is new.
        base, start_s = None, max(baseline.uptime_s, series.since_s)
    span = max(0.0, newest.uptime_s - start_s)
    requests = series.requests - (base.requests if base else 0)
    items = series.items - (base.items if base else 0)
    buckets = [n - (base.buckets[i] if base else 0) for i, n in enumerate(series.buckets)]
    errors = {
        code: n - (base.errors.get(code, 0) if base else 0)
        for code, n in sorted(series.errors.items())
        if n - (base.errors.get(code, 0) if base else 0) > 0
    }
    figures = LiveFigures(
        requests=requests,
        items=items,
        errors=errors,
        buckets=buckets,
        samples=window.samples,
        window_s=span,
        window_start=window.newest_at - dt.timedelta(seconds=span),
        window_end=window.newest_at,
        latency_sum_s=series.latency_sum_s - (base.latency_sum_s if base else 0.0),
        shadow_requests=series.shadow_requests - (base.shadow_requests if base else 0),
        agreement_sum=series.agreement_sum - (base.agreement_sum if base else 0.0),
        agreement_items=series.agreement_items - (base.agreement_items if base else 0),
    )
    for signal, (reference, live) in series.drift.items():
        before = base.drift.get(signal) if base else None
        figures.drift_reference[signal] = list(reference)
        figures.drift_live[signal] = (
            [n - b for n, b in zip(live, before[1], strict=True)] if before else list(live)
        )
    figures.requests_per_s = requests / span if span > 0 else 0.0
    figures.items_per_s = items / span if span > 0 else 0.0
    _finish(figures)
    return figures


def total_figures(workers: Sequence[WorkerLiveFigures]) -> LiveFigures:
    """The fleet's figures for one version: rates and counts add up (each worker's rate over its own
    window), percentiles come from the summed bucket counts, the window is the longest one."""
    total = LiveFigures(buckets=[0] * BUCKET_COUNT)
    for worker in workers:
        f = worker.figures
        total.requests_per_s += f.requests_per_s
        total.items_per_s += f.items_per_s
        total.requests += f.requests
        total.items += f.items
        for code, n in f.errors.items():
            total.errors[code] = total.errors.get(code, 0) + n
        total.buckets = [a + b for a, b in zip(total.buckets, f.buckets, strict=True)]
        for signal, reference in f.drift_reference.items():
            total.drift_reference[signal] = _add(total.drift_reference.get(signal), reference)
            total.drift_live[signal] = _add(total.drift_live.get(signal), f.drift_live[signal])
        total.samples += f.samples
        total.latency_sum_s += f.latency_sum_s
        total.shadow_requests += f.shadow_requests
        total.agreement_sum += f.agreement_sum
        total.agreement_items += f.agreement_items
        total.window_s = max(total.window_s, f.window_s)
        if f.window_start is not None and (total.window_start is None or f.window_start < total.window_start):
            total.window_start = f.window_start
        if f.window_end is not None and (total.window_end is None or f.window_end > total.window_end):
            total.window_end = f.window_end
    total.errors = dict(sorted(total.errors.items()))
    _finish(total)
    return total


def _finish(figures: LiveFigures) -> None:
    """Error rate, percentiles and mean from the counts already in `figures`."""
    failed = sum(figures.errors.values())
    figures.error_rate = failed / figures.requests if figures.requests > 0 else 0.0
    successes = sum(figures.buckets)
    figures.p50_ms, figures.p95_ms, figures.p99_ms = (
        quantile_from_buckets(LATENCY_BUCKETS_S, figures.buckets, q) * 1000 for q in QUANTILES
    )
    figures.mean_ms = figures.latency_sum_s / successes * 1000 if successes > 0 else 0.0
    figures.agreement = (
        figures.agreement_sum / figures.agreement_items if figures.agreement_items > 0 else 0.0
    )
    figures.drift = {
        signal: js_distance(figures.drift_reference[signal], live)
        for signal, live in sorted(figures.drift_live.items())
        if sum(live) >= MIN_DRIFT_ITEMS and sum(figures.drift_reference.get(signal, ())) > 0
    }


def _add(total: list[int] | None, counts: Sequence[int]) -> list[int]:
    return list(counts) if total is None else [a + b for a, b in zip(total, counts, strict=True)]


def _not_behind(newest: SeriesCounters, base: SeriesCounters) -> bool:
    """No counter of `newest` is below `base` (cumulative counters of one series only grow)."""
    return (
        newest.requests >= base.requests
        and newest.items >= base.items
        and newest.shadow_requests >= base.shadow_requests
        and newest.agreement_items >= base.agreement_items
        and all(n >= b for n, b in zip(newest.buckets, base.buckets, strict=True))
        and all(newest.errors.get(code, 0) >= n for code, n in base.errors.items())
        and all(
            signal in newest.drift and all(n >= b for n, b in zip(newest.drift[signal][1], live, strict=True))
            for signal, (_, live) in base.drift.items()
        )
    )
