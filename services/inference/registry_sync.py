"""Keeps the worker in step with the registry: follows WatchDeployments (resuming from the last
revision after a disconnect, with backoff), sends ReportStatus heartbeats, and, when the first
connection fails, serves the deployments last applied until the registry's snapshot replaces them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from modelyard.api import registry_pb2 as rpb
from modelyard.client import ClientSettings, ModelyardError, RegistryClient
from modelyard.common.log import event
from modelyard.common.states import VERSION_STATE_TO_PB, VersionState, WorkerState
from modelyard.inference import metrics
from modelyard.inference.converters import deployment_from_registry
from modelyard.inference.deployments import DeploymentApplier
from modelyard.inference.domain import DeploymentSpec
from modelyard.inference.live_counters import CountersSnapshot, LiveCounters

log = logging.getLogger("modelyard.inference.registry")


class RegistrySync:
    """Owned tasks: the watch loop, the heartbeat loop, and (with `stored`) the fallback watch.

    `stored` reads the deployments last applied (blocking; called in an executor only when needed).
    If no snapshot arrived `fallback_after_s` after start, or the first attempt failed sooner, they
    are applied from the verified cache and `fallback` is true until the registry's first snapshot
    has been applied. `on_state` is called whenever `following` or `fallback` may have changed.
    Every heartbeat carries a snapshot of `counters` (the data plane's) for the registry's live figures.
    """

    def __init__(
        self,
        address: str,
        applier: DeploymentApplier,
        *,
        deployments: list[str],
        worker_id: str,
        advertise_address: str,
        client: ClientSettings,
        heartbeat_interval_s: float = 2.0,
        reconnect_initial_s: float = 0.2,
        reconnect_max_s: float = 5.0,
        stored: Callable[[], Sequence[DeploymentSpec]] | None = None,
        fallback_after_s: float = 3.0,
        on_state: Callable[[], None] | None = None,
        counters: LiveCounters | None = None,
    ) -> None:
        self.address = address
        self.counters = counters or LiveCounters()
        self.applier = applier
        self.deployments = list(deployments)
        self.worker_id = worker_id
        self.advertise_address = advertise_address
        self._client = client
        self._heartbeat_s = heartbeat_interval_s
        self._backoff = (reconnect_initial_s, reconnect_max_s)
        self.revision = 0
        self.connected = asyncio.Event()
        self.state = WorkerState.STARTING
        self.fallback = False
        self._stored = stored
        self._fallback_after_s = fallback_after_s
        self._on_state = on_state or (lambda: None)
        self._attempted = asyncio.Event()  # the first watch attempt succeeded or failed
        self._snapshot_seen = False
        self._changed = asyncio.Event()
        self._registry: RegistryClient | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def following(self) -> bool:
        """Connected to the registry and serving what it says (not the stored deployments)."""
        return self.connected.is_set() and not self.fallback

    def notify_change(self) -> None:
        self._changed.set()

    async def start(self) -> None:
        self._registry = RegistryClient(self.address, self._client)
        self._tasks = [
            asyncio.create_task(self._watch_forever(), name="registry-watch"),
            asyncio.create_task(self._heartbeat_forever(), name="registry-heartbeat"),
        ]
        if self._stored is not None:
            self._tasks.append(
                asyncio.create_task(self._fall_back_unless_connected(), name="registry-fallback")
            )

    async def stop(self) -> None:
        """Cancel its tasks, then send a last `stopping` heartbeat (best effort)."""
        self.state = WorkerState.STOPPING
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(ModelyardError, asyncio.TimeoutError):
            await asyncio.wait_for(self._report(), 1.0)
        if self._registry is not None:
            await self._registry.close()

    # --- watch ----------------------------------------------------------------------------------
    async def _watch_forever(self) -> None:
        initial, ceiling = self._backoff
        delay = initial
        while True:
            assert self._registry is not None
            request = rpb.WatchDeploymentsRequest(deployments=self.deployments, since_revision=self.revision)
            try:
                async for message in self._registry.watch_deployments(request):
                    if not self.connected.is_set():
                        event(
                            log,
                            "registry.connected",
                            address=self.address,
                            since_revision=request.since_revision,
                        )
                        self.connected.set()
                        self._on_state()
                    self._attempted.set()
                    delay = initial
                    self._handle(message)
                reason = "stream ended"
            except ModelyardError as exc:
                reason = f"{exc.code.name}: {exc.message}"
            self._attempted.set()
            if self.connected.is_set():
                self.connected.clear()
                self._on_state()
            event(
                log,
                "registry.disconnected",
                level=logging.WARNING,
                address=self.address,
                reason=reason,
                retry_in_s=round(delay, 2),
                resume_after=self.revision,
            )
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(ceiling, delay * 2)

    def _handle(self, message: rpb.WatchDeploymentsResponse) -> None:
        kind = message.kind
        if kind == rpb.WatchDeploymentsResponse.SNAPSHOT:
            self._snapshot_seen = True
            present = {d.name for d in message.deployments}
            for deployment in message.deployments:
                self.applier.submit(deployment_from_registry(deployment))
            # Also what is still loading (stored deployments in fallback): the snapshot is the truth.
            absent = self.applier.names() - present
            for name in absent:
                self.applier.delete(name)
            if self.fallback:
                self._tasks.append(
                    asyncio.create_task(
                        self._end_fallback_once_applied(present | absent), name="registry-resync"
                    )
                )
        elif kind == rpb.WatchDeploymentsResponse.UPSERTED:
            for deployment in message.deployments:
                if not self.deployments or deployment.name in self.deployments:
                    self.applier.submit(deployment_from_registry(deployment))
        elif kind == rpb.WatchDeploymentsResponse.DELETED:
            for deployment in message.deployments:
                self.applier.delete(deployment.name)
        self.revision = max(self.revision, message.revision)
        event(
            log,
            "registry.event",
            kind=rpb.WatchDeploymentsResponse.Kind.Name(kind),
            revision=message.revision,
        )

    # --- fallback -------------------------------------------------------------------------------
    async def _fall_back_unless_connected(self) -> None:
        assert self._stored is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), self._fallback_after_s)
        if self._snapshot_seen:
            return
        loop = asyncio.get_running_loop()
        stored = await loop.run_in_executor(None, self._stored)
        wanted = [s for s in stored if not self.deployments or s.name in self.deployments]
        # Checked again after the read: a snapshot that arrived meanwhile wins over the file.
        if self._snapshot_seen or not wanted:
            if not wanted:
                event(log, "worker.no_fallback", level=logging.WARNING, address=self.address,
                      detail="no snapshot from the registry yet and no applied deployments stored")  # fmt: skip
            return
        self.fallback = True
        metrics.FALLBACK.set(1)
        event(
            log,
            "worker.fallback",
            level=logging.WARNING,
            address=self.address,
            deployments=",".join(f"{s.name}@{s.revision}" for s in wanted),
            detail="the registry is unreachable: serving the deployments last applied from the cache",
        )
        for spec in wanted:
            self.applier.submit(spec)
        self._on_state()

    async def _end_fallback_once_applied(self, names: set[str]) -> None:
        for name in sorted(names):
            await self.applier.settled(name)
        if not self.fallback:
            return
        self.fallback = False
        metrics.FALLBACK.set(0)
        event(log, "worker.fallback_ended", revision=self.revision)
        self.notify_change()  # tell the registry now, not at the next heartbeat
        self._on_state()

    # --- heartbeats -----------------------------------------------------------------------------
    def worker_status(self) -> rpb.WorkerStatus:
        now = Timestamp()
        now.GetCurrentTime()
        applier = self.applier
        failing = any(
            v.state == VersionState.FAILED for d in applier.status.values() for v in d.versions.values()
        )
        state = self.state
        if state != WorkerState.STOPPING:
            state = (
                WorkerState.STARTING
                if not applier.table.any_routable
                else (WorkerState.DEGRADED if failing else WorkerState.SERVING)
            )
        status = rpb.WorkerStatus(
            worker_id=self.worker_id,
            address=self.advertise_address,
            state=state,
            last_error=applier.last_error,
            last_seen=now,
            live=True,
            fallback=self.fallback,
        )
        for name, deployment in sorted(applier.status.items()):
            entry = status.deployments.add(deployment=name, revision=deployment.revision)
            for version, v in sorted(deployment.versions.items()):
                loaded = entry.versions.add(
                    version=version,
                    state=VERSION_STATE_TO_PB[v.state],
                    checkpoint_hash=v.checkpoint_hash,
                    device=v.device,
                    last_error=v.last_error,
                    attempts=v.attempts,
                )
                if v.next_attempt_at is not None:
                    loaded.next_attempt_at.FromNanoseconds(int(v.next_attempt_at * 1e9))
        present = {(name, version) for name, d in applier.status.items() for version in d.versions}
        serving = {
            (name, version)
            for name, d in applier.status.items()
            for version, v in d.versions.items()
            if v.state == VersionState.SERVING
        }
        _counters_to_pb(self.counters.snapshot(present, serving), status.counters)
        return status

    async def _report(self) -> None:
        assert self._registry is not None
        response = await self._registry.report_status(rpb.ReportStatusRequest(status=self.worker_status()))
        if response.heartbeat_interval_ms > 0:
            self._heartbeat_s = response.heartbeat_interval_ms / 1000

    async def _heartbeat_forever(self) -> None:
        while True:
            self._changed.clear()
            try:
                await self._report()
            except ModelyardError as exc:
                # An unreachable registry is expected (the watch loop says so); a refused report is
                # not, and its reason must be seen.
                level = logging.DEBUG if exc.code in _UNREACHABLE else logging.WARNING
                event(log, "registry.heartbeat_failed", level=level, error=exc.code.name, detail=exc.message)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._heartbeat_s)


_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def _counters_to_pb(snapshot: CountersSnapshot, out: rpb.LiveCounters) -> None:
    out.started_at.FromNanoseconds(snapshot.started_at_ns)
    out.uptime_s = snapshot.uptime_s
    for s in snapshot.series:
        out.versions.add(
            deployment=s.deployment,
            version=s.version,
            since_s=s.since_s,
            requests=s.requests,
            items=s.items,
            errors=s.errors,
            latency_buckets=s.buckets,
            latency_sum_s=s.latency_sum_s,
            drift=[
                rpb.DriftCounts(signal=signal, reference=reference, live=live)
                for signal, (reference, live) in sorted(s.drift.items())
            ],
            shadow_requests=s.shadow_requests,
            agreement_sum=s.agreement_sum,
            agreement_items=s.agreement_items,
        )
