"""Assembles one inference worker: gRPC server, data plane, deployment applier, registry sync."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from google.protobuf import json_format

from modelyard.api import grpc_predict_v2_pb2_grpc as pb_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.common.log import event
from modelyard.common.server import GrpcServer
from modelyard.common.settings import ClientSettings
from modelyard.inference.artifacts import ArtifactCache
from modelyard.inference.converters import deployment_from_registry
from modelyard.inference.dataplane import DataPlane
from modelyard.inference.deployments import DeploymentApplier
from modelyard.inference.loaders import preimport_all
from modelyard.inference.loaders.base import intra_op_threads, use_intra_op_threads
from modelyard.inference.registry_sync import RegistrySync
from modelyard.inference.routing import RoutingTable
from modelyard.inference.servicer import SERVICE_NAME, InferenceServicer
from modelyard.inference.settings import WorkerSettings

log = logging.getLogger("modelyard.inference")


class InferenceWorker:
    """`await start()`, then serve until `await stop()` (which drains in-flight requests)."""

    def __init__(self, settings: WorkerSettings, client: ClientSettings | None = None) -> None:
        self.settings = settings
        self.table = RoutingTable()
        # One OpenMP team only, the inference thread's (see `use_intra_op_threads`).
        threads = intra_op_threads()
        self._infer_pool = ThreadPoolExecutor(
            settings.inference_threads,
            thread_name_prefix="infer",
            initializer=use_intra_op_threads,
            initargs=(threads,),
        )
        self._decode_pool = ThreadPoolExecutor(
            settings.decode_threads,
            thread_name_prefix="decode",
            initializer=use_intra_op_threads,
            initargs=(1,),
        )
        self._load_pool = ThreadPoolExecutor(
            1, thread_name_prefix="load", initializer=use_intra_op_threads, initargs=(1,)
        )
        self.dataplane = DataPlane(self.table, self._infer_pool, decode_executor=self._decode_pool)
        self.servicer = InferenceServicer(self.dataplane)
        self.cache = ArtifactCache(Path(settings.cache_dir).expanduser())
        self.applier = DeploymentApplier(self.table, self.cache, self._load_pool, on_change=self._changed)
        self.server = GrpcServer(
            settings,
            component="worker",
            service_names=[SERVICE_NAME],
            register=lambda server: pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server),
        )
        self.sync: RegistrySync | None = None
        if settings.registry:
            self.sync = RegistrySync(
                settings.registry,
                self.applier,
                deployments=settings.deployments,
                worker_id=settings.worker_id or f"{socket.gethostname()}:{os.getpid()}",
                advertise_address=settings.advertise_address or self.server.address,
                client=client or ClientSettings(),
                heartbeat_interval_s=settings.heartbeat_interval_s,
                reconnect_initial_s=settings.reconnect_initial_s,
                reconnect_max_s=settings.reconnect_max_s,
            )
        self._serving = False
        self._health_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self.server.address

    def _changed(self) -> None:
        if self.sync is not None:
            self.sync.notify_change()
        serving = self.table.any_routable
        if serving != self._serving:
            self._serving = serving
            self._health_task = asyncio.create_task(self.server.set_serving(serving))

    async def start(self) -> None:
        await self.server.set_serving(False)
        await self.server.start()
        if self.settings.preimport:
            started = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(self._load_pool, preimport_all)
            event(log, "worker.preimported", seconds=round(time.perf_counter() - started, 2))
        if self.settings.static_deployments:
            for spec in load_static_deployments(self.settings.static_deployments):
                self.applier.submit(spec)
        if self.sync is not None:
            await self.sync.start()

    async def stop(self) -> None:
        """NOT_SERVING, finish in-flight requests within the grace period, then unload everything."""
        event(log, "worker.stopping", grace_period_s=self.settings.grace_period_s)
        await self.server.set_serving(False)
        self.servicer.live = False
        await self.server.stop()
        if self.sync is not None:
            await self.sync.stop()
        await self.applier.close()
        self._infer_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._load_pool.shutdown(wait=True, cancel_futures=True)


def load_static_deployments(path: str) -> list:  # type: ignore[type-arg]
    """A JSON list of registry `Deployment` messages (protobuf JSON mapping)."""
    documents = json.loads(Path(path).read_text())
    specs = []
    for document in documents:
        message = json_format.ParseDict(document, rpb.Deployment())
        specs.append(deployment_from_registry(message))
    return specs
