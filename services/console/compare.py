"""Compare two stored benchmark runs, as `modelyard bench compare` does (the benchmark service's
Compare): the metric table with deltas, 95% intervals and the winner, and SVG charts of quality
(with each run's 95% interval as whiskers), latency percentiles and throughput."""

from __future__ import annotations

import asyncio
import re

import numpy as np
from starlette.responses import Response

from modelyard.api import benchmark_pb2 as bpb
from modelyard.api import registry_pb2 as rpb
from modelyard.benchmark.results import base_name, is_per_request
from modelyard.client import ModelyardError
from modelyard.console.charts import Bar, Group, bar_chart
from modelyard.console.present import history_link, when
from modelyard.console.web import CallFailed, Page, page

RUNS_LISTED = 100
_PERCENTILE = re.compile(r"^latency_p(\d+)_ms$")
_RESAMPLES = 1000
_SEED = 20240101


def mean_interval(samples: list[float], value: float) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of the mean of `samples`, when `value` is that mean (a
    quality score averaged over queries); None for values the samples do not average to."""
    data = np.asarray(samples, dtype=np.float64)
    if data.size < 2 or not np.isclose(data.mean(), value, rtol=1e-6, atol=1e-9):
        return None
    rng = np.random.default_rng(_SEED)
    means = data[rng.integers(0, data.size, size=(_RESAMPLES, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _run_label(run: rpb.BenchmarkRun) -> str:
    run_id = run.run_id if len(run.run_id) <= 24 else run.run_id[:12] + "…"
    parts = [f"{run.model_id} {run.version}", run.suite, when(run.started_at), run_id]
    return " · ".join(p for p in parts if p)


def _charts(baseline: rpb.BenchmarkRun, candidate: rpb.BenchmarkRun) -> list[str]:
    sides = {
        "baseline": {m.name: m for m in baseline.metrics},
        "candidate": {m.name: m for m in candidate.metrics},
    }
    names = [m.name for m in baseline.metrics if m.name in sides["candidate"]]
    quality, latency, throughput = [], [], []
    for name in names:
        pair = (sides["baseline"][name], sides["candidate"][name])
        bars = []
        for side, metric in zip(("baseline", "candidate"), pair, strict=True):
            interval = None if is_per_request(name) else mean_interval(list(metric.samples), metric.value)
            bars.append(Bar(side, metric.value, *(interval or (None, None))))
        group = Group(name, pair[0].unit, bars)
        if _PERCENTILE.match(base_name(name)):
            latency.append(group)
        elif base_name(name).startswith("throughput"):
            throughput.append(group)
        elif not is_per_request(name):
            quality.append(group)
    charts = [
        bar_chart("chart-quality", "Quality (95% interval of each run)", quality, fixed_top=1.0)
        if quality and all(b.value <= 1.0 for g in quality for b in g.bars)
        else bar_chart("chart-quality", "Quality (95% interval of each run)", quality),
        bar_chart("chart-latency", "Latency percentiles (ms)", latency),
        bar_chart("chart-throughput", "Throughput (requests/s)", throughput),
    ]
    return [c for c in charts if c]


@page()
async def compare(current: Page) -> Response:
    baseline_id, candidate_id = current.query("baseline"), current.query("candidate")
    try:
        bench = await current.benchmark()
        listed = await bench.list_runs(bpb.ListRunsRequest(page_size=RUNS_LISTED))
        result = baseline = candidate = None
        if baseline_id and candidate_id:
            result, baseline, candidate = await asyncio.gather(
                bench.compare(
                    bpb.CompareRequest(baseline_run_id=baseline_id, candidate_run_id=candidate_id),
                    timeout=max(current.console.settings.call_timeout_s, 30.0),
                ),
                bench.get_run(bpb.GetRunRequest(run_id=baseline_id)),
                bench.get_run(bpb.GetRunRequest(run_id=candidate_id)),
            )
    except ModelyardError as error:
        raise CallFailed(error, "benchmark service") from None
    charts: list[str] = []
    if baseline is not None and candidate is not None:
        # Resampling is CPU work: off the event loop, like every other blocking step.
        charts = await asyncio.to_thread(_charts, baseline, candidate)
    return current.render(
        "compare.html",
        runs=[(r.run_id, _run_label(r)) for r in listed.runs if r.status == rpb.RUN_STATUS_SUCCEEDED],
        baseline_id=baseline_id,
        candidate_id=candidate_id,
        result=result,
        baseline=baseline,
        candidate=candidate,
        baseline_label=_run_label(baseline) if baseline else "",
        candidate_label=_run_label(candidate) if candidate else "",
        charts=charts,
        link=history_link,
        history_link=history_link(baseline.model_id, "") if baseline is not None else "/compare/history",
    )
