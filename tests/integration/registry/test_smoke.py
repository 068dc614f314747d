from __future__ import annotations

import grpc
import pytest

from modelyard.api import registry_pb2 as pb
from modelyard.api import registry_pb2_grpc
from modelyard.common.channel import open_channel

HASH = "a" * 64


async def test_register_and_route(registry) -> None:  # type: ignore[no-untyped-def]
    async with open_channel(registry.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        v = await stub.RegisterVersion(
            pb.RegisterVersionRequest(
                version=pb.ModelVersion(model_id="m", version="1.0.0", source_uri="/x", checkpoint_hash=HASH,
                                        loader="sentence-transformers"),
                create_model=True, model_type=pb.TEXT_EMBEDDING,
            )
        )
        assert v.version == "1.0.0"
        d = await stub.CreateDeployment(
            pb.CreateDeploymentRequest(name="dep", model_id="m", routes=[pb.Route(version="1.0.0", weight=100)])
        )
        assert d.revision == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterVersion(pb.RegisterVersionRequest(version=pb.ModelVersion(model_id="m", version="1.0")))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
