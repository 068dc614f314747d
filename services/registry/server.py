"""The registry process: database, migrations, broadcast and gRPC server, started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import Gauge

from modelyard.api import registry_pb2, registry_pb2_grpc
from modelyard.common.log import event
from modelyard.common.server import GrpcServer, freeze_startup_objects, wait_for_shutdown_signal
from modelyard.registry.broadcast import DeploymentBroadcast
from modelyard.registry.db import CONNECTION_ERRORS, Database, migrate, start_embedded_postgres
from modelyard.registry.service import Registry
from modelyard.registry.servicer import WRITE_METHODS, RegistryServicer
from modelyard.registry.settings import RegistrySettings

log = logging.getLogger("modelyard.registry")

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
ROLLOUT_CONVERGED = Gauge(
    "modelyard_rollout_converged",
    "1 when every live worker of the deployment serves its current routes, else 0.",
    ["deployment"],
)


class RegistryServer:
    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.db: Database | None = None
        self.broadcast: DeploymentBroadcast | None = None
        self.grpc: GrpcServer | None = None
        self.database_url = settings.database_url
        self._rollout_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        assert self.grpc is not None
        return self.grpc.address

    @property
    def metrics_port(self) -> int | None:
        return self.grpc.metrics.port if self.grpc and self.grpc.metrics else None

    async def start(self) -> None:
        if not self.database_url:
            data_dir = self.settings.data_dir
            self.database_url = await asyncio.get_running_loop().run_in_executor(
                None, start_embedded_postgres, data_dir
            )
            event(log, "registry.embedded_postgres", data_dir=str(data_dir))
        await self._wait_for_database(self.database_url)
        self.db = await Database.open(self.database_url, max_size=self.settings.pool_max_size)
        self.broadcast = DeploymentBroadcast(self.db, poll_interval_s=self.settings.poll_interval_s)
        await self.broadcast.start()
        registry = Registry(self.db, self.broadcast, heartbeat_ttl_s=self.settings.heartbeat_ttl_s)
        servicer = RegistryServicer(registry, self.settings.heartbeat_interval_ms)
        self.grpc = GrpcServer(
            self.settings,
            component="registry",
            service_names=[SERVICE_NAME],
            register=lambda server: registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server),
            write_methods=WRITE_METHODS,
        )
        await self.grpc.start()
        await self.grpc.set_serving(True)
        self._rollout_task = asyncio.create_task(self._export_rollouts(registry), name="rollout-gauge")

    async def _export_rollouts(self, registry: Registry) -> None:
        """Keep `modelyard_rollout_converged` current for dashboards and alerts."""
        exported: set[str] = set()
        while True:
            try:
                statuses = await registry.all_rollouts()
            except Exception as exc:  # the database may be away; try again next round
                event(log, "registry.rollout_gauge_failed", level=logging.WARNING, error=str(exc))
            else:
                for status in statuses:
                    ROLLOUT_CONVERGED.labels(status.deployment).set(1 if status.converged else 0)
                for gone in exported - {s.deployment for s in statuses}:
                    with contextlib.suppress(KeyError):
                        ROLLOUT_CONVERGED.remove(gone)
                exported = {s.deployment for s in statuses}
            await asyncio.sleep(max(self.settings.poll_interval_s, 1.0))

    async def _wait_for_database(self, url: str) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        delay = 0.2
        while True:
            try:
                await migrate(url)
                return
            except CONNECTION_ERRORS as exc:
                if time.monotonic() > deadline:
                    raise
                event(log, "registry.waiting_for_database", level=logging.WARNING, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        if self._rollout_task is not None:
            self._rollout_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rollout_task
        if self.grpc is not None:
            await self.grpc.stop()
        if self.broadcast is not None:
            await self.broadcast.stop()
        if self.db is not None:
            await self.db.close()

    async def run(self) -> None:
        await self.start()
        freeze_startup_objects()
        try:
            await wait_for_shutdown_signal()
        finally:
            await self.stop()
