"""`InferenceClient`: a worker's KServe Open Inference Protocol v2 API (`inference.GRPCInferenceService`),
plus `embed_texts`, `embed_images` and `caption`, which return the outputs and the version that
served them. Any OIP v2 server works (Triton, KServe, MLServer) for the plain RPCs."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelyard.api import grpc_predict_v2_pb2 as pb
from modelyard.client.rpc import AsyncClient, SyncClient, Unary
from modelyard.common.errors import FailedPrecondition, InvalidArgument

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
TEXT, IMAGE, EMBEDDING, CAPTION = "text", "image", "embedding", "caption"


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 [N, D]
    version: str  # the version that served the request


@dataclass(frozen=True)
class Captions:
    captions: list[str]
    version: str


def bytes_request(
    deployment: str, input_name: str, items: Sequence[bytes], version: str | None = None
) -> pb.ModelInferRequest:
    """A ModelInferRequest with one BYTES tensor [N]; `version` pins one, None follows the routes."""
    tensor = pb.ModelInferRequest.InferInputTensor(name=input_name, datatype="BYTES", shape=[len(items)])
    tensor.contents.bytes_contents.extend(items)
    return pb.ModelInferRequest(model_name=deployment, model_version=version or "", inputs=[tensor])


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
    raise InvalidArgument(f"the response has no output {name!r}")


def output_strings(response: pb.ModelInferResponse, name: str) -> list[str]:
    for index, tensor in enumerate(response.outputs):
        if tensor.name != name:
            continue
        if response.raw_output_contents:
            items = _split_raw_bytes(response.raw_output_contents[index])
        else:
            items = list(tensor.contents.bytes_contents)
        return [item.decode("utf-8", errors="replace") for item in items]
    raise InvalidArgument(f"the response has no output {name!r}")


def served_version(response: pb.ModelInferResponse, pinned: str | None) -> str:
    """The version that answered; a pinned request answered by another version is an error (a
    benchmark, or a caller comparing versions, must get the one it named)."""
    if pinned and response.model_version != pinned:
        raise FailedPrecondition(
            f"asked {response.model_name} for version {pinned}, but version {response.model_version!r} answered"
        )
    return response.model_version


class _InferenceRpcs:
    service = SERVICE
    server_live = Unary("ServerLive", pb.ServerLiveRequest, pb.ServerLiveResponse, idempotent=True)
    server_ready = Unary("ServerReady", pb.ServerReadyRequest, pb.ServerReadyResponse, idempotent=True)
    model_ready = Unary("ModelReady", pb.ModelReadyRequest, pb.ModelReadyResponse, idempotent=True)
    server_metadata = Unary(
        "ServerMetadata", pb.ServerMetadataRequest, pb.ServerMetadataResponse, idempotent=True
    )
    model_metadata = Unary(
        "ModelMetadata", pb.ModelMetadataRequest, pb.ModelMetadataResponse, idempotent=True
    )
    # Inference changes nothing on the server, so an UNAVAILABLE attempt is retried too.
    model_infer = Unary("ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse, idempotent=True)


class InferenceClient(_InferenceRpcs, AsyncClient):
    """One worker (or any OIP v2 server) over grpc.aio."""

    async def embed_texts(
        self,
        deployment: str,
        texts: Sequence[str],
        version: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Embeddings:
        request = bytes_request(deployment, TEXT, [t.encode("utf-8") for t in texts], version)
        response = await self.model_infer(request, timeout=timeout)
        return Embeddings(output_array(response, EMBEDDING), served_version(response, version))

    async def embed_images(
        self,
        deployment: str,
        images: Sequence[bytes],
        version: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Embeddings:
        """`images`: encoded PNG or JPEG bytes."""
        response = await self.model_infer(bytes_request(deployment, IMAGE, images, version), timeout=timeout)
        return Embeddings(output_array(response, EMBEDDING), served_version(response, version))

    async def caption(
        self,
        deployment: str,
        images: Sequence[bytes],
        version: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Captions:
        response = await self.model_infer(bytes_request(deployment, IMAGE, images, version), timeout=timeout)
        return Captions(output_strings(response, CAPTION), served_version(response, version))


class SyncInferenceClient(_InferenceRpcs, SyncClient):
    """One worker (or any OIP v2 server), blocking."""

    def embed_texts(
        self,
        deployment: str,
        texts: Sequence[str],
        version: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Embeddings:
        request = bytes_request(deployment, TEXT, [t.encode("utf-8") for t in texts], version)
        response = self.model_infer(request, timeout=timeout)
        return Embeddings(output_array(response, EMBEDDING), served_version(response, version))

    def embed_images(
        self,
        deployment: str,
        images: Sequence[bytes],
        version: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Embeddings:
        response = self.model_infer(bytes_request(deployment, IMAGE, images, version), timeout=timeout)
        return Embeddings(output_array(response, EMBEDDING), served_version(response, version))

    def caption(
        self,
        deployment: str,
        images: Sequence[bytes],
        version: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Captions:
        response = self.model_infer(bytes_request(deployment, IMAGE, images, version), timeout=timeout)
        return Captions(output_strings(response, CAPTION), served_version(response, version))
