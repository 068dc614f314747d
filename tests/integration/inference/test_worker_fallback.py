"""A worker restarted while its registry is down serves the deployments it last applied from its
cache, says so (metric, health, heartbeat), and follows the registry once it is back. Registries and
workers each in their own process, on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from registry_support import Stub as RegistryStub
from support import ServerProcess, spawn_registry
from worker_support import WorkerFactory, registry_version, text_request, wait_model_ready

from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.api import registry_pb2_grpc as rpb_grpc
from modelyard.inference.worker import REGISTRY_HEALTH_SERVICE

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TEXTS = ["the registry is down", "a worker restarts", "and still answers"]


async def _create(address: str, source: Path, other: Path) -> int:
    async with aio.insecure_channel(address) as channel:
        reg = rpb_grpc.RegistryServiceStub(channel)
        for path, version in ((source, "1.0.0"), (other, "1.1.0")):
            await reg.RegisterVersion(
                rpb.RegisterVersionRequest(
                    version=registry_version(path, version, model_id="tiny", dim=32),
                    create_model=True,
                    model_type=rpb.TEXT_EMBEDDING,
                )
            )
        created = await reg.CreateDeployment(
            rpb.CreateDeploymentRequest(
                name="tiny", model_id="tiny", routes=[rpb.Route(version="1.0.0", weight=100)]
            )
        )
        return created.revision


async def _converged(reg: RegistryStub, revision: int) -> None:
    status = await reg.GetRolloutStatus(
        rpb.GetRolloutStatusRequest(deployment="tiny", revision=revision, wait_timeout_ms=120_000)
    )
    assert status.converged, status


async def _embeddings(address: str) -> tuple[str, np.ndarray]:
    async with aio.insecure_channel(address) as channel:
        response = await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(text_request("tiny", TEXTS))
    output = response.outputs[0]
    return response.model_version, np.asarray(output.contents.fp32_contents).reshape(list(output.shape))


async def _health(address: str, service: str) -> int:
    async with aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
    return int(response.status)


def _fallback_metric(worker: ServerProcess) -> float:
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).read().decode()
    )
    (line,) = [line for line in text.splitlines() if line.startswith("modelyard_worker_fallback ")]
    return float(line.split()[1])


def _stored(cache: Path) -> list[rpb.Deployment]:
    documents = json.loads((cache / "applied-deployments.json").read_text())
    return [json_format.ParseDict(d, rpb.Deployment()) for d in documents]


async def _eventually(check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + 60
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


async def test_restarted_without_registry_it_serves_the_stored_deployment_then_follows_the_registry(
    database_url: str, spawn_worker: WorkerFactory, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    source = tmp_path / "artifacts" / "tiny-1.0.0"
    shutil.copytree(tiny_models["st0"], source)
    env = {"MODELYARD_WORKER_RECONNECT_MAX_S": "0.5", "MODELYARD_WORKER_FALLBACK_AFTER_S": "30"}
    same_pod = ("--worker-id", "worker-a")  # restarted under its name, as a Kubernetes pod is
    cache = tmp_path / "cache"  # the one spawn_worker gives every worker of this test
    first = spawn_registry(database_url)
    registries = [first]
    try:
        await _create(first.address, source, tiny_models["st1"])
        worker = spawn_worker(registry=first.address, deployments=("tiny",), env=env, extra=same_pod)
        wait_model_ready(worker.address, "tiny")
        version, expected = await _embeddings(worker.address)
        assert version == "1.0.0"
        assert worker.terminate() == 0
        (stored,) = _stored(cache)
        assert [(r.version, r.weight) for r in stored.routes] == [("1.0.0", 100)]
        assert first.terminate() == 0
        source.rename(source.with_name("moved-away"))  # the source is gone too: only the cache has it

        # Registry down (nothing listens on its port): the worker serves what it applied last.
        started = time.monotonic()
        worker = spawn_worker(registry=first.address, deployments=("tiny",), env=env, extra=same_pod)
        wait_model_ready(worker.address, "tiny", timeout=60)
        elapsed = time.monotonic() - started
        print(f"restarted worker served its stored deployment {elapsed:.1f} s after it was spawned")
        assert elapsed < 30  # the refused connection fell back at once, not after fallback_after_s
        version, served = await _embeddings(worker.address)
        assert version == "1.0.0"
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
        assert _fallback_metric(worker) == 1
        assert await _health(worker.address, "") == SERVING
        assert await _health(worker.address, REGISTRY_HEALTH_SERVICE) == NOT_SERVING
        assert "worker.fallback" in worker.log()

        # Meanwhile the routes change (through another replica the worker does not know).
        other = spawn_registry(database_url)
        registries.append(other)
        async with aio.insecure_channel(other.address) as channel:
            changed = await rpb_grpc.RegistryServiceStub(channel).SetRoutes(
                rpb.SetRoutesRequest(name="tiny", routes=[rpb.Route(version="1.1.0", weight=100)])
            )
        assert changed.revision > stored.revision
        assert other.terminate() == 0

        failures: list[str] = []
        stop = asyncio.Event()

        async def client() -> None:
            async with aio.insecure_channel(worker.address) as channel:
                oip = oip_grpc.GRPCInferenceServiceStub(channel)
                while not stop.is_set():
                    try:
                        await oip.ModelInfer(text_request("tiny", ["during the swap"]))
                    except aio.AioRpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")

        clients = [asyncio.create_task(client()) for _ in range(4)]
        try:
            second = spawn_registry(database_url, port=first.port)  # back where the worker looks
            registries.append(second)
            async with aio.insecure_channel(second.address) as channel:
                reg = rpb_grpc.RegistryServiceStub(channel)
                await _converged(reg, changed.revision)

                async def not_in_fallback() -> bool:
                    listed = (await reg.ListWorkers(rpb.ListWorkersRequest(deployment="tiny"))).workers
                    return [(w.worker_id, w.live, w.fallback) for w in listed] == [("worker-a", True, False)]

                await _eventually(not_in_fallback)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert failures == []
        assert (await _embeddings(worker.address))[0] == "1.1.0"  # the registry's routes, not the file's
        assert _fallback_metric(worker) == 0

        async def following() -> bool:
            return await _health(worker.address, REGISTRY_HEALTH_SERVICE) == SERVING

        await _eventually(following)

        async def file_follows_the_registry() -> bool:
            (now,) = _stored(cache)
            return now.revision == changed.revision and [r.version for r in now.routes] == ["1.1.0"]

        await _eventually(file_follows_the_registry)
    finally:
        for registry in registries:
            registry.kill()
