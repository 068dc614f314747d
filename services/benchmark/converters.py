"""Protobuf <-> plain types for the benchmark service; nothing below this module sees protobuf."""

from __future__ import annotations

from datetime import UTC

from modelyard.api import benchmark_pb2, registry_pb2
from modelyard.benchmark.catalog import SuiteInfo, int_option
from modelyard.benchmark.compare import Comparison
from modelyard.benchmark.load import LoadPlan
from modelyard.benchmark.results import MetricResult, RunRecord
from modelyard.benchmark.runner import ProgressEvent, RunSpec
from modelyard.common.states import RUN_STATUS_FROM_PB, RUN_STATUS_TO_PB
from modelyard.common.timestamps import to_timestamp

DEFAULT_BATCH_SIZE = 8


def run_to_pb(run: RunRecord) -> registry_pb2.BenchmarkRun:
    message = registry_pb2.BenchmarkRun(
        run_id=run.run_id,
        suite=run.suite,
        model_id=run.model_id,
        version=run.version,
        deployment=run.deployment,
        status=RUN_STATUS_TO_PB.get(run.status, registry_pb2.RUN_STATUS_UNSPECIFIED),
        error=run.error,
        conditions=run.conditions,
        hardware=run.hardware,
        created_by=run.created_by,
        metrics=[
            registry_pb2.Metric(name=m.name, value=m.value, unit=m.unit, samples=m.samples)
            for m in run.metrics
        ],
    )
    started, finished = to_timestamp(run.started_at), to_timestamp(run.finished_at)
    if started is not None:
        message.started_at.CopyFrom(started)
    if finished is not None:
        message.finished_at.CopyFrom(finished)
    return message


def run_from_pb(message: registry_pb2.BenchmarkRun) -> RunRecord:
    return RunRecord(
        run_id=message.run_id,
        suite=message.suite,
        model_id=message.model_id,
        version=message.version,
        metrics=tuple(
            MetricResult(m.name, m.value, m.unit, tuple(float(x) for x in m.samples)) for m in message.metrics
        ),
        status=RUN_STATUS_FROM_PB.get(message.status, "unspecified"),
        error=message.error,
        deployment=message.deployment,
        conditions=dict(message.conditions),
        hardware=message.hardware,
        started_at=message.started_at.ToDatetime(UTC) if message.HasField("started_at") else None,
        finished_at=message.finished_at.ToDatetime(UTC) if message.HasField("finished_at") else None,
        created_by=message.created_by,
    )


def spec_from_pb(request: benchmark_pb2.RunBenchmarkRequest, created_by: str = "") -> RunSpec:
    """LoadPlan validation (concurrency > 0, a stop condition) happens here, before any streaming."""
    load = None
    if request.suite == "load" or request.HasField("load"):
        settings = request.load
        load = LoadPlan(
            tuple(settings.concurrency),
            requests=settings.requests,
            duration_s=settings.duration_s,
            warmup_requests=settings.warmup_requests,
        )
    options = dict(request.options)
    batch_size = request.load.batch_size or int_option(options, "batch_size", DEFAULT_BATCH_SIZE)
    return RunSpec(
        worker=request.worker,
        deployment=request.deployment,
        model_id=request.model_id,
        versions=tuple(request.versions),
        suite=request.suite,
        load=load,
        batch_size=batch_size,
        options=options,
        stage_unrouted=request.stage_unrouted,
        created_by=created_by,
    )


def progress_to_pb(progress: ProgressEvent) -> benchmark_pb2.RunBenchmarkProgress:
    message = benchmark_pb2.RunBenchmarkProgress(
        run_id=progress.run_id,
        version=progress.version,
        phase=progress.phase,
        fraction=progress.fraction,
        message=progress.message,
    )
    if progress.run is not None:
        message.run.CopyFrom(run_to_pb(progress.run))
    return message


def comparison_to_pb(comparison: Comparison, export: str = "") -> benchmark_pb2.CompareResponse:
    return benchmark_pb2.CompareResponse(
        baseline_run_id=comparison.baseline.run_id,
        candidate_run_id=comparison.candidate.run_id,
        winner=comparison.winner,
        export=export,
        metrics=[
            benchmark_pb2.MetricComparison(
                metric=m.metric,
                unit=m.unit,
                baseline=m.baseline,
                candidate=m.candidate,
                delta=m.delta,
                ci_low=m.ci_low if m.ci_low is not None else 0.0,
                ci_high=m.ci_high if m.ci_high is not None else 0.0,
                has_interval=m.ci_low is not None,
                higher_is_better=m.higher_is_better,
                winner=m.winner,
                paired=m.paired,
                baseline_samples=m.baseline_samples,
                candidate_samples=m.candidate_samples,
            )
            for m in comparison.metrics
        ],
    )


def suite_to_pb(info: SuiteInfo) -> benchmark_pb2.Suite:
    return benchmark_pb2.Suite(name=info.name, kind=info.kind, description=info.description)
