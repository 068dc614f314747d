"""Conversion between registry protobuf messages and domain types; nothing else touches protobuf."""

from __future__ import annotations

import datetime as dt
import json
import math

from google.protobuf.timestamp_pb2 import Timestamp

from modelyard.api import registry_pb2 as pb
from modelyard.common.errors import InvalidArgument
from modelyard.common.modelspec import parameters_from_metadata, parameters_to_metadata
from modelyard.common.states import (
    PLAN_STATE_TO_PB,
    RUN_STATUS_FROM_PB,
    RUN_STATUS_TO_PB,
    VERSION_STATE_FROM_PB,
    VERSION_STATE_TO_PB,
    VERSION_STATUS_TO_PB,
    VersionState,
)
from modelyard.common.timestamps import to_timestamp
from modelyard.registry import domain as d

MODEL_TYPE_TO_PB = {
    "text_embedding": pb.TEXT_EMBEDDING,
    "image_embedding": pb.IMAGE_EMBEDDING,
    "captioning": pb.CAPTIONING,
    "generic": pb.GENERIC,
}
MODEL_TYPE_FROM_PB = {v: k for k, v in MODEL_TYPE_TO_PB.items()}


def model_type_from_pb(value: pb.ModelType.ValueType, *, required: bool = False) -> str:
    if value == pb.MODEL_TYPE_UNSPECIFIED:
        if required:
            raise InvalidArgument("model_type is required: text_embedding, image_embedding or captioning")
        return ""
    try:
        return MODEL_TYPE_FROM_PB[value]
    except KeyError:
        raise InvalidArgument(f"unknown model_type {value}") from None


def time_from_pb(ts: Timestamp, present: bool) -> dt.datetime | None:
    return ts.ToDatetime(tzinfo=dt.UTC) if present else None


def model_to_pb(m: d.Model) -> pb.Model:
    return pb.Model(
        model_id=m.model_id,
        model_type=MODEL_TYPE_TO_PB.get(m.model_type, pb.MODEL_TYPE_UNSPECIFIED),
        description=m.description,
        tags=m.tags,
        created_at=to_timestamp(m.created_at),
        created_by=m.created_by,
    )


def signature_to_pb(s: d.Signature) -> pb.Signature:
    return pb.Signature(
        inputs=[pb.TensorSpec(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in s.inputs],
        outputs=[pb.TensorSpec(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in s.outputs],
        embedding_dim=s.embedding_dim,
        parameters=parameters_to_metadata(s.parameters),
    )


def signature_from_pb(s: pb.Signature) -> d.Signature:
    return d.Signature(
        inputs=tuple(d.TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in s.inputs),
        outputs=tuple(d.TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in s.outputs),
        embedding_dim=s.embedding_dim,
        parameters=parameters_from_metadata(dict(s.parameters)),
    )


def version_to_pb(v: d.ModelVersion) -> pb.ModelVersion:
    c = v.inference_config
    return pb.ModelVersion(
        model_id=v.model_id,
        version=v.version,
        source_uri=v.source_uri,
        checkpoint_hash=v.checkpoint_hash,
        loader=v.loader,
        inference_config=pb.InferenceConfig(
            max_batch_size=c.max_batch_size,
            max_delay_ms=c.max_delay_ms,
            device=c.device,
            dtype=c.dtype,
            max_sequence_length=c.max_sequence_length,
            quantization=c.quantization,
            trust_remote_code=c.trust_remote_code,
            max_batch_tokens=c.max_batch_tokens,
            engine=c.engine,
        ),
        signature=signature_to_pb(v.signature),
        lineage=pb.Lineage(
            parent_version=v.lineage.parent_version,
            git_commit=v.lineage.git_commit,
            training_run=v.lineage.training_run,
            dataset=v.lineage.dataset,
        ),
        tags=v.tags,
        description=v.description,
        created_by=v.created_by,
        created_at=to_timestamp(v.created_at),
        status=VERSION_STATUS_TO_PB.get(v.status, pb.VERSION_STATUS_UNSPECIFIED),
        aliases=v.aliases,
    )


def version_from_pb(v: pb.ModelVersion) -> d.ModelVersion:
    c = v.inference_config
    defaults = d.InferenceConfig()
    return d.ModelVersion(
        model_id=v.model_id,
        version=v.version,
        source_uri=v.source_uri,
        checkpoint_hash=v.checkpoint_hash,
        loader=v.loader,
        inference_config=d.InferenceConfig(
            max_batch_size=c.max_batch_size or defaults.max_batch_size,
            max_delay_ms=c.max_delay_ms if v.HasField("inference_config") else defaults.max_delay_ms,
            device=c.device or defaults.device,
            dtype=c.dtype or defaults.dtype,
            max_sequence_length=c.max_sequence_length,
            quantization=c.quantization,
            trust_remote_code=c.trust_remote_code,
            max_batch_tokens=c.max_batch_tokens,
            engine=c.engine or defaults.engine,
        ),
        signature=signature_from_pb(v.signature),
        lineage=d.Lineage(
            parent_version=v.lineage.parent_version,
            git_commit=v.lineage.git_commit,
            training_run=v.lineage.training_run,
            dataset=v.lineage.dataset,
        ),
        tags=dict(v.tags),
        description=v.description,
    )


def routes_from_pb(routes: list[pb.Route]) -> list[d.Route]:
    return [d.Route(r.version, r.weight, r.mirror_percent) for r in routes]


def deployment_to_pb(dep: d.Deployment) -> pb.Deployment:
    return pb.Deployment(
        name=dep.name,
        model_id=dep.model_id,
        routes=[
            pb.Route(version=r.version, weight=r.weight, mirror_percent=r.mirror_percent) for r in dep.routes
        ],
        follow_alias=dep.follow_alias,
        signature=signature_to_pb(dep.signature) if dep.signature else None,
        revision=dep.revision,
        updated_at=to_timestamp(dep.updated_at),
        description=dep.description,
        versions=[version_to_pb(v) for v in dep.versions],
        model_type=MODEL_TYPE_TO_PB.get(dep.model_type, pb.MODEL_TYPE_UNSPECIFIED),
    )


def alias_to_pb(a: d.Alias) -> pb.Alias:
    return pb.Alias(
        model_id=a.model_id, alias=a.alias, version=a.version, updated_at=to_timestamp(a.updated_at)
    )


def gate_to_pb(g: d.GateResult) -> pb.GateResult:
    observed = 0.0 if math.isnan(g.observed) else g.observed
    return pb.GateResult(gate=g.gate, metric=g.metric, passed=g.passed, observed=observed, run_id=g.run_id)


def audit_to_pb(e: d.AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        id=e.id,
        at=to_timestamp(e.at),
        actor=e.actor,
        action=e.action,
        entity_type=e.entity_type,
        entity_id=e.entity_id,
        before_json=json.dumps(e.before) if e.before is not None else "",
        after_json=json.dumps(e.after) if e.after is not None else "",
        reason=e.reason,
        revision=e.revision,
    )


def worker_from_pb(w: pb.WorkerStatus) -> d.WorkerStatus:
    return d.WorkerStatus(
        worker_id=w.worker_id,
        address=w.address,
        state=w.state,
        last_error=w.last_error,
        deployments=[
            d.DeploymentStatus(
                deployment=s.deployment,
                revision=s.revision,
                versions=[
                    d.LoadedVersion(
                        version=v.version,
                        state=VERSION_STATE_FROM_PB.get(v.state, VersionState.LOADING),
                        checkpoint_hash=v.checkpoint_hash,
                        device=v.device,
                        last_error=v.last_error,
                        attempts=v.attempts,
                        next_attempt_at=(
                            v.next_attempt_at.ToDatetime(dt.UTC) if v.HasField("next_attempt_at") else None
                        ),
                    )
                    for v in s.versions
                ],
            )
            for s in w.deployments
        ],
        fallback=w.fallback,
        counters=live_counters_from_pb(w.counters) if w.HasField("counters") else None,
    )


def live_counters_from_pb(c: pb.LiveCounters) -> d.LiveCounters:
    return d.LiveCounters(
        started_at_ns=c.started_at.ToNanoseconds(),
        uptime_s=c.uptime_s,
        series=[
            d.SeriesCounters(
                deployment=s.deployment,
                version=s.version,
                since_s=s.since_s,
                requests=s.requests,
                items=s.items,
                errors=dict(s.errors),
                buckets=list(s.latency_buckets),
                latency_sum_s=s.latency_sum_s,
                drift={dc.signal: (list(dc.reference), list(dc.live)) for dc in s.drift},
                shadow_requests=s.shadow_requests,
                agreement_sum=s.agreement_sum,
                agreement_items=s.agreement_items,
            )
            for s in c.versions
        ],
    )


def plan_to_pb(p: d.RolloutPlan) -> pb.RolloutPlan:
    judged = p.judgement
    readings = {r.guard: r for r in judged.readings} if judged else {}
    guards = []
    for text in p.guards:
        metric, op, threshold = text.split(" ")
        r = readings.get(text)
        guards.append(
            pb.GuardReading(
                guard=text,
                metric=metric,
                op=op,
                threshold=float(threshold),
                value=r.value if r else math.nan,
                holds=bool(r and r.holds),
                judged=bool(r and r.judged),
            )
        )
    return pb.RolloutPlan(
        plan_id=p.plan_id,
        deployment=p.deployment,
        model_id=p.model_id,
        baseline_version=p.baseline,
        candidate_version=p.candidate,
        steps=p.steps,
        step_index=p.step_index,
        step_duration_s=p.step_duration_s,
        min_requests=p.min_requests,
        guards=guards,
        state=PLAN_STATE_TO_PB[p.state],
        step_started_at=to_timestamp(p.step_started_at),
        created_at=to_timestamp(p.created_at),
        created_by=p.created_by,
        finished_at=to_timestamp(p.finished_at),
        outcome=p.outcome,
        candidate_requests=judged.candidate_requests if judged else 0,
        baseline_requests=judged.baseline_requests if judged else 0,
        window_s=judged.window_s if judged else 0.0,
        judged_at=to_timestamp(judged.at if judged else None),
        driver=judged.driver if judged else "",
        warmup_s=p.warmup_s,
        shadow_percent=p.shadow_percent,
    )


def live_metrics_to_pb(m: d.LiveMetrics) -> pb.LiveMetrics:
    return pb.LiveMetrics(
        versions=[
            pb.VersionLiveFigures(
                deployment=v.deployment,
                version=v.version,
                total=live_figures_to_pb(v.total),
                workers=[
                    pb.WorkerLiveFigures(worker_id=w.worker_id, figures=live_figures_to_pb(w.figures))
                    for w in v.workers
                ],
            )
            for v in m.versions
        ],
        window_s=m.window_s,
        latency_bounds_s=list(m.bounds_s),
        at=to_timestamp(m.at),
    )


def live_figures_to_pb(f: d.LiveFigures) -> pb.LiveFigures:
    return pb.LiveFigures(
        requests_per_s=f.requests_per_s,
        items_per_s=f.items_per_s,
        error_rate=f.error_rate,
        requests=f.requests,
        items=f.items,
        errors=f.errors,
        p50_ms=f.p50_ms,
        p95_ms=f.p95_ms,
        p99_ms=f.p99_ms,
        mean_ms=f.mean_ms,
        latency_buckets=f.buckets,
        samples=f.samples,
        window_s=f.window_s,
        window_start=to_timestamp(f.window_start),
        window_end=to_timestamp(f.window_end),
        drift=f.drift,
        drift_items={signal: sum(counts) for signal, counts in f.drift_live.items()},
        shadow_requests=f.shadow_requests,
        agreement=f.agreement,
        agreement_items=f.agreement_items,
    )


def worker_to_pb(w: d.WorkerStatus) -> pb.WorkerStatus:
    return pb.WorkerStatus(
        worker_id=w.worker_id,
        address=w.address,
        state=w.state,
        last_error=w.last_error,
        deployments=[
            pb.DeploymentStatus(
                deployment=s.deployment,
                revision=s.revision,
                versions=[
                    pb.LoadedVersion(
                        version=v.version,
                        state=VERSION_STATE_TO_PB.get(v.state, pb.VERSION_STATE_UNSPECIFIED),
                        checkpoint_hash=v.checkpoint_hash,
                        device=v.device,
                        last_error=v.last_error,
                        attempts=v.attempts,
                        next_attempt_at=to_timestamp(v.next_attempt_at),
                    )
                    for v in s.versions
                ],
            )
            for s in w.deployments
        ],
        last_seen=to_timestamp(w.last_seen),
        live=w.live,
        fallback=w.fallback,
    )


def rollout_to_pb(r: d.RolloutStatus) -> pb.RolloutStatus:
    return pb.RolloutStatus(
        deployment=r.deployment,
        revision=r.revision,
        converged=r.converged,
        workers=[
            pb.WorkerRollout(
                worker_id=w.worker_id,
                revision=w.revision,
                converged=w.converged,
                detail=w.detail,
                lost=w.lost,
                last_seen=to_timestamp(w.last_seen),
            )
            for w in r.workers
        ],
    )


def run_to_pb(r: d.BenchmarkRun) -> pb.BenchmarkRun:
    return pb.BenchmarkRun(
        run_id=r.run_id,
        suite=r.suite,
        model_id=r.model_id,
        version=r.version,
        deployment=r.deployment,
        status=RUN_STATUS_TO_PB.get(r.status, pb.RUN_STATUS_UNSPECIFIED),
        error=r.error,
        conditions=r.conditions,
        hardware=r.hardware,
        started_at=to_timestamp(r.started_at),
        finished_at=to_timestamp(r.finished_at),
        metrics=[pb.Metric(name=m.name, value=m.value, unit=m.unit, samples=m.samples) for m in r.metrics],
        created_by=r.created_by,
    )


def run_from_pb(r: pb.BenchmarkRun) -> d.BenchmarkRun:
    if r.status not in RUN_STATUS_FROM_PB:
        raise InvalidArgument("run status is required: running, succeeded or failed")
    return d.BenchmarkRun(
        run_id=r.run_id,
        suite=r.suite,
        model_id=r.model_id,
        version=r.version,
        deployment=r.deployment,
        status=RUN_STATUS_FROM_PB[r.status],
        error=r.error,
        conditions=dict(r.conditions),
        hardware=r.hardware,
        started_at=time_from_pb(r.started_at, r.HasField("started_at")),
        finished_at=time_from_pb(r.finished_at, r.HasField("finished_at")),
        metrics=[d.Metric(m.name, m.value, m.unit, list(m.samples)) for m in r.metrics],
        created_by=r.created_by,
    )


def version_metric_to_pb(m: d.VersionMetric) -> pb.VersionMetric:
    return pb.VersionMetric(
        name=m.name,
        value=m.value,
        unit=m.unit,
        run_id=m.run_id,
        suite=m.suite,
        recorded_at=to_timestamp(m.recorded_at),
    )


def promotion_to_pb(p: d.Promotion) -> pb.SetAliasResponse:
    return pb.SetAliasResponse(
        model_id=p.alias.model_id,
        alias=p.alias.alias,
        version=p.alias.version,
        previous_version=p.previous_version,
        gates=[gate_to_pb(g) for g in p.gates],
        switched=[deployment_to_pb(dep) for dep in p.switched],
    )


def import_counts_to_pb(c: d.ImportCounts) -> pb.ImportRegistryResponse:
    return pb.ImportRegistryResponse(
        models=c.models,
        versions=c.versions,
        aliases=c.aliases,
        deployments=c.deployments,
        benchmark_runs=c.benchmark_runs,
        unchanged=c.unchanged,
    )
