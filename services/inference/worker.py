"""Assembles one inference worker: gRPC server, data plane, deployment applier, registry sync."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from modelyard.api import grpc_predict_v2_pb2_grpc as pb_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.common.log import event
from modelyard.common.server import GrpcServer, freeze_startup_objects
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
        lanes = plan_lanes(settings.instances, intra_op_threads())
        self._infer_pool = ThreadPoolExecutor(
            lanes.instances,
            thread_name_prefix="infer",
            initializer=use_intra_op_threads,
            initargs=(lanes.threads_per_instance,),
        )
        self._solo_pool = (
            ThreadPoolExecutor(
                1, thread_name_prefix="solo", initializer=use_intra_op_threads, initargs=(lanes.solo_threads,)
            )
            if lanes.solo_threads
            else None
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
        event(log, "worker.lanes", instances=lanes.instances, threads_per_instance=lanes.threads_per_instance,
              solo_threads=lanes.solo_threads)  # fmt: skip
        self.dataplane = DataPlane(
            self.table,
            self._infer_pool,
            instances=lanes.instances,
            solo_executor=self._solo_pool,
            decode_executor=self._decode_pool,
        )
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
        freeze_startup_objects()
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
        if self._solo_pool is not None:
            self._solo_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._load_pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Lanes:
    instances: int
    threads_per_instance: int
    solo_threads: int  # 0 = no solo lane


def plan_lanes(instances: int, cores: int) -> Lanes:
    """How forward passes use the cores (`cores` = torch's intra-op threads, one per core).

    Auto (0) is two instances on a CPU machine with two or more cores, one with CUDA. A solo lane
    (one thread using every core, for lone requests) is added only where the instances run
    single-threaded: it then adds no OpenMP thread beyond one per core. GNU OpenMP keeps a team per
    calling thread and, once a process holds more OpenMP threads than cores, stops spinning at
    barriers, which slows every pass. The load and decode pools run torch single-threaded for the
    same reason.
    """
    import torch

    cores = max(1, cores)
    if instances <= 0:
        instances = 1 if torch.cuda.is_available() or cores < 2 else 2
    per_instance = max(1, cores // instances)
    solo = cores if instances > 1 and per_instance == 1 and cores > 1 else 0
    return Lanes(instances, per_instance, solo)


def load_static_deployments(path: str) -> list:  # type: ignore[type-arg]
    """A JSON list of registry `Deployment` messages (protobuf JSON mapping)."""
    documents = json.loads(Path(path).read_text())
    specs = []
    for document in documents:
        message = json_format.ParseDict(document, rpb.Deployment())
        specs.append(deployment_from_registry(message))
    return specs
