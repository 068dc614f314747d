"""Quick ways to register versions and deployments in registry tests."""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

from grpc import aio

from modelyard.api import registry_pb2 as pb
from modelyard.api import registry_pb2_grpc

# The generated stub on a grpc.aio channel; its awaitable type exists only in the type stubs.
if TYPE_CHECKING:
    from modelyard.api.registry_pb2_grpc import RegistryServiceAsyncStub as Stub
else:
    Stub = registry_pb2_grpc.RegistryServiceStub


def checkpoint(version: str) -> str:
    return hashlib.sha256(version.encode()).hexdigest()


def text_signature(dim: int = 384) -> pb.Signature:
    return pb.Signature(
        inputs=[pb.TensorSpec(name="text", datatype="BYTES", shape=[-1])],
        outputs=[pb.TensorSpec(name="embedding", datatype="FP32", shape=[-1, dim])],
        embedding_dim=dim,
    )


async def register(
    stub: Stub,
    version: str,
    *,
    model_id: str = "minilm",
    dim: int = 384,
    parameters: dict[str, str] | None = None,
) -> pb.ModelVersion:
    signature = text_signature(dim)
    signature.parameters.update(parameters or {})
    return await stub.RegisterVersion(
        pb.RegisterVersionRequest(
            version=pb.ModelVersion(
                model_id=model_id,
                version=version,
                source_uri=f"/models/{model_id}/{version}",
                checkpoint_hash=checkpoint(version),
                loader="sentence-transformers",
                signature=signature,
            ),
            create_model=True,
            model_type=pb.TEXT_EMBEDDING,
        )
    )


async def deploy(stub: Stub, name: str, routes: dict[str, int], *, model_id: str = "minilm") -> pb.Deployment:
    return await stub.CreateDeployment(
        pb.CreateDeploymentRequest(name=name, model_id=model_id, routes=routes_pb(routes))
    )


def routes_pb(routes: dict[str, int]) -> list[pb.Route]:
    return [pb.Route(version=v, weight=w) for v, w in routes.items()]


async def next_event(
    stream: aio.UnaryStreamCall[pb.WatchDeploymentsRequest, pb.WatchDeploymentsResponse], timeout_s: float
) -> pb.WatchDeploymentsResponse:
    """The next message of a WatchDeployments stream, waiting at most `timeout_s`."""
    message = await asyncio.wait_for(stream.read(), timeout_s)
    # read() answers grpc.aio.EOF (untyped in the stubs) once the stream has ended.
    assert isinstance(message, pb.WatchDeploymentsResponse), f"the watch stream ended: {message}"
    return message
