"""gRPC servicer of modelyard.registry.v1.RegistryService: converts messages, calls the concern
services of `Registry` (catalog, aliases, deployments, rollouts, ...); nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from modelyard.api import registry_pb2 as pb
from modelyard.api import registry_pb2_grpc
from modelyard.common.auth import AccessPolicy, Role
from modelyard.common.interceptors import current_actor
from modelyard.common.states import (
    EVENT_KIND_TO_PB,
    RUN_STATUS_FROM_PB,
    VERSION_STATUS_FROM_PB,
    EventKind,
    VersionStatus,
)
from modelyard.registry import converters as cv
from modelyard.registry.broadcast import WATCHERS
from modelyard.registry.domain import Deployment, Model
from modelyard.registry.service import Registry

READ_METHODS = (
    "GetModel",
    "ListModels",
    "GetVersion",
    "ListVersions",
    "ListAliases",
    "GetDeployment",
    "ListDeployments",
    "CheckCompatibility",
    "WatchDeployments",
    "ListAuditEvents",
    "ListWorkers",
    "GetRolloutStatus",
    "GetRolloutPlan",
    "GetBenchmarkRun",
    "ListBenchmarkRuns",
    "GetVersionMetrics",
    "ExportRegistry",
)
# Who may call what when tokens are configured; every other RPC (each change) is admin-only.
POLICY = AccessPolicy.of(
    {
        READ_METHODS: (Role.READER, Role.WORKER, Role.BENCHMARK),
        ("ReportStatus",): (Role.WORKER,),
        # Live figures are for people and their tools (CLI, console, rollout decisions in the
        # registry itself); no worker or benchmark pod needs them.
        ("GetLiveMetrics",): (Role.READER,),
        ("StageVersion", "UnstageVersion", "RecordBenchmarkRun"): (Role.BENCHMARK,),
    }
)

Ctx = aio.ServicerContext


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry, heartbeat_interval_ms: int) -> None:
        self.registry = registry
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._changes: dict[int, pb.WatchDeploymentsResponse] = {}

    async def CreateModel(self, request: pb.CreateModelRequest, context: Ctx) -> pb.Model:
        model = Model(
            model_id=request.model_id,
            model_type=cv.model_type_from_pb(request.model_type, required=True),
            description=request.description,
            tags=dict(request.tags),
        )
        return cv.model_to_pb(await self.registry.catalog.create_model(model, actor=current_actor()))

    async def GetModel(self, request: pb.GetModelRequest, context: Ctx) -> pb.Model:
        return cv.model_to_pb(await self.registry.catalog.get_model(request.model_id))

    async def ListModels(self, request: pb.ListModelsRequest, context: Ctx) -> pb.ListModelsResponse:
        page = await self.registry.catalog.list_models(
            model_type=cv.model_type_from_pb(request.model_type),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListModelsResponse(
            models=[cv.model_to_pb(m) for m in page.items], next_page_token=page.next_page_token
        )

    async def RegisterVersion(self, request: pb.RegisterVersionRequest, context: Ctx) -> pb.ModelVersion:
        version = await self.registry.catalog.register_version(
            cv.version_from_pb(request.version),
            actor=current_actor(),
            create_model=request.create_model,
            model_type=cv.model_type_from_pb(request.model_type),
        )
        return cv.version_to_pb(version)

    async def GetVersion(self, request: pb.GetVersionRequest, context: Ctx) -> pb.ModelVersion:
        return cv.version_to_pb(await self.registry.catalog.get_version(request.model_id, request.version))

    async def ListVersions(self, request: pb.ListVersionsRequest, context: Ctx) -> pb.ListVersionsResponse:
        page = await self.registry.catalog.list_versions(
            model_id=request.model_id,
            model_type=cv.model_type_from_pb(request.model_type),
            tags=list(request.tags),
            status=VERSION_STATUS_FROM_PB.get(request.status, ""),
            alias=request.alias,
            query=request.query,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListVersionsResponse(
            versions=[cv.version_to_pb(v) for v in page.items], next_page_token=page.next_page_token
        )

    async def UpdateVersion(self, request: pb.UpdateVersionRequest, context: Ctx) -> pb.ModelVersion:
        version = await self.registry.catalog.update_version(
            request.model_id,
            request.version,
            set_tags=dict(request.set_tags),
            remove_tags=list(request.remove_tags),
            description=request.description if request.HasField("description") else None,
            status=VERSION_STATUS_FROM_PB.get(request.status, ""),
            actor=current_actor(),
            reason=request.reason,
        )
        return cv.version_to_pb(version)

    async def ArchiveVersion(self, request: pb.ArchiveVersionRequest, context: Ctx) -> pb.ModelVersion:
        version = await self.registry.catalog.update_version(
            request.model_id,
            request.version,
            set_tags={},
            remove_tags=[],
            description=None,
            status=VersionStatus.ARCHIVED,
            actor=current_actor(),
            reason=request.reason,
        )
        return cv.version_to_pb(version)

    async def CleanupVersions(
        self, request: pb.CleanupVersionsRequest, context: Ctx
    ) -> pb.CleanupVersionsResponse:
        cleanup = await self.registry.catalog.cleanup_versions(
            request.model_id,
            keep_last=request.keep_last,
            dry_run=request.dry_run,
            skip_in_use=request.skip_in_use,
            actor=current_actor(),
            reason=request.reason,
        )
        return pb.CleanupVersionsResponse(
            removed=cleanup.removed, kept_in_use=cleanup.kept_in_use, dry_run=request.dry_run
        )

    async def SetAlias(self, request: pb.SetAliasRequest, context: Ctx) -> pb.SetAliasResponse:
        promotion = await self.registry.aliases.set_alias(
            request.model_id,
            request.alias,
            request.version,
            gates=list(request.gates),
            gate_suite=request.gate_suite,
            acknowledge_incompatible=request.acknowledge_incompatible,
            actor=current_actor(),
            reason=request.reason,
        )
        return cv.promotion_to_pb(promotion)

    async def PromoteVersion(self, request: pb.PromoteVersionRequest, context: Ctx) -> pb.SetAliasResponse:
        promotion = await self.registry.aliases.promote(
            request.deployment,
            request.version,
            alias=request.alias,
            gates=list(request.gates),
            gate_suite=request.gate_suite,
            acknowledge_incompatible=request.acknowledge_incompatible,
            actor=current_actor(),
            reason=request.reason,
        )
        return cv.promotion_to_pb(promotion)

    async def DeleteAlias(self, request: pb.DeleteAliasRequest, context: Ctx) -> pb.DeleteAliasResponse:
        await self.registry.aliases.delete_alias(
            request.model_id, request.alias, actor=current_actor(), reason=request.reason
        )
        return pb.DeleteAliasResponse()

    async def ListAliases(self, request: pb.ListAliasesRequest, context: Ctx) -> pb.ListAliasesResponse:
        aliases = await self.registry.aliases.list_aliases(request.model_id)
        return pb.ListAliasesResponse(aliases=[cv.alias_to_pb(a) for a in aliases])

    async def CreateDeployment(self, request: pb.CreateDeploymentRequest, context: Ctx) -> pb.Deployment:
        deployment = await self.registry.deployments.create_deployment(
            name=request.name,
            model_id=request.model_id,
            routes=cv.routes_from_pb(list(request.routes)),
            follow_alias=request.follow_alias,
            description=request.description,
            actor=current_actor(),
            reason=request.reason,
        )
        return cv.deployment_to_pb(deployment)

    async def GetDeployment(self, request: pb.GetDeploymentRequest, context: Ctx) -> pb.Deployment:
        return cv.deployment_to_pb(await self.registry.deployments.get_deployment(request.name))

    async def ListDeployments(
        self, request: pb.ListDeploymentsRequest, context: Ctx
    ) -> pb.ListDeploymentsResponse:
        deployments = await self.registry.deployments.list_deployments(request.model_id)
        return pb.ListDeploymentsResponse(deployments=[cv.deployment_to_pb(d) for d in deployments])

    async def SetRoutes(self, request: pb.SetRoutesRequest, context: Ctx) -> pb.Deployment:
        deployment = await self.registry.deployments.set_routes(
            request.name,
            cv.routes_from_pb(list(request.routes)),
            acknowledge_incompatible=request.acknowledge_incompatible,
            expected_revision=request.expected_revision,
            actor=current_actor(),
            reason=request.reason,
        )
        return cv.deployment_to_pb(deployment)

    async def RollbackDeployment(self, request: pb.RollbackDeploymentRequest, context: Ctx) -> pb.Deployment:
        deployment = await self.registry.deployments.rollback(
            request.name,
            to_revision=request.to_revision,
            acknowledge_incompatible=request.acknowledge_incompatible,
            actor=current_actor(),
            reason=request.reason,
        )
        return cv.deployment_to_pb(deployment)

    async def DeleteDeployment(
        self, request: pb.DeleteDeploymentRequest, context: Ctx
    ) -> pb.DeleteDeploymentResponse:
        revision = await self.registry.deployments.delete_deployment(
            request.name, actor=current_actor(), reason=request.reason
        )
        return pb.DeleteDeploymentResponse(revision=revision)

    async def CheckCompatibility(
        self, request: pb.CheckCompatibilityRequest, context: Ctx
    ) -> pb.CheckCompatibilityResponse:
        differences = await self.registry.deployments.check_compatibility(
            request.deployment, request.model_id, request.version
        )
        return pb.CheckCompatibilityResponse(compatible=not differences, differences=differences)

    async def StageVersion(self, request: pb.StageVersionRequest, context: Ctx) -> pb.Deployment:
        deployment = await self.registry.deployments.stage_version(
            request.name, request.version, actor=current_actor(), reason=request.reason
        )
        return cv.deployment_to_pb(deployment)

    async def UnstageVersion(self, request: pb.UnstageVersionRequest, context: Ctx) -> pb.Deployment:
        deployment = await self.registry.deployments.unstage_version(
            request.name, request.version, actor=current_actor(), reason=request.reason
        )
        return cv.deployment_to_pb(deployment)

    async def WatchDeployments(
        self, request: pb.WatchDeploymentsRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchDeploymentsResponse]:
        WATCHERS.inc()
        try:
            async for kind, revision, deployments, action in self.registry.broadcast.watch(
                list(request.deployments), request.since_revision
            ):
                if kind == EventKind.SNAPSHOT:
                    yield _watch_response(kind, revision, deployments, action)
                    continue
                # Every watcher of this replica gets the same message for a change: convert it once.
                message = self._changes.get(revision)
                if message is None:
                    message = _watch_response(kind, revision, deployments, action)
                    self._changes[revision] = message
                    while len(self._changes) > 256:
                        self._changes.pop(next(iter(self._changes)))
                yield message
        finally:
            WATCHERS.dec()

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Ctx
    ) -> pb.ListAuditEventsResponse:
        page = await self.registry.history.list_audit(
            entity_type=request.entity_type,
            entity_id=request.entity_id,
            action=request.action,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListAuditEventsResponse(
            events=[cv.audit_to_pb(e) for e in page.items], next_page_token=page.next_page_token
        )

    async def ReportStatus(self, request: pb.ReportStatusRequest, context: Ctx) -> pb.ReportStatusResponse:
        await self.registry.rollouts.report_status(cv.worker_from_pb(request.status))
        return pb.ReportStatusResponse(heartbeat_interval_ms=self.heartbeat_interval_ms)

    async def ListWorkers(self, request: pb.ListWorkersRequest, context: Ctx) -> pb.ListWorkersResponse:
        workers = await self.registry.rollouts.list_workers(
            deployment=request.deployment, include_stale=request.include_stale
        )
        return pb.ListWorkersResponse(workers=[cv.worker_to_pb(w) for w in workers])

    async def GetRolloutStatus(self, request: pb.GetRolloutStatusRequest, context: Ctx) -> pb.RolloutStatus:
        status = await self.registry.rollouts.rollout_status(
            request.deployment, revision=request.revision, wait_timeout_s=request.wait_timeout_ms / 1000
        )
        return cv.rollout_to_pb(status)

    async def GetLiveMetrics(self, request: pb.GetLiveMetricsRequest, context: Ctx) -> pb.LiveMetrics:
        metrics = await self.registry.live.live_metrics(request.deployment, window_s=request.window_s)
        return cv.live_metrics_to_pb(metrics)

    async def StartRolloutPlan(self, request: pb.StartRolloutPlanRequest, context: Ctx) -> pb.RolloutPlan:
        plan = await self.registry.plans.start(
            request.deployment,
            request.version,
            steps=list(request.steps),
            step_duration_s=request.step_duration_s,
            guards=list(request.guards),
            min_requests=request.min_requests,
            warmup_s=request.warmup_s,
            shadow_percent=request.shadow_percent,
            acknowledge_incompatible=request.acknowledge_incompatible,
            actor=current_actor(),
            reason=request.reason,
        )
        return cv.plan_to_pb(plan)

    async def GetRolloutPlan(self, request: pb.GetRolloutPlanRequest, context: Ctx) -> pb.RolloutPlan:
        return cv.plan_to_pb(await self.registry.plans.get(request.deployment))

    async def PauseRolloutPlan(self, request: pb.RolloutPlanControlRequest, context: Ctx) -> pb.RolloutPlan:
        plans = self.registry.plans
        return cv.plan_to_pb(
            await plans.pause(request.deployment, actor=current_actor(), reason=request.reason)
        )

    async def ResumeRolloutPlan(self, request: pb.RolloutPlanControlRequest, context: Ctx) -> pb.RolloutPlan:
        plans = self.registry.plans
        return cv.plan_to_pb(
            await plans.resume(request.deployment, actor=current_actor(), reason=request.reason)
        )

    async def AbortRolloutPlan(self, request: pb.RolloutPlanControlRequest, context: Ctx) -> pb.RolloutPlan:
        plans = self.registry.plans
        return cv.plan_to_pb(
            await plans.abort(request.deployment, actor=current_actor(), reason=request.reason)
        )

    async def RecordBenchmarkRun(
        self, request: pb.RecordBenchmarkRunRequest, context: Ctx
    ) -> pb.BenchmarkRun:
        run = await self.registry.performance.record_run(cv.run_from_pb(request.run), actor=current_actor())
        return cv.run_to_pb(run)

    async def GetBenchmarkRun(self, request: pb.GetBenchmarkRunRequest, context: Ctx) -> pb.BenchmarkRun:
        run = await self.registry.performance.get_run(
            request.run_id, with_samples=not request.without_samples
        )
        return cv.run_to_pb(run)

    async def ListBenchmarkRuns(
        self, request: pb.ListBenchmarkRunsRequest, context: Ctx
    ) -> pb.ListBenchmarkRunsResponse:
        page = await self.registry.performance.list_runs(
            model_id=request.model_id,
            version=request.version,
            suite=request.suite,
            status=RUN_STATUS_FROM_PB.get(request.status, ""),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListBenchmarkRunsResponse(
            runs=[cv.run_to_pb(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def GetVersionMetrics(
        self, request: pb.GetVersionMetricsRequest, context: Ctx
    ) -> pb.GetVersionMetricsResponse:
        metrics = await self.registry.performance.version_metrics(
            request.model_id, request.version, request.suite
        )
        return pb.GetVersionMetricsResponse(metrics=[cv.version_metric_to_pb(m) for m in metrics])

    async def ExportRegistry(
        self, request: pb.ExportRegistryRequest, context: Ctx
    ) -> pb.ExportRegistryResponse:
        return pb.ExportRegistryResponse(json=await self.registry.transfer.export_json())

    async def ImportRegistry(
        self, request: pb.ImportRegistryRequest, context: Ctx
    ) -> pb.ImportRegistryResponse:
        counts = await self.registry.transfer.import_json(request.json, actor=current_actor())
        return cv.import_counts_to_pb(counts)


def _watch_response(
    kind: str, revision: int, deployments: list[Deployment], action: str
) -> pb.WatchDeploymentsResponse:
    return pb.WatchDeploymentsResponse(
        kind=EVENT_KIND_TO_PB[kind],
        revision=revision,
        deployments=[cv.deployment_to_pb(d) for d in deployments],
        action=action,
    )
