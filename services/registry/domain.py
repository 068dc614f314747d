"""The registry's domain types: plain Python, no protobuf, no SQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from modelyard.common.modelspec import InferenceConfig, RequestParameter, Signature, TensorSpec
from modelyard.common.states import PlanState, RunStatus, VersionStatus

MODEL_TYPES = ("text_embedding", "image_embedding", "captioning", "generic")


@dataclass(frozen=True)
class Lineage:
    parent_version: str = ""
    git_commit: str = ""
    training_run: str = ""
    dataset: str = ""


@dataclass
class Model:
    model_id: str
    model_type: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    created_by: str = ""
    created_at: dt.datetime | None = None


@dataclass
class ModelVersion:
    model_id: str
    version: str
    source_uri: str
    checkpoint_hash: str
    loader: str
    inference_config: InferenceConfig = field(default_factory=InferenceConfig)
    signature: Signature = field(default_factory=Signature)
    lineage: Lineage = field(default_factory=Lineage)
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    created_by: str = ""
    created_at: dt.datetime | None = None
    status: str = VersionStatus.READY
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Route:
    version: str
    weight: int
    # On a weight-0 route: percent of unpinned requests workers mirror to it (shadow traffic).
    mirror_percent: int = 0


@dataclass
class Deployment:
    name: str
    model_id: str
    model_type: str = ""
    routes: list[Route] = field(default_factory=list)
    follow_alias: str = ""
    signature: Signature | None = None
    revision: int = 0
    updated_at: dt.datetime | None = None
    description: str = ""
    versions: list[ModelVersion] = field(default_factory=list)


@dataclass(frozen=True)
class Alias:
    model_id: str
    alias: str
    version: str
    updated_at: dt.datetime | None = None


@dataclass
class DeploymentEvent:
    revision: int
    kind: str  # EventKind.UPSERTED or DELETED
    action: str
    deployment: Deployment


@dataclass
class AuditEvent:
    id: int
    at: dt.datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    before: Any
    after: Any
    reason: str
    revision: int


@dataclass
class LoadedVersion:
    version: str
    state: str
    checkpoint_hash: str = ""
    device: str = ""
    last_error: str = ""
    attempts: int = 0
    next_attempt_at: dt.datetime | None = None


@dataclass
class DeploymentStatus:
    deployment: str
    revision: int
    versions: list[LoadedVersion] = field(default_factory=list)


@dataclass
class SeriesCounters:
    """Cumulative counters of one deployment version on one worker since `since_s` (its uptime)."""

    deployment: str
    version: str
    since_s: float
    requests: int
    items: int
    errors: dict[str, int]
    buckets: list[int]  # successes per latency bucket (modelyard.common.latency), not cumulative
    latency_sum_s: float
    # By signal: (the deployment's reference histogram, cumulative live counts); modelyard.common.drift
    drift: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    # Mirrored requests among `requests`, and their agreement with the primary (summed over items).
    shadow_requests: int = 0
    agreement_sum: float = 0.0
    agreement_items: int = 0


@dataclass
class LiveCounters:
    """What a worker process counted since it started (`started_at_ns`, its counter epoch)."""

    started_at_ns: int
    uptime_s: float
    series: list[SeriesCounters] = field(default_factory=list)


@dataclass
class WorkerStatus:
    worker_id: str
    address: str = ""
    state: str = ""
    last_error: str = ""
    deployments: list[DeploymentStatus] = field(default_factory=list)
    last_seen: dt.datetime | None = None
    live: bool = False
    fallback: bool = False
    counters: LiveCounters | None = None  # written with the heartbeat; never read back with the row


@dataclass
class LiveWindow:
    """One worker's counters at both ends of a window: its newest snapshot and the oldest of the same
    epoch received inside the window (None when there is none besides the newest)."""

    worker_id: str
    newest: LiveCounters
    newest_at: dt.datetime
    baseline: LiveCounters | None
    baseline_at: dt.datetime | None
    samples: int  # snapshots of the newest epoch received inside the window, the newest included
    now: dt.datetime


@dataclass
class LiveFigures:
    requests_per_s: float = 0.0
    items_per_s: float = 0.0
    error_rate: float = 0.0
    requests: int = 0
    items: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    buckets: list[int] = field(default_factory=list)
    samples: int = 0
    window_s: float = 0.0
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None
    latency_sum_s: float = 0.0  # of the successful requests, for means across workers
    # By signal: the reference (summed over workers) and the items binned in the window.
    drift_reference: dict[str, list[int]] = field(default_factory=dict)
    drift_live: dict[str, list[int]] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)  # scores, where enough items
    shadow_requests: int = 0
    agreement_sum: float = 0.0
    agreement_items: int = 0
    agreement: float = 0.0  # agreement_sum / agreement_items; 0 without items


@dataclass
class WorkerLiveFigures:
    worker_id: str
    figures: LiveFigures


@dataclass
class VersionLiveFigures:
    deployment: str
    version: str
    total: LiveFigures
    workers: list[WorkerLiveFigures]


@dataclass
class LiveMetrics:
    versions: list[VersionLiveFigures]
    window_s: float
    bounds_s: tuple[float, ...]
    at: dt.datetime


@dataclass
class WorkerRollout:
    worker_id: str
    revision: int
    converged: bool
    detail: str
    lost: bool = False
    last_seen: dt.datetime | None = None


@dataclass
class RolloutStatus:
    deployment: str
    revision: int
    converged: bool
    workers: list[WorkerRollout]


@dataclass
class Metric:
    name: str
    value: float
    unit: str = ""
    samples: list[float] = field(default_factory=list)


@dataclass
class BenchmarkRun:
    run_id: str
    suite: str
    model_id: str
    version: str
    deployment: str = ""
    status: str = RunStatus.SUCCEEDED
    error: str = ""
    conditions: dict[str, str] = field(default_factory=dict)
    hardware: str = ""
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    metrics: list[Metric] = field(default_factory=list)
    created_by: str = ""


@dataclass(frozen=True)
class VersionMetric:
    name: str
    value: float
    unit: str
    run_id: str
    suite: str
    recorded_at: dt.datetime


@dataclass(frozen=True)
class GateResult:
    gate: str
    metric: str
    passed: bool
    observed: float
    run_id: str


@dataclass(frozen=True)
class Promotion:
    """An alias moved: where it points now and before, the gates checked, the deployments switched."""

    alias: Alias
    previous_version: str
    gates: list[GateResult]
    switched: list[Deployment]


@dataclass(frozen=True)
class Cleanup:
    """What CleanupVersions removed (or would remove, on a dry run), and what it kept because in use."""

    removed: list[str]
    kept_in_use: list[str]


@dataclass
class ImportCounts:
    """Entries an import added, per kind, and those already present unchanged."""

    models: int = 0
    versions: int = 0
    aliases: int = 0
    deployments: int = 0
    benchmark_runs: int = 0
    unchanged: int = 0


@dataclass(frozen=True)
class GuardReading:
    """One guard at a judgement: `value` is NaN and `judged` false until there is enough evidence."""

    guard: str  # normalised text, "p99_ratio <= 1.5"
    metric: str
    op: str
    threshold: float
    value: float = float("nan")
    judged: bool = False
    holds: bool = False


@dataclass(frozen=True)
class Judgement:
    """A rollout plan's last look at the live figures of its step."""

    readings: list[GuardReading]
    candidate_requests: int
    baseline_requests: int
    window_s: float
    at: dt.datetime
    driver: str


@dataclass(frozen=True)
class RolloutPlan:
    plan_id: int
    deployment: str
    model_id: str
    baseline: str
    candidate: str
    steps: list[int]
    step_index: int
    step_duration_s: float
    min_requests: int
    guards: list[str]  # normalised guard texts, parsed by `guards.parse_guard`
    state: PlanState
    step_started_at: dt.datetime
    created_by: str
    created_at: dt.datetime
    finished_at: dt.datetime | None = None
    outcome: str = ""
    judgement: Judgement | None = None
    warmup_s: float = 0.0
    shadow_percent: int = 0  # the shadow step's mirrored share; steps[0] is then 0

    @property
    def weight(self) -> int:
        """The candidate's weight at the current step, percent."""
        return self.steps[self.step_index]


def to_json(value: Any) -> Any:
    """A JSON-ready copy of a domain object (datetimes as ISO strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def signature_from_json(data: dict[str, Any] | None) -> Signature | None:
    if not data:
        return None
    return Signature(
        inputs=tuple(TensorSpec(t["name"], t["datatype"], tuple(t.get("shape", ()))) for t in data["inputs"]),
        outputs=tuple(
            TensorSpec(t["name"], t["datatype"], tuple(t.get("shape", ()))) for t in data["outputs"]
        ),
        embedding_dim=int(data.get("embedding_dim", 0)),
        parameters=tuple(
            RequestParameter(
                p["name"], tuple((str(v), str(m)) for v, m in p.get("choices", ())), p.get("default", "")
            )
            for p in data.get("parameters", ())
        ),
    )


def _parse_time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)


def version_from_json(data: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        model_id=data["model_id"],
        version=data["version"],
        source_uri=data["source_uri"],
        checkpoint_hash=data["checkpoint_hash"],
        loader=data["loader"],
        inference_config=InferenceConfig(**data.get("inference_config", {})),
        signature=signature_from_json(data.get("signature")) or Signature(),
        lineage=Lineage(**data.get("lineage", {})),
        tags=dict(data.get("tags", {})),
        description=data.get("description", ""),
        created_by=data.get("created_by", ""),
        created_at=_parse_time(data.get("created_at")),
        status=data.get("status", VersionStatus.READY),
        aliases=list(data.get("aliases", [])),
    )


def deployment_from_json(data: dict[str, Any]) -> Deployment:
    return Deployment(
        name=data["name"],
        model_id=data["model_id"],
        model_type=data.get("model_type", ""),
        routes=[
            Route(r["version"], int(r["weight"]), int(r.get("mirror_percent", 0)))
            for r in data.get("routes", [])
        ],
        follow_alias=data.get("follow_alias", ""),
        signature=signature_from_json(data.get("signature")),
        revision=int(data.get("revision", 0)),
        updated_at=_parse_time(data.get("updated_at")),
        description=data.get("description", ""),
        versions=[version_from_json(v) for v in data.get("versions", [])],
    )
