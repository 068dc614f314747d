"""The registry process: database, migrations, broadcast and gRPC server, started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import Gauge

from modelyard.api import registry_pb2, registry_pb2_grpc
from modelyard.common.artifact_roots import ArtifactRoots
from modelyard.common.log import event
from modelyard.common.server import GrpcServer, freeze_startup_objects, wait_for_shutdown_signal
from modelyard.registry.broadcast import DeploymentBroadcast
from modelyard.registry.db import CONNECTION_ERRORS, Database, migrate
from modelyard.registry.embedded import EmbeddedPostgres
from modelyard.registry.rollout_plans import PlanDriver
from modelyard.registry.service import Registry
from modelyard.registry.servicer import POLICY, RegistryServicer
from modelyard.registry.settings import RegistrySettings

log = logging.getLogger("modelyard.registry")

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
ROLLOUT_CONVERGED = Gauge(
    "modelyard_rollout_converged",
    "1 when every live worker of the deployment serves its current routes and none is lost, else 0.",
    ["deployment"],
)
# Labelled so that nothing is exported with an external database (an unlabelled gauge would read 0).
DATABASE_UP = Gauge(
    "modelyard_registry_database_up",
    "1 while the registry's embedded PostgreSQL runs, 0 while it is down and being restarted.",
    ["database"],
)


class RegistryServer:
    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.db: Database | None = None
        self.broadcast: DeploymentBroadcast | None = None
        self.grpc: GrpcServer | None = None
        self.database_url = settings.database_url
        self.embedded: EmbeddedPostgres | None = None
        self._rollout_task: asyncio.Task[None] | None = None
        self._driver_task: asyncio.Task[None] | None = None
        self.driver: PlanDriver | None = None
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        if self.grpc is None:
            raise RuntimeError("the registry server has no address before start()")
        return self.grpc.address

    @property
    def metrics_port(self) -> int | None:
        return self.grpc.metrics.port if self.grpc and self.grpc.metrics else None

    async def start(self) -> None:
        if not self.database_url:
            self.embedded = EmbeddedPostgres(self.settings.data_dir)
            self.database_url = await asyncio.get_running_loop().run_in_executor(None, self.embedded.start)
            DATABASE_UP.labels("embedded").set(1)
            event(
                log, "registry.embedded_postgres", data_dir=str(self.settings.data_dir), pid=self.embedded.pid
            )
        await self._wait_for_database(self.database_url)
        self.db = await Database.open(self.database_url, max_size=self.settings.pool_max_size)
        self.broadcast = DeploymentBroadcast(self.db, poll_interval_s=self.settings.poll_interval_s)
        await self.broadcast.start()
        registry = Registry(
            self.db,
            self.broadcast,
            heartbeat_ttl_s=self.settings.heartbeat_ttl_s,
            lost_worker_window_s=self.settings.lost_worker_window_s,
            rollout_poll_interval_s=self.settings.rollout_poll_interval_s,
            artifact_roots=ArtifactRoots.parse(self.settings.artifact_roots),
            live_window_s=self.settings.live_window_s,
            live_sample_interval_s=self.settings.live_sample_interval_s,
        )
        servicer = RegistryServicer(registry, self.settings.heartbeat_interval_ms)
        self.grpc = GrpcServer(
            self.settings,
            component="registry",
            service_names=[SERVICE_NAME],
            register=lambda server: registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server),
            policy=POLICY,
        )
        await self.grpc.start()
        await self.grpc.set_serving(True)
        self._rollout_task = asyncio.create_task(self._export_rollouts(registry), name="rollout-gauge")
        self.driver = PlanDriver(
            registry.plans,
            self.database_url,
            interval_s=self.settings.rollout_driver_interval_s,
            evidence=registry.rollouts.counters_arrived,
        )
        self._driver_task = asyncio.create_task(self.driver.run(), name="rollout-plan-driver")
        if self.embedded is not None:
            self._supervisor = asyncio.create_task(
                self._supervise_database(self.embedded, self.grpc, self.db, self.broadcast),
                name="embedded-postgres-supervisor",
            )

    async def _supervise_database(
        self, embedded: EmbeddedPostgres, grpc: GrpcServer, db: Database, broadcast: DeploymentBroadcast
    ) -> None:
        """Notice that the embedded PostgreSQL died; restart it while health says NOT_SERVING."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.database_check_interval_s)
            if await loop.run_in_executor(None, embedded.running):
                continue
            lost_at = time.monotonic()
            DATABASE_UP.labels("embedded").set(0)
            event(log, "registry.database_lost", level=logging.WARNING, data_dir=str(self.settings.data_dir))
            await grpc.set_serving(False)
            await self._recover_database(embedded, db, broadcast)
            await grpc.set_serving(True)
            DATABASE_UP.labels("embedded").set(1)
            event(
                log, "registry.database_ready", pid=embedded.pid, down_s=round(time.monotonic() - lost_at, 3)
            )

    async def _recover_database(
        self, embedded: EmbeddedPostgres, db: Database, broadcast: DeploymentBroadcast
    ) -> None:
        """Restart the server, then check that the schema, the pool and LISTEN work; retry until they do."""
        loop = asyncio.get_running_loop()
        delay = 0.25
        while True:
            step = "restart"
            try:
                if not await loop.run_in_executor(None, embedded.running):
                    started = time.monotonic()
                    await loop.run_in_executor(None, embedded.restart)
                    event(
                        log,
                        "registry.database_restarted",
                        pid=embedded.pid,
                        seconds=round(time.monotonic() - started, 3),
                    )
                step = "migrations"
                await migrate(db.url)
                step = "pool"
                # Idle pool connections died with the old server: replace them all now rather than
                # let the first calls after the restart find out one by one.
                await db.pool.expire_connections()
                async with db.connection() as conn:
                    await conn.fetchval("SELECT 1")
                step = "listen"
                broadcast.reconnect_now()
                if not await broadcast.wait_listening(5.0):
                    raise TimeoutError("LISTEN connection not back within 5 s")
                await broadcast.fetch()
                return
            except Exception as exc:  # each step may fail while the server comes up: try again
                event(
                    log,
                    "registry.database_recovery_failed",
                    level=logging.WARNING,
                    step=step,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_s=delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _export_rollouts(self, registry: Registry) -> None:
        """Keep `modelyard_rollout_converged` current for dashboards and alerts."""
        exported: set[str] = set()
        while True:
            try:
                statuses = await registry.rollouts.all_rollouts()
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
        for task in (self._driver_task, self._supervisor, self._rollout_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.grpc is not None:
            await self.grpc.stop()
        if self.broadcast is not None:
            await self.broadcast.stop()
        if self.db is not None:
            await self.db.close()
        if self.embedded is not None:
            # Last: the server the registry started or adopted must not outlive a clean stop.
            await asyncio.get_running_loop().run_in_executor(None, self.embedded.stop)

    async def run(self) -> None:
        # Catch SIGTERM before starting: one arriving while the process starts up (e.g. `modelyard up`
        # stopped at once) used to kill it outright and leave its embedded PostgreSQL running.
        signalled = asyncio.create_task(wait_for_shutdown_signal(), name="shutdown-signal")
        await asyncio.sleep(0)  # let it install its handlers
        try:
            await self.start()
            freeze_startup_objects()
            await signalled
        finally:
            signalled.cancel()
            await self.stop()
