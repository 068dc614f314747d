"""The worker driven by a real registry: hot swap under load, refused checkpoints, canary split,
memory across swap cycles. Registry in this process, worker in its own."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from grpc import aio
from registry_support import Stub as RegistryStub
from support import spawn_registry
from worker_support import WorkerFactory, registry_version, text_request, wait_model_ready

from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.api import registry_pb2_grpc as rpb_grpc

pytestmark = pytest.mark.slow


async def _register(stub: RegistryStub, version: rpb.ModelVersion) -> None:
    await stub.RegisterVersion(
        rpb.RegisterVersionRequest(version=version, create_model=True, model_type=rpb.TEXT_EMBEDDING)
    )


async def _set_routes(stub: RegistryStub, name: str, routes: dict[str, int]) -> int:
    deployment = await stub.SetRoutes(
        rpb.SetRoutesRequest(name=name, routes=[rpb.Route(version=v, weight=w) for v, w in routes.items()])
    )
    return deployment.revision


async def _converged(stub: RegistryStub, name: str, revision: int, timeout_s: float = 60) -> None:
    status = await stub.GetRolloutStatus(
        rpb.GetRolloutStatusRequest(deployment=name, revision=revision, wait_timeout_ms=int(timeout_s * 1000))
    )
    assert status.converged, status


async def test_hot_swap_under_load_fails_no_request_and_frees_memory(
    registry: object, spawn_worker: WorkerFactory, minilm_dir: Path
) -> None:
    address = registry.address  # type: ignore[attr-defined]
    async with aio.insecure_channel(address) as channel:
        reg = rpb_grpc.RegistryServiceStub(channel)
        await _register(reg, registry_version(minilm_dir, "1.0.0", model_id="minilm"))
        await _register(
            reg, registry_version(minilm_dir, "1.0.1", model_id="minilm", quantization="int8-dynamic")
        )
        created = await reg.CreateDeployment(
            rpb.CreateDeploymentRequest(
                name="text-embedding", model_id="minilm", routes=[rpb.Route(version="1.0.0", weight=100)]
            )
        )
        worker = spawn_worker(registry=address, deployments=("text-embedding",))
        await _converged(reg, "text-embedding", created.revision, timeout_s=120)
        process = psutil.Process(worker.proc.pid)

        async with aio.insecure_channel(worker.address) as worker_channel:
            oip = oip_grpc.GRPCInferenceServiceStub(worker_channel)
            stop = asyncio.Event()
            served: Counter[str] = Counter()
            failures: list[str] = []

            async def client(index: int) -> None:
                while not stop.is_set():
                    try:
                        response = await oip.ModelInfer(
                            text_request("text-embedding", [f"client {index} says hi"])
                        )
                    except aio.AioRpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")
                        continue
                    if (
                        response.model_version not in ("1.0.0", "1.0.1")
                        or response.outputs[0].shape[1] != 384
                    ):
                        failures.append(f"unexpected response {response.model_version!r}")
                    served[response.model_version] += 1

            clients = [asyncio.create_task(client(i)) for i in range(32)]
            rss: dict[int, int] = {}
            try:
                for change in range(1, 41):  # 40 route changes = 20 fp32 -> int8 -> fp32 swap cycles
                    target = "1.0.1" if change % 2 else "1.0.0"
                    revision = await _set_routes(reg, "text-embedding", {target: 100})
                    await _converged(reg, "text-embedding", revision)
                    for _ in range(3):  # once the swap completed, new requests reach the new version
                        fresh = await oip.ModelInfer(text_request("text-embedding", ["fresh request"]))
                        assert fresh.model_version == target, (change, fresh.model_version)
                    if change in (2, 40):  # end of the first and of the twentieth cycle
                        await asyncio.sleep(0.5)  # the old version drains and unloads
                        rss[change] = process.memory_info().rss
            finally:
                stop.set()
                await asyncio.gather(*clients)
        print(
            f"served {dict(served)}; RSS after cycle 1 {rss[2] / 2**20:.0f} MiB, after 20 {rss[40] / 2**20:.0f} MiB"
        )
        assert failures == []
        assert served["1.0.0"] > 0 and served["1.0.1"] > 0
        assert sum(served.values()) > 200
        assert rss[40] <= rss[2] * 1.10, f"RSS grew from {rss[2] / 2**20:.0f} to {rss[40] / 2**20:.0f} MiB"
        assert worker.terminate() == 0  # SIGTERM drains and exits cleanly


async def test_mismatched_checkpoint_is_refused_old_version_serves_and_registry_shows_it(
    registry: object, spawn_worker: WorkerFactory, tiny_models: dict[str, Path]
) -> None:
    address = registry.address  # type: ignore[attr-defined]
    async with aio.insecure_channel(address) as channel:
        reg = rpb_grpc.RegistryServiceStub(channel)
        await _register(reg, registry_version(tiny_models["st0"], "1.0.0", model_id="tiny", dim=32))
        # Registered with the hash of another artifact than the one at its source_uri.
        wrong = registry_version(tiny_models["st0"], "2.0.0", model_id="tiny", dim=32)
        wrong.checkpoint_hash = registry_version(tiny_models["st1"], "x", model_id="tiny").checkpoint_hash
        await _register(reg, wrong)
        created = await reg.CreateDeployment(
            rpb.CreateDeploymentRequest(
                name="tiny", model_id="tiny", routes=[rpb.Route(version="1.0.0", weight=100)]
            )
        )
        worker = spawn_worker(registry=address, deployments=("tiny",))
        await _converged(reg, "tiny", created.revision, timeout_s=120)
        revision = await _set_routes(reg, "tiny", {"2.0.0": 100})

        deadline = time.monotonic() + 60
        version_status = None
        while time.monotonic() < deadline:
            workers = (await reg.ListWorkers(rpb.ListWorkersRequest(deployment="tiny"))).workers
            statuses = [v for w in workers for d in w.deployments for v in d.versions if v.version == "2.0.0"]
            if statuses and statuses[0].state == rpb.FAILED:
                version_status = statuses[0]
                break
            await asyncio.sleep(0.1)
        assert version_status is not None, "the registry never showed the refused version"
        assert "sha256" in version_status.last_error
        assert "2.0.0" in workers[0].last_error and workers[0].state == "degraded"
        rollout = await reg.GetRolloutStatus(
            rpb.GetRolloutStatusRequest(deployment="tiny", revision=revision)
        )
        assert not rollout.converged and "failed" in rollout.workers[0].detail

        async with aio.insecure_channel(worker.address) as worker_channel:
            oip = oip_grpc.GRPCInferenceServiceStub(worker_channel)
            for _ in range(5):
                response = await oip.ModelInfer(text_request("tiny", ["still here"]))
                assert response.model_version == "1.0.0"


async def test_canary_90_10_splits_2000_unpinned_requests(
    registry: object, spawn_worker: WorkerFactory, tiny_models: dict[str, Path]
) -> None:
    address = registry.address  # type: ignore[attr-defined]
    async with aio.insecure_channel(address) as channel:
        reg = rpb_grpc.RegistryServiceStub(channel)
        await _register(reg, registry_version(tiny_models["st0"], "1.0.0", model_id="tiny", dim=32))
        await _register(reg, registry_version(tiny_models["st1"], "1.1.0", model_id="tiny", dim=32))
        created = await reg.CreateDeployment(
            rpb.CreateDeploymentRequest(
                name="tiny",
                model_id="tiny",
                routes=[rpb.Route(version="1.0.0", weight=90), rpb.Route(version="1.1.0", weight=10)],
            )
        )
        worker = spawn_worker(registry=address, deployments=("tiny",))
        await _converged(reg, "tiny", created.revision, timeout_s=120)
        wait_model_ready(worker.address, "tiny", "1.1.0")
        async with aio.insecure_channel(worker.address) as worker_channel:
            oip = oip_grpc.GRPCInferenceServiceStub(worker_channel)
            counts: Counter[str] = Counter()
            for start in range(0, 2000, 100):
                responses = await asyncio.gather(
                    *(oip.ModelInfer(text_request("tiny", [f"request {start + i}"])) for i in range(100))
                )
                counts.update(r.model_version for r in responses)
    assert sum(counts.values()) == 2000 and set(counts) == {"1.0.0", "1.1.0"}
    # Binomial(2000, 0.1): mean 200, sd 13.4; 4.5 sd either side fails by chance once in ~150,000 runs.
    assert abs(counts["1.1.0"] - 200) <= 4.5 * math.sqrt(2000 * 0.1 * 0.9), counts


async def test_registry_outage_keeps_serving_and_the_worker_resumes_from_its_revision(
    database_url: str, spawn_worker: WorkerFactory, tiny_models: dict[str, Path]
) -> None:
    first = spawn_registry(database_url)
    second = None
    try:
        async with aio.insecure_channel(first.address) as channel:
            reg = rpb_grpc.RegistryServiceStub(channel)
            await _register(reg, registry_version(tiny_models["st0"], "1.0.0", model_id="tiny", dim=32))
            await _register(reg, registry_version(tiny_models["st1"], "1.1.0", model_id="tiny", dim=32))
            created = await reg.CreateDeployment(
                rpb.CreateDeploymentRequest(
                    name="tiny", model_id="tiny", routes=[rpb.Route(version="1.0.0", weight=100)]
                )
            )
            worker = spawn_worker(
                registry=first.address, deployments=("tiny",), env={"MODELYARD_WORKER_RECONNECT_MAX_S": "0.5"}
            )
            await _converged(reg, "tiny", created.revision, timeout_s=120)
        assert first.terminate() == 0

        async with aio.insecure_channel(worker.address) as worker_channel:
            oip = oip_grpc.GRPCInferenceServiceStub(worker_channel)
            for _ in range(10):  # registry gone: what is loaded keeps serving
                assert (await oip.ModelInfer(text_request("tiny", ["alone"]))).model_version == "1.0.0"

            second = spawn_registry(database_url, port=first.port)
            async with aio.insecure_channel(second.address) as channel:
                reg = rpb_grpc.RegistryServiceStub(channel)
                revision = await _set_routes(reg, "tiny", {"1.1.0": 100})
                await _converged(reg, "tiny", revision)
            assert (await oip.ModelInfer(text_request("tiny", ["back"]))).model_version == "1.1.0"
        log = worker.log()
        assert "registry.disconnected" in log
        assert f"since_revision={created.revision}" in log  # resumed, not restarted from a snapshot
    finally:
        first.kill()
        if second is not None:
            second.kill()
