"""The Compare page's history chart: one metric of one model across its stored succeeded runs
(the registry's ListBenchmarkRuns, newest first, paged through and bounded), in the order they were
recorded, as a server-rendered line chart with one line per suite. Not the audit History page."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from modelyard.api import registry_pb2 as pb
from modelyard.client import RegistryClient
from modelyard.console.charts import Point, line_chart
from modelyard.console.present import headline_metrics, history_link, when
from modelyard.console.web import Page, page

POINTS = 200  # the newest runs carrying the metric that the chart plots
SCANNED = 1000  # runs read at most per page view, so a model with many other runs stays quick
_PAGE = 200
MODELS_LISTED = 200


@dataclass(frozen=True)
class HistoryPoint:
    """One stored run's value of the chosen metric."""

    run_id: str
    version: str
    suite: str
    value: float
    unit: str
    at: str  # started (else finished), UTC
    previous_run_id: str  # the previous plotted run of the same suite, for a Compare link

    @property
    def value_repr(self) -> str:
        return repr(self.value)


async def succeeded_runs(
    registry: RegistryClient, model_id: str, suite: str, metric: str
) -> list[pb.BenchmarkRun]:
    """The model's succeeded runs, newest first: pages until POINTS of them carry `metric` (any
    metric when it is empty), SCANNED were read, or the runs end."""
    runs: list[pb.BenchmarkRun] = []
    token, carrying = "", 0
    while True:
        listed = await registry.list_benchmark_runs(
            pb.ListBenchmarkRunsRequest(
                model_id=model_id,
                suite=suite,
                status=pb.RUN_STATUS_SUCCEEDED,
                page_size=min(_PAGE, SCANNED - len(runs)),
                page_token=token,
            )
        )
        runs += listed.runs
        carrying += sum(1 for r in listed.runs if not metric or any(m.name == metric for m in r.metrics))
        token = listed.next_page_token
        if not token or carrying >= POINTS or len(runs) >= SCANNED:
            return runs


def history_points(runs: list[pb.BenchmarkRun], metric: str) -> list[HistoryPoint]:
    """The newest POINTS runs that carry `metric`, oldest first (`runs` come newest first)."""
    carrying = [(r, m) for r in runs for m in r.metrics if m.name == metric][:POINTS]
    points: list[HistoryPoint] = []
    last_of_suite: dict[str, str] = {}
    for run, m in reversed(carrying):
        at = when(run.started_at) or when(run.finished_at)
        points.append(
            HistoryPoint(
                run.run_id, run.version, run.suite, m.value, m.unit, at, last_of_suite.get(run.suite, "")
            )
        )
        last_of_suite[run.suite] = run.run_id
    return points


def _chart(model_id: str, metric: str, points: list[HistoryPoint], version: str) -> str:
    unit = next((p.unit for p in points if p.unit), "")
    return line_chart(
        "chart-history",
        f"{metric} of {model_id} across its runs" + (f" ({unit})" if unit and unit != "ratio" else ""),
        [
            Point(
                value=p.value,
                series=p.suite,
                label=p.version,
                title=f"{p.version} · {p.suite} · {p.value:.6g} · run {p.run_id} · {p.at}",
                data={"version": p.version, "run-id": p.run_id, "at": p.at, "suite": p.suite},
                highlight=p.version == version,
            )
            for p in points
        ],
        unit=unit,
    )


@page()
async def metric_history(current: Page) -> Response:
    registry = await current.registry()
    model_id, suite = current.query("model"), current.query("suite")
    metric, version = current.query("metric"), current.query("version")
    models = [
        m.model_id for m in (await registry.list_models(pb.ListModelsRequest(page_size=MODELS_LISTED))).models
    ]
    context: dict[str, Any] = {
        "models": models,
        "model_id": model_id,
        "suite": suite,
        "metric": metric,
        "version": version,
        "suites": [],
        "metrics": [],
        "points": [],
        "chart": "",
        "left_out": 0,
        "scanned": 0,
        "notice": "",
        "link": history_link,
        "limit": POINTS,
    }
    if not model_id:
        return current.render("metric_history.html", **context)
    if model_id not in models:
        context["notice"] = f"unknown model {model_id!r}: pick one of the registry's models"
        return current.render("metric_history.html", status=404, **context)
    runs = await succeeded_runs(registry, model_id, suite, metric)
    newest: dict[str, float] = {}
    for run in reversed(runs):
        newest.update((m.name, m.value) for m in run.metrics)
    context.update(
        suites=sorted({r.suite for r in runs} | ({suite} if suite else set())),
        metrics=sorted(newest),
        scanned=len(runs),
    )
    if not runs:
        where = f" in suite {suite!r}" if suite else ""
        context["notice"] = f"{model_id} has no succeeded benchmark run{where} stored yet"
        return current.render("metric_history.html", **context)
    if not metric:
        metric = next(iter(headline_metrics(newest)), min(newest))
        context["metric"] = metric
    if metric not in newest:
        context["notice"] = (
            f"no stored succeeded run of {model_id} has metric {metric!r}: pick one of the metrics listed"
        )
        return current.render("metric_history.html", status=404, **context)
    points = history_points(runs, metric)
    context.update(
        points=points,
        chart=_chart(model_id, metric, points, version),
        left_out=sum(1 for p in points if not math.isfinite(p.value)),
    )
    return current.render("metric_history.html", **context)
