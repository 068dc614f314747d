"""The benchmark gRPC server: runner, store and servicer wired onto the shared server bootstrap."""

from __future__ import annotations

from pathlib import Path

from modelyard.api import benchmark_pb2, benchmark_pb2_grpc
from modelyard.benchmark.oip import WorkerDeployment
from modelyard.benchmark.registry_store import RegistryRunStore
from modelyard.benchmark.runner import BenchmarkRunner, WorkerClient
from modelyard.benchmark.servicer import BenchmarkServicer
from modelyard.benchmark.settings import BenchmarkSettings
from modelyard.benchmark.staging import RegistryDirectory, RegistryVersionStager
from modelyard.benchmark.store import InMemoryRunStore, RunStore
from modelyard.client import ClientSettings, RegistryClient
from modelyard.common.auth import AccessPolicy, Role
from modelyard.common.server import GrpcServer

SERVICE_NAME = benchmark_pb2.DESCRIPTOR.services_by_name["BenchmarkService"].full_name
# RunBenchmark stages versions and writes runs, so it is admin-only (the policy's default).
POLICY = AccessPolicy.of({("GetRun", "ListRuns", "Compare", "ListSuites"): (Role.READER, Role.BENCHMARK)})


class BenchmarkServer:
    def __init__(self, settings: BenchmarkSettings, *, client: ClientSettings | None = None) -> None:
        self.settings = settings
        # Token and TLS from the environment (MODELYARD_TOKEN, MODELYARD_TLS...); deadlines per peer.
        self.client = (client or ClientSettings()).model_copy(update={"timeout_s": settings.worker_timeout_s})
        self._registry: RegistryClient | None = None
        store: RunStore
        stager: RegistryVersionStager | None = None
        directory: RegistryDirectory | None = None
        if settings.registry:
            self._registry = RegistryClient(
                settings.registry, self.client, timeout_s=settings.registry_timeout_s
            )
            store = RegistryRunStore(self._registry)
            stager = RegistryVersionStager(self._registry, rollout_timeout_s=settings.stage_timeout_s)
            directory = RegistryDirectory(self._registry)
        else:
            store = InMemoryRunStore()
        holds_credentials = bool(self.client.token or self.client.tls_client_cert_file)
        self.runner = BenchmarkRunner(
            store,
            self._connect,
            stager=stager,
            directory=directory,
            call_named_workers=not settings.registry and not holds_credentials,
            dataset_dirs=[Path(d).expanduser() for d in settings.dataset_dirs],
        )
        servicer = BenchmarkServicer(self.runner, store)
        self.grpc = GrpcServer(
            settings,
            component="benchmark",
            service_names=[SERVICE_NAME],
            register=lambda server: benchmark_pb2_grpc.add_BenchmarkServiceServicer_to_server(
                servicer, server
            ),
            policy=POLICY,
        )

    def _connect(self, address: str, deployment: str) -> WorkerClient:
        return WorkerDeployment(address, deployment, settings=self.client)

    @property
    def address(self) -> str:
        return self.grpc.address

    async def start(self) -> None:
        await self.grpc.start()
        await self.grpc.set_serving(True)

    async def stop(self) -> None:
        await self.grpc.stop()
        if self._registry is not None:
            await self._registry.close()
