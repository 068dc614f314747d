"""Keeps the worker in step with the registry: follows WatchDeployments (resuming from the last
revision after a disconnect, with backoff) and sends ReportStatus heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from modelyard.api import registry_pb2 as rpb
from modelyard.api import registry_pb2_grpc as rpb_grpc
from modelyard.common.channel import open_channel
from modelyard.common.log import event
from modelyard.common.settings import ClientSettings
from modelyard.inference.converters import deployment_from_registry
from modelyard.inference.deployments import DeploymentApplier

log = logging.getLogger("modelyard.inference.registry")

_STATES = {
    "LOADING": rpb.LOADING,
    "SERVING": rpb.SERVING,
    "DRAINING": rpb.DRAINING,
    "FAILED": rpb.FAILED,
}


class RegistrySync:
    """Two owned tasks: the watch loop and the heartbeat loop."""

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
    ) -> None:
        self.address = address
        self.applier = applier
        self.deployments = list(deployments)
        self.worker_id = worker_id
        self.advertise_address = advertise_address
        self._client = client
        self._heartbeat_s = heartbeat_interval_s
        self._backoff = (reconnect_initial_s, reconnect_max_s)
        self.revision = 0
        self.connected = asyncio.Event()
        self.state = "starting"
        self._changed = asyncio.Event()
        self._channel: aio.Channel | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def notify_change(self) -> None:
        self._changed.set()

    async def start(self) -> None:
        self._channel = open_channel(self.address, self._client)
        self._tasks = [
            asyncio.create_task(self._watch_forever(), name="registry-watch"),
            asyncio.create_task(self._heartbeat_forever(), name="registry-heartbeat"),
        ]

    async def stop(self) -> None:
        """Send a last `stopping` heartbeat (best effort), then cancel both loops."""
        self.state = "stopping"
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(grpc.RpcError, asyncio.TimeoutError, AttributeError):
            await asyncio.wait_for(self._report(), 1.0)
        if self._channel is not None:
            await self._channel.close(None)

    # --- watch ----------------------------------------------------------------------------------
    async def _watch_forever(self) -> None:
        initial, ceiling = self._backoff
        delay = initial
        while True:
            assert self._channel is not None
            stub = rpb_grpc.RegistryServiceStub(self._channel)
            request = rpb.WatchDeploymentsRequest(deployments=self.deployments, since_revision=self.revision)
            try:
                call = stub.WatchDeployments(request)
                async for message in call:
                    if not self.connected.is_set():
                        event(
                            log,
                            "registry.connected",
                            address=self.address,
                            since_revision=request.since_revision,
                        )
                    self.connected.set()
                    delay = initial
                    self._handle(message)
                reason = "stream ended"
            except grpc.RpcError as exc:
                reason = (
                    f"{exc.code().name}: {exc.details()}" if isinstance(exc, aio.AioRpcError) else str(exc)
                )
            self.connected.clear()
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
            present = {d.name for d in message.deployments}
            for deployment in message.deployments:
                self.applier.submit(deployment_from_registry(deployment))
            for name in self.applier.table.deployments():
                if name not in present:
                    self.applier.delete(name)
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

    # --- heartbeats -----------------------------------------------------------------------------
    def worker_status(self) -> rpb.WorkerStatus:
        now = Timestamp()
        now.GetCurrentTime()
        applier = self.applier
        failing = any(v.state == "FAILED" for d in applier.status.values() for v in d.versions.values())
        state = self.state
        if state != "stopping":
            state = "starting" if not applier.table.any_routable else ("degraded" if failing else "serving")
        status = rpb.WorkerStatus(
            worker_id=self.worker_id,
            address=self.advertise_address,
            state=state,
            last_error=applier.last_error,
            last_seen=now,
            live=True,
        )
        for name, deployment in sorted(applier.status.items()):
            entry = status.deployments.add(deployment=name, revision=deployment.revision)
            for version, v in sorted(deployment.versions.items()):
                entry.versions.add(
                    version=version,
                    state=_STATES[v.state],
                    checkpoint_hash=v.checkpoint_hash,
                    device=v.device,
                    last_error=v.last_error,
                )
        return status

    async def _report(self) -> None:
        assert self._channel is not None
        stub = rpb_grpc.RegistryServiceStub(self._channel)
        response = await stub.ReportStatus(
            rpb.ReportStatusRequest(status=self.worker_status()), timeout=self._client.timeout_s
        )
        if response.heartbeat_interval_ms > 0:
            self._heartbeat_s = response.heartbeat_interval_ms / 1000

    async def _heartbeat_forever(self) -> None:
        while True:
            self._changed.clear()
            try:
                await self._report()
            except grpc.RpcError as exc:
                detail = exc.code().name if isinstance(exc, aio.AioRpcError) else str(exc)
                event(log, "registry.heartbeat_failed", level=logging.DEBUG, error=detail)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._heartbeat_s)
