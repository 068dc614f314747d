"""With tokens configured, reads need a reader token and changes an admin token."""

from __future__ import annotations

import grpc
import pytest
from registry_support import register

from modelyard.api import registry_pb2 as pb
from modelyard.api import registry_pb2_grpc
from modelyard.common.channel import open_channel
from modelyard.common.settings import ClientSettings
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings


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
            assert "Bearer" in err.value.details()

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
            assert "admin token" in err.value.details()
            listed = await reader.ListVersions(pb.ListVersionsRequest(model_id="minilm"))
            assert [v.version for v in listed.versions] == ["1.0.0"], "a refused change writes nothing"
    finally:
        await server.stop()
