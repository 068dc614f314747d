"""What the benchmark service integration tests share: the running stack and registry shortcuts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry_support import Stub as RegistryStub
from support import ServerProcess
from worker_support import registry_version

from modelyard.api import benchmark_pb2_grpc
from modelyard.api import registry_pb2 as rpb

# The generated stub on a grpc.aio channel; its awaitable type exists only in the type stubs.
if TYPE_CHECKING:
    from modelyard.api.benchmark_pb2_grpc import BenchmarkServiceAsyncStub as BenchStub
else:
    BenchStub = benchmark_pb2_grpc.BenchmarkServiceStub

TINY_DIM = 32


@dataclass
class Stack:
    """Registry (in this process), benchmark service (own process), stubs to both."""

    registry_address: str
    registry: RegistryStub
    bench: BenchStub
    bench_process: ServerProcess
    spawn_worker: Callable[[str], ServerProcess]

    async def register(self, path: Path, version: str, *, model_id: str, dim: int, **config: Any) -> None:
        await self.registry.RegisterVersion(
            rpb.RegisterVersionRequest(
                version=registry_version(path, version, model_id=model_id, dim=dim, **config),
                create_model=True,
                model_type=rpb.TEXT_EMBEDDING,
            )
        )

    async def deploy(self, name: str, model_id: str, routes: dict[str, int]) -> rpb.Deployment:
        return await self.registry.CreateDeployment(
            rpb.CreateDeploymentRequest(
                name=name,
                model_id=model_id,
                routes=[rpb.Route(version=v, weight=w) for v, w in routes.items()],
            )
        )

    async def routes(self, name: str) -> dict[str, int]:
        deployment = await self.registry.GetDeployment(rpb.GetDeploymentRequest(name=name))
        return {r.version: r.weight for r in deployment.routes}

    async def converged(self, name: str, revision: int, timeout_s: float = 120) -> None:
        status = await self.registry.GetRolloutStatus(
            rpb.GetRolloutStatusRequest(
                deployment=name, revision=revision, wait_timeout_ms=int(timeout_s * 1000)
            ),
            timeout=timeout_s + 10,
        )
        assert status.converged, status
