"""The states every service names, once: string enums, so they compare equal to the lowercase
strings stored in PostgreSQL and in JSON, and each maps one-to-one to its protobuf enum."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from modelyard.api import registry_pb2 as pb


class VersionStatus(StrEnum):
    """A registered version's place in the catalog (protobuf `VersionStatus`)."""

    READY = "ready"
    ARCHIVED = "archived"  # kept for history and rollback targets; never routed or promoted


class VersionState(StrEnum):
    """A version on one worker (protobuf `VersionState`)."""

    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"  # routed away; finishing the requests it holds, then unloaded
    FAILED = "failed"  # its load failed; retried with backoff while it stays routed


class WorkerState(StrEnum):
    """A worker as a whole, in its heartbeats."""

    STARTING = "starting"  # nothing routable yet
    SERVING = "serving"
    DEGRADED = "degraded"  # serving, but some routed version failed to load
    STOPPING = "stopping"  # left on purpose: rollouts stop counting it


class RunStatus(StrEnum):
    """A benchmark run (protobuf `RunStatus`)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class PlanState(StrEnum):
    """A rollout plan (protobuf `RolloutPlanState`); running and paused plans are active."""

    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @property
    def active(self) -> bool:
        return self in (PlanState.RUNNING, PlanState.PAUSED)


class EventKind(StrEnum):
    """A deployment event on the broadcast (protobuf `WatchDeploymentsResponse.Kind`)."""

    SNAPSHOT = "snapshot"
    UPSERTED = "upserted"
    DELETED = "deleted"


N = TypeVar("N", bound=int)


def _both_ways(pairs: dict[str, N]) -> tuple[dict[str, N], dict[N, str]]:
    return pairs, {number: name for name, number in pairs.items()}


# The protobuf numbers, once. Lookups with plain strings work too (a StrEnum hashes as its value).
VERSION_STATUS_TO_PB, VERSION_STATUS_FROM_PB = _both_ways(
    {VersionStatus.READY: pb.VERSION_STATUS_READY, VersionStatus.ARCHIVED: pb.VERSION_STATUS_ARCHIVED}
)
VERSION_STATE_TO_PB, VERSION_STATE_FROM_PB = _both_ways(
    {
        VersionState.LOADING: pb.LOADING,
        VersionState.SERVING: pb.SERVING,
        VersionState.DRAINING: pb.DRAINING,
        VersionState.FAILED: pb.FAILED,
    }
)
RUN_STATUS_TO_PB, RUN_STATUS_FROM_PB = _both_ways(
    {
        RunStatus.RUNNING: pb.RUN_STATUS_RUNNING,
        RunStatus.SUCCEEDED: pb.RUN_STATUS_SUCCEEDED,
        RunStatus.FAILED: pb.RUN_STATUS_FAILED,
    }
)
PLAN_STATE_TO_PB, PLAN_STATE_FROM_PB = _both_ways(
    {
        PlanState.RUNNING: pb.ROLLOUT_PLAN_RUNNING,
        PlanState.PAUSED: pb.ROLLOUT_PLAN_PAUSED,
        PlanState.SUCCEEDED: pb.ROLLOUT_PLAN_SUCCEEDED,
        PlanState.ROLLED_BACK: pb.ROLLOUT_PLAN_ROLLED_BACK,
        PlanState.ABORTED: pb.ROLLOUT_PLAN_ABORTED,
    }
)
EVENT_KIND_TO_PB: dict[str, pb.WatchDeploymentsResponse.Kind.ValueType] = {
    EventKind.SNAPSHOT: pb.WatchDeploymentsResponse.SNAPSHOT,
    EventKind.UPSERTED: pb.WatchDeploymentsResponse.UPSERTED,
    EventKind.DELETED: pb.WatchDeploymentsResponse.DELETED,
}
