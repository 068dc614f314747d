"""OIP v2 `inference.GRPCInferenceService`: protobuf in, protobuf out; the data plane does the rest."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from grpc import aio

from modelyard.api import grpc_predict_v2_pb2 as pb
from modelyard.api import grpc_predict_v2_pb2_grpc as pb_grpc
from modelyard.common.auth import ALL_ROLES, AccessPolicy
from modelyard.inference.converters import parameters_to_grpc, request_from_grpc, response_to_grpc
from modelyard.inference.dataplane import DataPlane

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# With tokens configured, any known token may call a model: backends hold reader tokens, the
# benchmark service its own.
POLICY = AccessPolicy.of(
    {tuple(pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name): ALL_ROLES}
)


def _server_version() -> str:
    try:
        return version("modelyard")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, *, live: bool = True) -> None:
        self._dataplane = dataplane
        self.live = live

    async def ServerLive(  # method names fixed by the OIP v2 spec
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.live)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dataplane.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._dataplane.model_ready(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="modelyard-worker", version=_server_version(), extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        meta = self._dataplane.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
                for t in meta.inputs
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
                for t in meta.outputs
            ],
            parameters=parameters_to_grpc(meta.parameters),
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        # A caller is one connection: fairness between callers is per client channel.
        response = await self._dataplane.infer(request_from_grpc(request), caller=context.peer())
        return response_to_grpc(response)
