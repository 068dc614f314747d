"""`RegistryClient`: every RPC of `modelyard.registry.v1.RegistryService`, with deadlines, the token,
one error type, and retries of calls that change nothing (reads, heartbeats, staging)."""

from __future__ import annotations

from modelyard.api import registry_pb2 as pb
from modelyard.client.rpc import AsyncClient, ServerStream, SyncClient, Unary

SERVICE = pb.DESCRIPTOR.services_by_name["RegistryService"].full_name


class _RegistryRpcs:
    """The service's RPCs, once for both client flavours (snake_case names of the proto's)."""

    service = SERVICE
    create_model = Unary("CreateModel", pb.CreateModelRequest, pb.Model)
    get_model = Unary("GetModel", pb.GetModelRequest, pb.Model, idempotent=True)
    list_models = Unary("ListModels", pb.ListModelsRequest, pb.ListModelsResponse, idempotent=True)
    register_version = Unary("RegisterVersion", pb.RegisterVersionRequest, pb.ModelVersion)
    get_version = Unary("GetVersion", pb.GetVersionRequest, pb.ModelVersion, idempotent=True)
    list_versions = Unary("ListVersions", pb.ListVersionsRequest, pb.ListVersionsResponse, idempotent=True)
    update_version = Unary("UpdateVersion", pb.UpdateVersionRequest, pb.ModelVersion)
    archive_version = Unary("ArchiveVersion", pb.ArchiveVersionRequest, pb.ModelVersion)
    cleanup_versions = Unary("CleanupVersions", pb.CleanupVersionsRequest, pb.CleanupVersionsResponse)
    set_alias = Unary("SetAlias", pb.SetAliasRequest, pb.SetAliasResponse)
    promote_version = Unary("PromoteVersion", pb.PromoteVersionRequest, pb.SetAliasResponse)
    delete_alias = Unary("DeleteAlias", pb.DeleteAliasRequest, pb.DeleteAliasResponse)
    list_aliases = Unary("ListAliases", pb.ListAliasesRequest, pb.ListAliasesResponse, idempotent=True)
    create_deployment = Unary("CreateDeployment", pb.CreateDeploymentRequest, pb.Deployment)
    get_deployment = Unary("GetDeployment", pb.GetDeploymentRequest, pb.Deployment, idempotent=True)
    list_deployments = Unary(
        "ListDeployments", pb.ListDeploymentsRequest, pb.ListDeploymentsResponse, idempotent=True
    )
    set_routes = Unary("SetRoutes", pb.SetRoutesRequest, pb.Deployment)
    rollback_deployment = Unary("RollbackDeployment", pb.RollbackDeploymentRequest, pb.Deployment)
    delete_deployment = Unary("DeleteDeployment", pb.DeleteDeploymentRequest, pb.DeleteDeploymentResponse)
    check_compatibility = Unary(
        "CheckCompatibility", pb.CheckCompatibilityRequest, pb.CheckCompatibilityResponse, idempotent=True
    )
    stage_version = Unary("StageVersion", pb.StageVersionRequest, pb.Deployment, idempotent=True)
    unstage_version = Unary("UnstageVersion", pb.UnstageVersionRequest, pb.Deployment, idempotent=True)
    list_audit_events = Unary(
        "ListAuditEvents", pb.ListAuditEventsRequest, pb.ListAuditEventsResponse, idempotent=True
    )
    report_status = Unary("ReportStatus", pb.ReportStatusRequest, pb.ReportStatusResponse, idempotent=True)
    list_workers = Unary("ListWorkers", pb.ListWorkersRequest, pb.ListWorkersResponse, idempotent=True)
    get_rollout_status = Unary(
        "GetRolloutStatus", pb.GetRolloutStatusRequest, pb.RolloutStatus, idempotent=True
    )
    get_live_metrics = Unary("GetLiveMetrics", pb.GetLiveMetricsRequest, pb.LiveMetrics, idempotent=True)
    start_rollout_plan = Unary("StartRolloutPlan", pb.StartRolloutPlanRequest, pb.RolloutPlan)
    get_rollout_plan = Unary("GetRolloutPlan", pb.GetRolloutPlanRequest, pb.RolloutPlan, idempotent=True)
    pause_rollout_plan = Unary("PauseRolloutPlan", pb.RolloutPlanControlRequest, pb.RolloutPlan)
    resume_rollout_plan = Unary("ResumeRolloutPlan", pb.RolloutPlanControlRequest, pb.RolloutPlan)
    abort_rollout_plan = Unary("AbortRolloutPlan", pb.RolloutPlanControlRequest, pb.RolloutPlan)
    record_benchmark_run = Unary("RecordBenchmarkRun", pb.RecordBenchmarkRunRequest, pb.BenchmarkRun)
    get_benchmark_run = Unary("GetBenchmarkRun", pb.GetBenchmarkRunRequest, pb.BenchmarkRun, idempotent=True)
    list_benchmark_runs = Unary(
        "ListBenchmarkRuns", pb.ListBenchmarkRunsRequest, pb.ListBenchmarkRunsResponse, idempotent=True
    )
    get_version_metrics = Unary(
        "GetVersionMetrics", pb.GetVersionMetricsRequest, pb.GetVersionMetricsResponse, idempotent=True
    )
    export_registry = Unary(
        "ExportRegistry", pb.ExportRegistryRequest, pb.ExportRegistryResponse, idempotent=True
    )
    import_registry = Unary("ImportRegistry", pb.ImportRegistryRequest, pb.ImportRegistryResponse)
    # A snapshot, then every change; resume with since_revision. No deadline: it is long-lived.
    watch_deployments = ServerStream(
        "WatchDeployments", pb.WatchDeploymentsRequest, pb.WatchDeploymentsResponse
    )


class RegistryClient(_RegistryRpcs, AsyncClient):
    """The registry over grpc.aio: `async with RegistryClient("host:50051") as registry: ...`."""


class SyncRegistryClient(_RegistryRpcs, SyncClient):
    """The registry, blocking: `with SyncRegistryClient("host:50051") as registry: ...`."""
