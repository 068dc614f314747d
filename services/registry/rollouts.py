"""Workers and rollouts: heartbeats, lost workers, and "has deployment X converged on revision N",
waited for on per-deployment events that heartbeats and deployment changes set."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Sequence

from modelyard.common.errors import InvalidArgument
from modelyard.common.states import VersionState, WorkerState
from modelyard.registry import repository as repo
from modelyard.registry import validation
from modelyard.registry.broadcast import DeploymentBroadcast
from modelyard.registry.db import Database
from modelyard.registry.deployments import find_deployment
from modelyard.registry.domain import Deployment, DeploymentEvent, RolloutStatus, WorkerRollout, WorkerStatus

# After a wake-up a waiter reads the database at most this often: while a fleet heartbeats, every
# report naming its deployment wakes it, and one read per report would be one read per worker-second.
MIN_READ_INTERVAL_S = 0.05
# Workers remembered per replica (see `Rollouts._served`); the oldest are forgotten beyond it, which
# only costs a forgotten worker's waiters the safety poll.
MAX_REMEMBERED_WORKERS = 20_000


class Wakeups:
    """Per-key events, after Ray Serve's long poll: a waiter takes the key's current event *before*
    it reads the state, so a wake-up that lands during the read is never lost."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, key: str) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    def wake(self, key: str) -> None:
        # Popped, so the next waiter gets a fresh event and keys nobody waits on cost nothing.
        event = self._events.pop(key, None)
        if event is not None:
            event.set()


class Rollouts:
    """Heartbeats and rollout status. A wait wakes when a heartbeat for the deployment reaches this
    replica or the deployment changes (broadcast); heartbeats that land on another replica are seen
    by a slow safety poll, as are workers turning lost or dropped with time."""

    def __init__(
        self,
        db: Database,
        broadcast: DeploymentBroadcast,
        *,
        heartbeat_ttl_s: float,
        lost_worker_window_s: float,
        poll_interval_s: float,
        live_window_s: float = 180.0,
        live_sample_interval_s: float = 5.0,
    ) -> None:
        # Set by every heartbeat with counters reaching this replica (see `PlanDriver`).
        self.counters_arrived = asyncio.Event()
        self.db = db
        # A heartbeat's counters join the worker's history at most this often, kept this long.
        self.live_sample_every = dt.timedelta(seconds=live_sample_interval_s)
        self.live_keep = dt.timedelta(seconds=live_window_s)
        self.heartbeat_ttl = dt.timedelta(seconds=heartbeat_ttl_s)
        self.lost_worker_window = dt.timedelta(seconds=lost_worker_window_s)
        self.poll_interval_s = poll_interval_s
        self._wakeups = Wakeups()
        # What each worker last reported here, so that a report no longer naming a deployment (the
        # worker left it) still wakes that deployment's waiters.
        self._served: dict[str, frozenset[str]] = {}
        broadcast.subscribe(self._deployment_changed)

    def _deployment_changed(self, event: DeploymentEvent) -> None:
        self._wakeups.wake(event.deployment.name)

    async def report_status(self, status: WorkerStatus) -> None:
        if not status.worker_id:
            raise InvalidArgument("worker_id is required in a status report")
        if status.counters is not None:
            validation.check_live_counters(status.counters)
        async with self.db.connection() as conn:
            await repo.upsert_worker(
                conn, status=status, sample_every=self.live_sample_every, keep=self.live_keep
            )
        served = frozenset(d.deployment for d in status.deployments)
        for name in served | self._served.pop(status.worker_id, frozenset()):
            self._wakeups.wake(name)
        if status.counters is not None:
            self.counters_arrived.set()  # new evidence: the rollout plan driver may judge at once
        if status.state != WorkerState.STOPPING:
            self._served[status.worker_id] = served  # re-inserted: the dict stays oldest-first
            if len(self._served) > MAX_REMEMBERED_WORKERS:
                del self._served[next(iter(self._served))]

    async def list_workers(self, *, deployment: str, include_stale: bool) -> list[WorkerStatus]:
        async with self.db.connection() as conn:
            workers = await repo.list_workers(conn, live_within=self.heartbeat_ttl, deployment=deployment)
        return [w for w in workers if include_stale or w.live]

    async def all_rollouts(self) -> list[RolloutStatus]:
        """Rollout of every deployment at its current revision."""
        async with self.db.connection() as conn:
            deployments = await repo.list_deployments(conn)
            workers = await repo.list_workers(conn, live_within=self.heartbeat_ttl)
        now = dt.datetime.now(dt.UTC)
        return [
            rollout(d, d.revision, workers, now=now, lost_window=self.lost_worker_window) for d in deployments
        ]

    async def rollout_status(self, name: str, *, revision: int, wait_timeout_s: float) -> RolloutStatus:
        """Where `name` stands on `revision` (0: its current one); with a timeout, the first status
        that is converged, or the last one read when the time is up."""
        deadline = time.monotonic() + max(wait_timeout_s, 0.0)
        while True:
            woken = self._wakeups.event(name)
            read_at = time.monotonic()
            status = await self._read(name, revision)
            left = deadline - time.monotonic()
            if status.converged or left <= 0:
                return status
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(self.poll_interval_s, left))
            await asyncio.sleep(max(0.0, min(read_at + MIN_READ_INTERVAL_S, deadline) - time.monotonic()))

    async def _read(self, name: str, revision: int) -> RolloutStatus:
        async with self.db.connection() as conn:
            deployment = await find_deployment(conn, name)
            workers = await repo.list_workers(conn, live_within=self.heartbeat_ttl, deployment=name)
        return rollout(
            deployment,
            revision or deployment.revision,
            workers,
            now=dt.datetime.now(dt.UTC),
            lost_window=self.lost_worker_window,
        )


def rollout(
    deployment: Deployment,
    revision: int,
    workers: Sequence[WorkerStatus],
    *,
    now: dt.datetime,
    lost_window: dt.timedelta,
) -> RolloutStatus:
    """Where each worker serving `deployment` stands on `revision`.

    A worker whose last heartbeat said `stopping` left on purpose and is not counted. One that went
    silent without saying so (crashed, partitioned, SIGKILLed) is *lost* until `lost_window` after
    its last heartbeat, and a rollout with a lost worker is not converged: the fleet may be short of
    a replica. After the window it is dropped, so a fleet scaled down without a clean stop
    converges again eventually.
    """
    wanted = {r.version for r in deployment.routes}
    rollouts = []
    for worker in workers:
        status = next((d for d in worker.deployments if d.deployment == deployment.name), None)
        if status is None or worker.state == WorkerState.STOPPING:
            continue
        if not worker.live:
            silent = now - worker.last_seen if worker.last_seen else lost_window
            if silent >= lost_window:
                continue
            detail = f"lost: no heartbeat for {silent.total_seconds():.0f} s"
            rollouts.append(
                WorkerRollout(
                    worker.worker_id, status.revision, False, detail, lost=True, last_seen=worker.last_seen
                )
            )
            continue
        serving = {v.version for v in status.versions if v.state == VersionState.SERVING}
        failed = [f"{v.version}: {v.last_error}" for v in status.versions if v.state == VersionState.FAILED]
        missing = sorted(wanted - serving)
        converged = status.revision >= revision and not missing
        if converged:
            detail = "converged"
        elif failed:
            detail = "failed " + "; ".join(failed)
        elif status.revision < revision:
            detail = f"at revision {status.revision}"
        else:
            detail = f"loading {', '.join(missing)}"
        rollouts.append(
            WorkerRollout(worker.worker_id, status.revision, converged, detail, last_seen=worker.last_seen)
        )
    return RolloutStatus(
        deployment=deployment.name,
        revision=revision,
        converged=bool(rollouts) and all(r.converged for r in rollouts),
        workers=rollouts,
    )
