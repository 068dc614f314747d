"""Assembles one inference worker: gRPC server (and OIP over HTTP when asked), data plane, deployment
applier, registry sync."""

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
from modelyard.client import ClientSettings
from modelyard.common.artifact_roots import ArtifactRoots
from modelyard.common.auth import TokenAuthorizer
from modelyard.common.log import event
from modelyard.common.server import NOT_SERVING, SERVING, GrpcServer, freeze_startup_objects
from modelyard.inference.applied_state import AppliedState
from modelyard.inference.artifacts import ArtifactCache
from modelyard.inference.batching import CoreUse
from modelyard.inference.converters import deployment_from_registry
from modelyard.inference.dataplane import DataPlane
from modelyard.inference.deployments import DeploymentApplier
from modelyard.inference.domain import DeploymentSpec
from modelyard.inference.drift import DriftMonitor
from modelyard.inference.limits import Admission, ItemLimits
from modelyard.inference.live_counters import LiveCounters
from modelyard.inference.load_retry import RetryPolicy
from modelyard.inference.loaders import preimport_all
from modelyard.inference.loaders.base import intra_op_threads, use_intra_op_threads
from modelyard.inference.registry_sync import RegistrySync
from modelyard.inference.rest import OipHttpServer, create_app
from modelyard.inference.routing import RoutingTable
from modelyard.inference.servicer import POLICY, SERVICE_NAME, InferenceServicer
from modelyard.inference.settings import WorkerSettings
from modelyard.inference.shadow import use_shadow_thread

log = logging.getLogger("modelyard.inference")

# gRPC health of this name: SERVING while the worker follows the registry; NOT_SERVING while it is
# disconnected or serves its stored deployments (fallback). The overall health ("" and the OIP
# service) stays about whether it can serve, so traffic keeps flowing in fallback.
REGISTRY_HEALTH_SERVICE = "modelyard.worker.Registry"


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
        self._shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="shadow", initializer=use_shadow_thread)
        event(log, "worker.lanes", instances=lanes.instances, threads_per_instance=lanes.threads_per_instance,
              solo_threads=lanes.solo_threads)  # fmt: skip
        core_use = CoreUse()  # serving passes and loads, which the solo lane must not run beside
        self.dataplane = DataPlane(
            self.table,
            self._infer_pool,
            instances=lanes.instances,
            solo_executor=self._solo_pool,
            decode_executor=self._decode_pool,
            shadow_executor=self._shadow_pool,
            limits=ItemLimits(
                text_bytes_per_token=settings.text_bytes_per_token,
                max_image_pixels=settings.max_image_pixels,
                max_image_bytes=settings.max_image_bytes,
                max_request_pixels=settings.max_request_pixels,
            ),
            admission=Admission(settings.max_items_in_flight),
            core_use=core_use,
            counters=LiveCounters(
                drift=DriftMonitor(
                    reference_items=settings.drift_reference_items, window_items=settings.drift_window_items
                )
            ),
        )
        self.servicer = InferenceServicer(self.dataplane)
        self.cache = ArtifactCache(
            Path(settings.cache_dir).expanduser(),
            ArtifactRoots.parse(settings.artifact_roots),
            max_bytes=int(settings.cache_max_bytes),
            in_use=self._checkpoints_in_use,
            full_verify=settings.cache_full_verify,
        )
        # Kept only for a worker that follows a registry: it is what such a worker serves when it
        # starts without reaching it.
        self.applied_state = (
            AppliedState(self.cache.root / Path(settings.applied_state_file).expanduser())
            if settings.registry and settings.applied_state_file
            else None
        )
        self.applier = DeploymentApplier(
            self.table,
            self.cache,
            self._load_pool,
            on_change=self._changed,
            on_applied=self.applied_state.record if self.applied_state else None,
            retry=RetryPolicy(settings.retry_initial_s, max(settings.retry_max_s, settings.retry_initial_s)),
            allow_remote_code=settings.allow_remote_code,
            pass_threads=lanes.threads_per_instance,
            core_use=core_use,
        )
        self.server = GrpcServer(
            settings,
            component="worker",
            service_names=[SERVICE_NAME],
            register=lambda server: pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server),
            policy=POLICY,
        )
        # The same data plane, tokens, policy and byte budget as the gRPC side.
        self.http: OipHttpServer | None = None
        if settings.http_port is not None:
            app = create_app(
                self.dataplane,
                authorizer=TokenAuthorizer(settings.tokens()),
                policy=POLICY,
                max_body_bytes=settings.max_message_bytes,
                executor=self._decode_pool,
                live=lambda: self.servicer.live,
            )
            self.http = OipHttpServer(settings, app)
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
                stored=self.applied_state.read if self.applied_state else None,
                fallback_after_s=settings.fallback_after_s,
                on_state=self._registry_state_changed,
                counters=self.dataplane.counters,
            )
        self._serving = False
        self._health_task: asyncio.Task[None] | None = None
        self._registry_health_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def http_address(self) -> str:
        """host:port of OIP over HTTP; empty when `http_port` is None."""
        return self.http.address if self.http is not None else ""

    def _checkpoints_in_use(self) -> set[str]:
        """Checkpoints this worker serves, drains or is loading: never evicted from the cache.
        Called from the load thread; both collections are copied before they are read."""
        hashes: set[str] = set()
        for name in self.table.deployments():
            routes = self.table.find(name)
            if routes is not None:
                hashes.update(v.spec.checkpoint_hash for v in list(routes.versions.values()))
        for status in list(self.applier.status.values()):
            hashes.update(v.checkpoint_hash for v in list(status.versions.values()))
        return hashes

    def _changed(self) -> None:
        self.dataplane.routes_changed()
        if self.sync is not None:
            self.sync.notify_change()
        serving = self.table.any_routable
        if serving != self._serving:
            self._serving = serving
            self._health_task = asyncio.create_task(self.server.set_serving(serving))

    def _registry_state_changed(self) -> None:
        self._registry_health_task = asyncio.create_task(self._publish_registry_health())

    async def _publish_registry_health(self) -> None:
        # Reads the state when it runs, so tasks finishing out of order still publish the latest.
        following = self.sync is not None and self.sync.following
        await self.server.health.set(REGISTRY_HEALTH_SERVICE, SERVING if following else NOT_SERVING)

    async def start(self) -> None:
        await self.server.set_serving(False)
        if self.sync is not None:
            await self._publish_registry_health()
        await self.server.start()
        if self.http is not None:
            await self.http.start()
        if self.settings.preimport:
            started = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(self._load_pool, preimport_all)
            event(log, "worker.preimported", seconds=round(time.perf_counter() - started, 2))
        freeze_startup_objects()
        await asyncio.get_running_loop().run_in_executor(self._load_pool, self.cache.sweep)
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
        if self.http is not None:
            # Closed first, drained alongside gRPC: both within one grace period.
            self.http.request_stop()
        await self.server.stop()
        if self.http is not None:
            await self.http.stop()
        if self.sync is not None:
            await self.sync.stop()
        await self.applier.close()
        if self.applied_state is not None:
            await self.applied_state.close()
        self._infer_pool.shutdown(wait=False, cancel_futures=True)
        if self._solo_pool is not None:
            self._solo_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._shadow_pool.shutdown(wait=False, cancel_futures=True)
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


def load_static_deployments(path: str) -> list[DeploymentSpec]:
    """A JSON list of registry `Deployment` messages (protobuf JSON mapping)."""
    documents = json.loads(Path(path).read_text())
    specs = []
    for document in documents:
        message = json_format.ParseDict(document, rpb.Deployment())
        specs.append(deployment_from_registry(message))
    return specs
