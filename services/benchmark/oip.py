"""A small async client for workers' KServe Open Inference Protocol v2 API, pinning model versions."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from types import TracebackType

import grpc
import numpy as np
from grpc import aio

from modelyard.api import grpc_predict_v2_pb2 as pb
from modelyard.api import grpc_predict_v2_pb2_grpc as pb_grpc
from modelyard.common.channel import open_channel
from modelyard.common.errors import FailedPrecondition, InvalidArgument, ModelyardError, Unavailable
from modelyard.common.settings import ClientSettings

TEXT, IMAGE, EMBEDDING, CAPTION = "text", "image", "embedding", "caption"

_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class WorkerCallFailed(Unavailable):
    """A worker call failed; `status` is the gRPC status the worker (or the channel) returned."""

    def __init__(self, message: str, status: grpc.StatusCode) -> None:
        super().__init__(message)
        self.status = status


def _bytes_tensor(name: str, items: Sequence[bytes]) -> pb.ModelInferRequest.InferInputTensor:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype="BYTES", shape=[len(items)])
    tensor.contents.bytes_contents.extend(items)
    return tensor


def _split_raw_bytes(raw: bytes) -> list[bytes]:
    """OIP raw BYTES: each element is a 4-byte little-endian length, then that many bytes."""
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        items.append(raw[offset : offset + length])
        offset += length
    return items


def output_array(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    """The FP32 output `name` as an array shaped as the response says, from contents or raw bytes."""
    for index, tensor in enumerate(response.outputs):
        if tensor.name != name:
            continue
        shape = tuple(int(d) for d in tensor.shape)
        if response.raw_output_contents:
            values = np.frombuffer(response.raw_output_contents[index], dtype="<f4")
        else:
            values = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
        return values.reshape(shape)
    raise InvalidArgument(f"worker response has no output {name!r}")


def output_strings(response: pb.ModelInferResponse, name: str) -> list[str]:
    for index, tensor in enumerate(response.outputs):
        if tensor.name != name:
            continue
        if response.raw_output_contents:
            items = _split_raw_bytes(response.raw_output_contents[index])
        else:
            items = list(tensor.contents.bytes_contents)
        return [item.decode("utf-8", errors="replace") for item in items]
    raise InvalidArgument(f"worker response has no output {name!r}")


class OipClient:
    """One worker, one deployment (`model_name`); every call pins `version` and checks who answered."""

    def __init__(self, address: str, deployment: str, *, settings: ClientSettings | None = None) -> None:
        self.address = address
        self.deployment = deployment
        self.settings = settings or ClientSettings()
        self._channel = open_channel(address, self.settings)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    async def __aenter__(self) -> OipClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    def _failed(self, error: aio.AioRpcError, what: str) -> ModelyardError:
        code = error.code()
        reason = error.details() or code.name
        if code in _UNREACHABLE:
            return WorkerCallFailed(f"worker {self.address} unreachable during {what}: {reason}", code)
        return WorkerCallFailed(f"worker {self.address} refused {what}: {code.name}: {reason}", code)

    async def model_ready(self, version: str) -> bool:
        try:
            reply = await self._stub.ModelReady(
                pb.ModelReadyRequest(name=self.deployment, version=version), timeout=self.settings.timeout_s
            )
        except aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise self._failed(error, "ModelReady") from None
        return bool(reply.ready)

    async def metadata(self, version: str) -> pb.ModelMetadataResponse:
        try:
            return await self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=self.deployment, version=version),
                timeout=self.settings.timeout_s,
            )
        except aio.AioRpcError as error:
            raise self._failed(error, "ModelMetadata") from None

    async def signature(self, version: str) -> tuple[list[str], list[str]]:
        """Names of the version's input and output tensors."""
        meta = await self.metadata(version)
        return [t.name for t in meta.inputs], [t.name for t in meta.outputs]

    async def infer(self, version: str, input_name: str, items: Sequence[bytes]) -> pb.ModelInferResponse:
        request = pb.ModelInferRequest(
            model_name=self.deployment, model_version=version, inputs=[_bytes_tensor(input_name, items)]
        )
        try:
            response = await self._stub.ModelInfer(request, timeout=self.settings.timeout_s)
        except aio.AioRpcError as error:
            raise self._failed(error, "ModelInfer") from None
        if version and response.model_version != version:
            # A benchmark must measure the version it names, never whatever the routes chose.
            raise FailedPrecondition(
                f"asked {self.address} for {self.deployment} version {version}, "
                f"but version {response.model_version!r} answered"
            )
        return response

    async def embed_texts(self, version: str, texts: Sequence[str]) -> np.ndarray:
        response = await self.infer(version, TEXT, [t.encode("utf-8") for t in texts])
        return output_array(response, EMBEDDING)

    async def embed_images(self, version: str, images: Sequence[bytes]) -> np.ndarray:
        return output_array(await self.infer(version, IMAGE, images), EMBEDDING)

    async def caption(self, version: str, images: Sequence[bytes]) -> list[str]:
        return output_strings(await self.infer(version, IMAGE, images), CAPTION)
