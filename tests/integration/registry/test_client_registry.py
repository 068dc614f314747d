"""`modelyard.client` against real servers: async and blocking registry clients, one error type with
the server's request id, tokens on unary and streaming calls, and retries only where a call changes
nothing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from registry_support import checkpoint, text_signature
from support import spawn_registry, wait_until

from modelyard.api import registry_pb2 as pb
from modelyard.api import registry_pb2_grpc
from modelyard.client import ModelyardError, RegistryClient
from modelyard.client.sync import RegistryClient as SyncRegistryClient
from modelyard.common.errors import NotFound, PermissionDenied, Unauthenticated, Unavailable
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings


def _version(version: str) -> pb.RegisterVersionRequest:
    return pb.RegisterVersionRequest(
        version=pb.ModelVersion(
            model_id="minilm",
            version=version,
            source_uri=f"/models/minilm/{version}",
            checkpoint_hash=checkpoint(version),
            loader="sentence-transformers",
            signature=text_signature(),
        ),
        create_model=True,
        model_type=pb.TEXT_EMBEDDING,
    )


async def test_async_client_calls_and_errors(registry: RegistryServer) -> None:
    async with RegistryClient(registry.address) as client:
        created = await client.register_version(_version("1.0.0"))
        assert created.version == "1.0.0"
        found = await client.get_version(pb.GetVersionRequest(model_id="minilm", version="1.0.0"))
        assert found.checkpoint_hash == checkpoint("1.0.0")
        with pytest.raises(NotFound) as missing:
            await client.get_model(pb.GetModelRequest(model_id="nope"))
    error = missing.value
    assert isinstance(error, ModelyardError) and error.code == grpc.StatusCode.NOT_FOUND
    assert "unknown model 'nope'" in error.message
    assert re.fullmatch(r"[0-9a-f]{16}", error.request_id)


async def test_blocking_twin_is_the_same_api(registry: RegistryServer) -> None:
    def blocking() -> tuple[str, str]:
        with SyncRegistryClient(registry.address) as client:
            client.register_version(_version("2.0.0"))
            listed = client.list_versions(pb.ListVersionsRequest(model_id="minilm"))
            try:
                client.get_deployment(pb.GetDeploymentRequest(name="absent"))
            except NotFound as error:
                return ",".join(v.version for v in listed.versions), error.message
        raise AssertionError("NotFound expected")

    versions, message = await asyncio.to_thread(blocking)
    assert versions == "2.0.0" and "unknown deployment 'absent'" in message


async def test_token_goes_on_unary_and_streaming_calls(database_url: str) -> None:
    server = RegistryServer(
        RegistrySettings(
            database_url=database_url, port=0, metrics_port=None, poll_interval_s=0.5,
            admin_tokens="ops:admin-secret", reader_tokens="dash:read-secret",
        )
    )  # fmt: skip
    await server.start()
    try:
        async with RegistryClient(server.address, token="admin-secret") as admin:
            await admin.register_version(_version("1.0.0"))
            await admin.create_deployment(
                pb.CreateDeploymentRequest(
                    name="text", model_id="minilm", routes=[pb.Route(version="1.0.0", weight=100)]
                )
            )
        async with RegistryClient(server.address, token="read-secret") as reader:
            async for first in reader.watch_deployments(pb.WatchDeploymentsRequest()):
                assert [d.name for d in first.deployments] == ["text"]
                break
            with pytest.raises(PermissionDenied):
                await reader.rollback_deployment(pb.RollbackDeploymentRequest(name="text"))
        async with RegistryClient(server.address, token=None) as anonymous:
            with pytest.raises(Unauthenticated):
                async for _ in anonymous.watch_deployments(pb.WatchDeploymentsRequest()):
                    pass
    finally:
        await server.stop()


def test_errors_carry_the_request_id_the_server_logged(database_url: str) -> None:
    process = spawn_registry(database_url)
    try:
        with SyncRegistryClient(process.address) as client, pytest.raises(NotFound) as missing:
            client.get_model(pb.GetModelRequest(model_id="absent"))
        request_id = missing.value.request_id
        assert wait_until(lambda: any(f"request_id={request_id}" in line for line in process.lines))
        logged = next(line for line in process.lines if f"request_id={request_id}" in line)
        assert "rpc.error" in logged and "GetModel" in logged
    finally:
        process.terminate()


class _Flaky(registry_pb2_grpc.RegistryServiceServicer):
    """Answers UNAVAILABLE to the first two GetModel calls, and to every SetRoutes."""

    def __init__(self) -> None:
        self.get_calls = 0
        self.set_calls = 0

    async def GetModel(self, request: pb.GetModelRequest, context: aio.ServicerContext) -> pb.Model:
        self.get_calls += 1
        if self.get_calls <= 2:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "database briefly away")
        return pb.Model(model_id=request.model_id)

    async def SetRoutes(self, request: pb.SetRoutesRequest, context: aio.ServicerContext) -> pb.Deployment:
        self.set_calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "database briefly away")
        raise AssertionError("unreachable")


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[str, _Flaky]]:
    # Only the two RPCs the test calls: the others answer UNIMPLEMENTED, as the generated base does.
    servicer = _Flaky()  # type: ignore[abstract]
    server = aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(None)


async def test_unavailable_is_retried_only_for_calls_that_change_nothing(flaky: tuple[str, _Flaky]) -> None:
    address, servicer = flaky
    async with RegistryClient(address) as client:
        model = await client.get_model(pb.GetModelRequest(model_id="m"))
        assert model.model_id == "m" and servicer.get_calls == 3
        with pytest.raises(Unavailable, match="database briefly away"):
            await client.set_routes(pb.SetRoutesRequest(name="d"))
        assert servicer.set_calls == 1, "a change is never sent twice"
    async with RegistryClient(address, retry_attempts=1) as client:
        servicer.get_calls = 0
        with pytest.raises(Unavailable):
            await client.get_model(pb.GetModelRequest(model_id="m"))
        assert servicer.get_calls == 1


async def test_the_default_deadline_applies_to_every_unary_call(registry: RegistryServer) -> None:
    # A deadline over before the call leaves: 1 ms was racy, a fast registry answered NOT_FOUND
    # for the absent deployment inside it (seen in CI).
    async with RegistryClient(registry.address, timeout_s=1e-6) as client:
        with pytest.raises(ModelyardError) as late:
            await client.get_rollout_status(
                pb.GetRolloutStatusRequest(deployment="absent", wait_timeout_ms=1000)
            )
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
