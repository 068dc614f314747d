"""Registry messages as the pages show them: plain values for the templates (protobuf stops here)."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field, replace
from urllib.parse import urlencode

from google.protobuf.timestamp_pb2 import Timestamp

from modelyard.api import registry_pb2 as pb
from modelyard.benchmark.results import base_name, higher_is_better, is_per_request

_STATES = {
    pb.LOADING: "loading",
    pb.SERVING: "serving",
    pb.DRAINING: "draining",
    pb.FAILED: "failed",
}
_MODEL_TYPES = {
    pb.TEXT_EMBEDDING: "text embedding",
    pb.IMAGE_EMBEDDING: "image embedding",
    pb.CAPTIONING: "captioning",
    pb.GENERIC: "generic",
}


def when(stamp: object) -> str:
    """A Timestamp as UTC to the second, '' when unset."""
    if not isinstance(stamp, Timestamp) or not (stamp.seconds or stamp.nanos):
        return ""
    moment = dt.datetime.fromtimestamp(stamp.seconds, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def model_type(value: pb.ModelType.ValueType) -> str:
    return _MODEL_TYPES.get(value, "")


@dataclass(frozen=True)
class RouteView:
    version: str
    weight: int
    mirror_percent: int = 0  # shadow traffic: the share of requests mirrored to this staged version

    @property
    def staged(self) -> bool:
        return self.weight == 0


@dataclass(frozen=True)
class LoadedView:
    version: str
    state: str
    device: str
    last_error: str


@dataclass(frozen=True)
class WorkerView:
    """One worker as it serves one deployment."""

    worker_id: str
    address: str
    state: str
    live: bool
    lost: bool
    fallback: bool
    last_error: str
    last_seen: str
    revision: int  # the deployment revision this worker applied
    converged: bool
    detail: str
    versions: list[LoadedView]
    # Seconds from the deployment's change to the console first seeing the worker converged
    # on it; None unless the console saw it behind first (see SwapClock).
    switched_s: float | None = None

    @property
    def serving(self) -> list[str]:
        return [v.version for v in self.versions if v.state == "serving"]


@dataclass(frozen=True)
class FiguresView:
    """Live figures of one version (all its workers, or one), as the registry computed them."""

    requests_per_s: float
    items_per_s: float
    error_rate: float
    errors: list[tuple[str, int]]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    has_latency: bool
    requests: int
    window_s: float


@dataclass(frozen=True)
class LiveWorkerView:
    worker_id: str
    figures: FiguresView


@dataclass(frozen=True)
class LiveVersionView:
    version: str
    weight: int | None  # None: no longer routed (draining, or just removed)
    total: FiguresView
    workers: list[LiveWorkerView]

    @property
    def rows(self) -> list[tuple[str, FiguresView]]:
        """The version's total ("all"), then each worker's figures when more than one serves it."""
        rows = [("all", self.total)]
        if len(self.workers) > 1:
            rows += [(w.worker_id, w.figures) for w in self.workers]
        return rows


def figures_view(f: pb.LiveFigures) -> FiguresView:
    return FiguresView(
        requests_per_s=f.requests_per_s,
        items_per_s=f.items_per_s,
        error_rate=f.error_rate,
        errors=sorted(f.errors.items()),
        p50_ms=f.p50_ms,
        p95_ms=f.p95_ms,
        p99_ms=f.p99_ms,
        has_latency=sum(f.latency_buckets) > 0,
        requests=f.requests,
        window_s=f.window_s,
    )


def live_versions(deployment: pb.Deployment, live: pb.LiveMetrics) -> list[LiveVersionView]:
    weights = {r.version: r.weight for r in deployment.routes}
    return [
        LiveVersionView(
            version=v.version,
            weight=weights.get(v.version),
            total=figures_view(v.total),
            workers=[LiveWorkerView(w.worker_id, figures_view(w.figures)) for w in v.workers],
        )
        for v in live.versions
        if v.deployment == deployment.name
    ]


@dataclass(frozen=True)
class GuardView:
    guard: str
    value: str  # "-" until judged
    verdict: str  # holds, fails, waiting


@dataclass(frozen=True)
class PlanView:
    """A deployment's rollout plan (the active one, else the last) as GetRolloutPlan returns it."""

    plan_id: int
    baseline: str
    candidate: str
    steps: list[int]
    step_index: int
    state: str
    active: bool
    running: bool
    outcome: str
    step_since: str
    step_duration_s: float
    min_requests: int
    guards: list[GuardView]
    candidate_requests: int
    baseline_requests: int
    window_s: float
    judged: str

    @property
    def weight(self) -> int:
        return self.steps[self.step_index] if self.steps else 0


PLAN_STATES = {
    pb.ROLLOUT_PLAN_RUNNING: "running",
    pb.ROLLOUT_PLAN_PAUSED: "paused",
    pb.ROLLOUT_PLAN_SUCCEEDED: "succeeded",
    pb.ROLLOUT_PLAN_ROLLED_BACK: "rolled back",
    pb.ROLLOUT_PLAN_ABORTED: "aborted",
}


def plan_view(p: pb.RolloutPlan) -> PlanView:
    state = PLAN_STATES.get(p.state, "unknown")
    return PlanView(
        plan_id=p.plan_id,
        baseline=p.baseline_version,
        candidate=p.candidate_version,
        steps=list(p.steps),
        step_index=p.step_index,
        state=state,
        active=state in ("running", "paused"),
        running=state == "running",
        outcome=p.outcome,
        step_since=when(p.step_started_at),
        step_duration_s=p.step_duration_s,
        min_requests=p.min_requests,
        guards=[
            GuardView(
                guard=g.guard,
                value=f"{g.value:.4g}" if g.judged else "-",
                verdict=("holds" if g.holds else "fails") if g.judged else "waiting",
            )
            for g in p.guards
        ],
        candidate_requests=p.candidate_requests,
        baseline_requests=p.baseline_requests,
        window_s=p.window_s,
        judged=when(p.judged_at) if p.driver else "",
    )


@dataclass(frozen=True)
class DeploymentView:
    name: str
    model_id: str
    model_type: str
    description: str
    routes: list[RouteView]
    follow_alias: str
    revision: int
    updated_at: str
    embedding_dim: int
    converged: bool
    workers: list[WorkerView] = field(default_factory=list)
    updated_at_s: float = 0.0  # the change, seconds since the epoch (registry clock)
    # None when the registry serves no live figures (one from before GetLiveMetrics).
    live: list[LiveVersionView] | None = None
    live_window_s: float = 0.0
    plan: PlanView | None = None  # the active rollout plan, else the last one; None: never had one

    @property
    def active(self) -> list[RouteView]:
        return [r for r in self.routes if r.weight > 0]

    @property
    def switch_s(self) -> float | None:
        """The slowest worker's switch time, once every worker's was seen; else None."""
        times = [w.switched_s for w in self.workers]
        if not times or any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)

    @property
    def failed_recently(self) -> int:
        """Failed requests in the live window, every version, bad input (the caller's) excluded."""
        return sum(n for v in self.live or [] for code, n in v.total.errors if code != "INVALID_ARGUMENT")

    @property
    def routes_text(self) -> str:
        return ", ".join(f"{r.version}={r.weight}" for r in self.routes) or "no routes"


def deployment_view(
    deployment: pb.Deployment,
    rollout: pb.RolloutStatus | None,
    workers: list[pb.WorkerStatus],
    live: pb.LiveMetrics | None = None,
    plan: pb.RolloutPlan | None = None,
) -> DeploymentView:
    rollouts = {w.worker_id: w for w in rollout.workers} if rollout is not None else {}
    views: list[WorkerView] = []
    seen: set[str] = set()
    for worker in sorted(workers, key=lambda w: w.worker_id):
        status = next((d for d in worker.deployments if d.deployment == deployment.name), None)
        if status is None:
            continue
        seen.add(worker.worker_id)
        progress = rollouts.get(worker.worker_id)
        views.append(
            WorkerView(
                worker_id=worker.worker_id,
                address=worker.address,
                state=worker.state or "unknown",
                live=worker.live,
                lost=bool(progress and progress.lost),
                fallback=worker.fallback,
                last_error=worker.last_error
                or next((v.last_error for v in status.versions if v.last_error), ""),
                last_seen=when(worker.last_seen),
                revision=status.revision,
                converged=bool(progress and progress.converged),
                detail=progress.detail if progress else "",
                versions=[
                    LoadedView(v.version, _STATES.get(v.state, "unknown"), v.device, v.last_error)
                    for v in status.versions
                ],
            )
        )
    # Workers the rollout still waits for but that no longer heartbeat (lost ones).
    for worker_id, progress in sorted(rollouts.items()):
        if worker_id in seen:
            continue
        views.append(
            WorkerView(
                worker_id=worker_id,
                address="",
                state="lost" if progress.lost else "unknown",
                live=False,
                lost=progress.lost,
                fallback=False,
                last_error="",
                last_seen=when(progress.last_seen),
                revision=progress.revision,
                converged=progress.converged,
                detail=progress.detail,
                versions=[],
            )
        )
    return DeploymentView(
        name=deployment.name,
        model_id=deployment.model_id,
        model_type=model_type(deployment.model_type),
        description=deployment.description,
        routes=[RouteView(r.version, r.weight, r.mirror_percent) for r in deployment.routes],
        follow_alias=deployment.follow_alias,
        revision=deployment.revision,
        updated_at=when(deployment.updated_at),
        updated_at_s=deployment.updated_at.ToNanoseconds() / 1e9
        if deployment.HasField("updated_at")
        else 0.0,
        embedding_dim=deployment.signature.embedding_dim,
        converged=bool(rollout and rollout.converged),
        workers=views,
        live=live_versions(deployment, live) if live is not None else None,
        live_window_s=live.window_s if live is not None else 0.0,
        plan=plan_view(plan) if plan is not None else None,
    )


@dataclass(frozen=True)
class MetricView:
    """One of a version's newest benchmark values (GetVersionMetrics), with where it came from."""

    name: str
    value: float
    unit: str
    suite: str
    run_id: str
    recorded_at: str
    history_link: str

    @property
    def value_repr(self) -> str:
        return repr(self.value)  # reads back as exactly the stored float

    @property
    def shown(self) -> str:
        return f"{self.value:.4g}" + (f" {self.unit}" if self.unit and self.unit != "ratio" else "")

    @property
    def run_short(self) -> str:
        return self.run_id if len(self.run_id) <= 16 else self.run_id[:12] + "…"


@dataclass(frozen=True)
class VersionCard:
    model_id: str
    version: str
    loader: str
    precision: str
    checkpoint: str  # short hash
    checkpoint_hash: str
    inputs: str
    outputs: str
    embedding_dim: int
    aliases: list[str]
    tags: list[tuple[str, str]]
    description: str
    created_by: str
    created_at: str
    archived: bool
    parent_version: str
    metrics: list[MetricView] = field(default_factory=list)  # headline ones; empty: never benchmarked


def _tensors(specs: list[pb.TensorSpec]) -> str:
    return ", ".join(f"{s.name} {s.datatype}[{','.join(str(d) for d in s.shape)}]" for s in specs)


def precision(config: pb.InferenceConfig) -> str:
    """What the weights compute in: the dtype, or the quantization when there is one."""
    if config.quantization:
        return config.quantization
    return config.dtype or "float32"


# Quality first (what a version is for), these two before any other; then capacity and latency.
_LEADING_QUALITY = ("recall@10", "ndcg@10")
_QUALITY_SHOWN = 2
_LEVEL = re.compile(r"\[c=(\d+)\]$")


def _level(name: str) -> int:
    """The concurrency level of a load metric (`...[c=4]` -> 4); 0 for a suite's own one-at-a-time."""
    found = _LEVEL.search(name)
    return int(found.group(1)) if found else 0


def headline_metrics(names_values: dict[str, float]) -> list[str]:
    """Which of a version's metrics a card shows, in order: recall@10 and ndcg@10 (else the first
    other quality scores by name), up to two; the peak throughput over the measured levels; the p50
    latency at the lowest concurrency (a suite's own one-at-a-time calls before any load level)."""
    quality = [n for n in _LEADING_QUALITY if n in names_values]
    quality += sorted(
        n for n in names_values if not is_per_request(n) and higher_is_better(n) and n not in quality
    )
    chosen = quality[:_QUALITY_SHOWN]
    throughput = [
        n for n in names_values if base_name(n).startswith("throughput") and math.isfinite(names_values[n])
    ]
    if throughput:
        chosen.append(max(throughput, key=lambda n: (names_values[n], n)))
    p50 = [n for n in names_values if base_name(n) == "latency_p50_ms"]
    if p50:
        chosen.append(min(p50, key=lambda n: (_level(n), n)))
    return chosen


def history_link(model_id: str, metric: str, suite: str = "", version: str = "") -> str:
    """The Compare page's history chart of one metric across a model's runs."""
    params = {"model": model_id, "metric": metric, "suite": suite, "version": version}
    return "/compare/history?" + urlencode({k: v for k, v in params.items() if v})


def metric_views(model_id: str, version: str, metrics: list[pb.VersionMetric]) -> list[MetricView]:
    by_name = {m.name: m for m in metrics}
    return [
        MetricView(
            name=m.name,
            value=m.value,
            unit=m.unit,
            suite=m.suite,
            run_id=m.run_id,
            recorded_at=when(m.recorded_at),
            history_link=history_link(model_id, m.name, m.suite, version),
        )
        for m in (by_name[n] for n in headline_metrics({n: m.value for n, m in by_name.items()}))
    ]


def version_card(version: pb.ModelVersion, metrics: list[pb.VersionMetric] | None = None) -> VersionCard:
    """A version as a card; `metrics` are its newest benchmark values (GetVersionMetrics), if read."""
    return VersionCard(
        model_id=version.model_id,
        version=version.version,
        loader=version.loader,
        precision=precision(version.inference_config),
        checkpoint=version.checkpoint_hash[:12],
        checkpoint_hash=version.checkpoint_hash,
        inputs=_tensors(list(version.signature.inputs)),
        outputs=_tensors(list(version.signature.outputs)),
        embedding_dim=version.signature.embedding_dim,
        aliases=sorted(version.aliases),
        tags=sorted(version.tags.items()),
        description=version.description,
        created_by=version.created_by,
        created_at=when(version.created_at),
        archived=version.status == pb.VERSION_STATUS_ARCHIVED,
        parent_version=version.lineage.parent_version,
        metrics=metric_views(version.model_id, version.version, metrics or []),
    )


@dataclass(frozen=True)
class AuditView:
    id: int
    at: str
    actor: str
    action: str
    entity_type: str
    entity_id: str
    revision: int
    reason: str
    before: str
    after: str


def _pretty(document: str) -> str:
    if not document:
        return ""
    try:
        return json.dumps(json.loads(document), indent=2, sort_keys=True)
    except ValueError:
        return document


def audit_view(audit: pb.AuditEvent) -> AuditView:
    return AuditView(
        id=audit.id,
        at=when(audit.at),
        actor=audit.actor,
        action=audit.action,
        entity_type=audit.entity_type,
        entity_id=audit.entity_id,
        revision=audit.revision,
        reason=audit.reason,
        before=_pretty(audit.before_json),
        after=_pretty(audit.after_json),
    )


class SwapClock:
    """One per console, shared by every page and live stream: when each worker was first seen
    converged on its deployment's current revision after being seen behind it, as seconds after
    the change (the registry's updated_at against this console's clock, so skew between the hosts
    enters it; heartbeats and the re-read interval make it an upper bound). Shared because the
    page a switch lands on is often the only read that sees a fast worker behind: a clock per
    stream, started after that page, would see it converged at once and never time it."""

    def __init__(self) -> None:
        self._behind: set[tuple[str, int, str]] = set()
        self._switched: dict[tuple[str, int, str], float] = {}

    def stamp(self, views: list[DeploymentView], now: float) -> list[DeploymentView]:
        stamped = []
        for d in views:
            self._forget_before(d.name, d.revision)
            workers = []
            for w in d.workers:
                key = (d.name, d.revision, w.worker_id)
                if not (w.converged and w.revision == d.revision):
                    self._behind.add(key)
                elif key in self._behind and key not in self._switched and d.updated_at_s:
                    self._switched[key] = max(0.0, now - d.updated_at_s)
                workers.append(replace(w, switched_s=self._switched.get(key)))
            stamped.append(replace(d, workers=workers))
        return stamped

    def _forget_before(self, deployment: str, revision: int) -> None:
        """Only each deployment's current revision is timed: older keys go (memory stays bounded)."""

        def current(key: tuple[str, int, str]) -> bool:
            return key[0] != deployment or key[1] >= revision

        self._behind = {k for k in self._behind if current(k)}
        self._switched = {k: s for k, s in self._switched.items() if current(k)}
