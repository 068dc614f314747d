"""Quick ways to register versions and deployments in registry tests."""

from __future__ import annotations

import hashlib

from modelyard.api import registry_pb2 as pb
from modelyard.api import registry_pb2_grpc

Stub = registry_pb2_grpc.RegistryServiceStub


def checkpoint(version: str) -> str:
    return hashlib.sha256(version.encode()).hexdigest()


def text_signature(dim: int = 384) -> pb.Signature:
    return pb.Signature(
        inputs=[pb.TensorSpec(name="text", datatype="BYTES", shape=[-1])],
        outputs=[pb.TensorSpec(name="embedding", datatype="FP32", shape=[-1, dim])],
        embedding_dim=dim,
    )


async def register(stub: Stub, version: str, *, model_id: str = "minilm", dim: int = 384) -> pb.ModelVersion:
    return await stub.RegisterVersion(
        pb.RegisterVersionRequest(
            version=pb.ModelVersion(
                model_id=model_id,
                version=version,
                source_uri=f"/models/{model_id}/{version}",
                checkpoint_hash=checkpoint(version),
                loader="sentence-transformers",
                signature=text_signature(dim),
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
