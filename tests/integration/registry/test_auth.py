"""With tokens configured, every call kind (unary and streaming) carries its token, and each role
may call only what it needs: readers read, workers watch and heartbeat, the benchmark stages at
weight 0 and records runs, admins change everything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from registry_support import Stub, deploy, next_event, register

from modelyard.api import registry_pb2 as pb
from modelyard.api import registry_pb2_grpc
from modelyard.client import ClientSettings
from modelyard.client.channel import open_channel
from modelyard.common.auth import token_verifier
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings


@pytest_asyncio.fixture(loop_scope="session")
async def secured(database_url: str) -> AsyncIterator[RegistryServer]:
    """A registry holding one token per role; the worker's and benchmark's only as verifiers."""
    server = RegistryServer(
        RegistrySettings(
            database_url=database_url,
            port=0,
            metrics_port=None,
            poll_interval_s=0.5,
            admin_tokens="ops:admin-secret",
            reader_tokens="dash:read-secret",
            worker_tokens=f"w1:{token_verifier('worker-secret')}",
            benchmark_tokens=f"bench:{token_verifier('bench-secret')}",
        )
    )
    await server.start()
    try:
        async with open_channel(server.address, ClientSettings(token="admin-secret")) as channel:
            admin = Stub(channel)
            await register(admin, "1.0.0")
            await register(admin, "1.1.0")
            await deploy(admin, "text", {"1.0.0": 100})
        yield server
    finally:
        await server.stop()


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_tokens(database_url: str) -> None:
    server = RegistryServer(
        RegistrySettings(
            database_url=database_url,
            port=0,
            metrics_port=None,
            admin_tokens="ops:admin-secret",
            reader_tokens="dash:read-secret",
        )
    )
    await server.start()
    try:
        async with open_channel(server.address, ClientSettings(token="admin-secret")) as channel:
            admin = registry_pb2_grpc.RegistryServiceStub(channel)
            created = await register(admin, "1.0.0")
            assert created.created_by == "ops"

        async with open_channel(server.address) as channel:
            anonymous = registry_pb2_grpc.RegistryServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await anonymous.ListModels(pb.ListModelsRequest())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "Bearer" in (err.value.details() or "")

        async with open_channel(server.address, ClientSettings(token="wrong")) as channel:
            wrong = registry_pb2_grpc.RegistryServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await wrong.ListModels(pb.ListModelsRequest())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        async with open_channel(server.address, ClientSettings(token="read-secret")) as channel:
            reader = registry_pb2_grpc.RegistryServiceStub(channel)
            listed = await reader.ListVersions(pb.ListVersionsRequest(model_id="minilm"))
            assert [v.version for v in listed.versions] == ["1.0.0"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await register(reader, "1.1.0")
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "admin" in (err.value.details() or "")
            listed = await reader.ListVersions(pb.ListVersionsRequest(model_id="minilm"))
            assert [v.version for v in listed.versions] == ["1.0.0"], "a refused change writes nothing"
    finally:
        await server.stop()


@pytest.mark.parametrize("token", ["read-secret", "worker-secret", "bench-secret", "admin-secret"])
async def test_watch_stream_carries_the_token(secured: RegistryServer, token: str) -> None:
    """The streaming RPC gets its token like unary ones (it went out without one before)."""
    async with open_channel(secured.address, ClientSettings(token=token)) as channel:
        call = Stub(channel).WatchDeployments(pb.WatchDeploymentsRequest())
        first = await next_event(call, 10)
        call.cancel()
    assert first.kind == pb.WatchDeploymentsResponse.SNAPSHOT
    assert [d.name for d in first.deployments] == ["text"]


async def test_watch_without_a_token_is_refused(secured: RegistryServer) -> None:
    async with open_channel(secured.address) as channel:
        call = Stub(channel).WatchDeployments(pb.WatchDeploymentsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_worker_role_watches_reads_and_heartbeats_only(secured: RegistryServer) -> None:
    async with open_channel(secured.address, ClientSettings(token="worker-secret")) as channel:
        worker = Stub(channel)
        assert (await worker.GetDeployment(pb.GetDeploymentRequest(name="text"))).name == "text"
        await worker.ReportStatus(
            pb.ReportStatusRequest(status=pb.WorkerStatus(worker_id="w1", address="127.0.0.1:1"))
        )
        routes = [pb.Route(version="1.1.0", weight=100)]
        assert await _code(worker.SetRoutes(pb.SetRoutesRequest(name="text", routes=routes))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await _code(worker.StageVersion(pb.StageVersionRequest(name="text", version="1.1.0"))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await _code(
            worker.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.1.0"))
        ) == (grpc.StatusCode.PERMISSION_DENIED)
        assert await _code(worker.RecordBenchmarkRun(pb.RecordBenchmarkRunRequest())) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    async with open_channel(secured.address, ClientSettings(token="read-secret")) as channel:
        workers = await Stub(channel).ListWorkers(pb.ListWorkersRequest())
        assert [w.worker_id for w in workers.workers] == ["w1"]
        status = pb.ReportStatusRequest(status=pb.WorkerStatus(worker_id="fake", address="1.2.3.4:5"))
        assert await _code(Stub(channel).ReportStatus(status)) == grpc.StatusCode.PERMISSION_DENIED


async def test_benchmark_role_stages_at_weight_zero_and_nothing_else(secured: RegistryServer) -> None:
    async with open_channel(secured.address, ClientSettings(token="bench-secret")) as channel:
        bench = Stub(channel)
        staged = await bench.StageVersion(pb.StageVersionRequest(name="text", version="1.1.0"))
        assert [(r.version, r.weight) for r in staged.routes] == [("1.0.0", 100), ("1.1.0", 0)]
        again = await bench.StageVersion(pb.StageVersionRequest(name="text", version="1.1.0"))
        assert again.revision == staged.revision, "staging a staged version changes nothing"

        traffic = [pb.Route(version="1.0.0", weight=50), pb.Route(version="1.1.0", weight=50)]
        assert await _code(bench.SetRoutes(pb.SetRoutesRequest(name="text", routes=traffic))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await _code(bench.RollbackDeployment(pb.RollbackDeploymentRequest(name="text"))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await _code(bench.UnstageVersion(pb.UnstageVersionRequest(name="text", version="1.0.0"))) == (
            grpc.StatusCode.FAILED_PRECONDITION
        ), "a route with traffic is never unstaged"
        unstaged = await bench.UnstageVersion(pb.UnstageVersionRequest(name="text", version="1.1.0"))
        assert [(r.version, r.weight) for r in unstaged.routes] == [("1.0.0", 100)]

    async with open_channel(secured.address, ClientSettings(token="read-secret")) as channel:
        history = await Stub(channel).ListAuditEvents(pb.ListAuditEventsRequest(entity_id="text"))
        actions = [(e.action, e.actor) for e in history.events]
        assert actions[:2] == [("version.unstage", "bench"), ("version.stage", "bench")]


async def test_a_verifier_is_not_a_token(secured: RegistryServer) -> None:
    """A server configured with `sha256:` verifiers does not accept the verifier itself as a token."""
    async with open_channel(
        secured.address, ClientSettings(token=token_verifier("worker-secret"))
    ) as channel:
        assert (
            await _code(Stub(channel).ListModels(pb.ListModelsRequest())) == grpc.StatusCode.UNAUTHENTICATED
        )
