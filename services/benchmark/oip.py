"""The benchmark's view of one worker deployment, over `modelyard.client.InferenceClient`: every call
pins the version it measures, and a failed call says which worker and which call it was."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import grpc
import numpy as np

from modelyard.api import grpc_predict_v2_pb2 as pb
from modelyard.client import ClientSettings, InferenceClient, ModelyardError
from modelyard.client.inference import EMBEDDING, TEXT, bytes_request, output_array, served_version
from modelyard.common.errors import error_for_status
from modelyard.common.modelspec import PROMPT_NAME, RequestParameter, parameters_from_metadata

_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def worker_failure(error: ModelyardError, address: str, what: str) -> ModelyardError:
    """The same error, saying which worker and call failed (a run records it as its reason)."""
    if error.code in _UNREACHABLE:
        return error_for_status(error.code, f"worker {address} unreachable during {what}: {error.message}")
    return error_for_status(
        error.code, f"worker {address} refused {what}: {error.code.name}: {error.message}"
    )


class WorkerDeployment:
    """One worker, one deployment (`model_name`); every call pins `version`."""

    def __init__(self, address: str, deployment: str, *, settings: ClientSettings | None = None) -> None:
        self.address = address
        self.deployment = deployment
        self._client = InferenceClient(address, settings)

    async def __aenter__(self) -> WorkerDeployment:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def model_ready(self, version: str) -> bool:
        try:
            reply = await self._client.model_ready(
                pb.ModelReadyRequest(name=self.deployment, version=version)
            )
        except ModelyardError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return False
            raise worker_failure(error, self.address, "ModelReady") from None
        return bool(reply.ready)

    async def _metadata(self, version: str) -> pb.ModelMetadataResponse:
        try:
            return await self._client.model_metadata(
                pb.ModelMetadataRequest(name=self.deployment, version=version)
            )
        except ModelyardError as error:
            raise worker_failure(error, self.address, "ModelMetadata") from None

    async def signature(self, version: str) -> tuple[list[str], list[str]]:
        """Names of the version's input and output tensors."""
        meta = await self._metadata(version)
        return [t.name for t in meta.inputs], [t.name for t in meta.outputs]

    async def request_parameters(self, version: str) -> tuple[RequestParameter, ...]:
        """The request parameters the version reads (its prompts), from its model metadata; none
        from a server that does not report them (Triton, KServe)."""
        meta = await self._metadata(version)
        entries = {k: v.string_param for k, v in meta.parameters.items() if v.HasField("string_param")}
        return parameters_from_metadata(entries)

    async def embed_texts(self, version: str, texts: Sequence[str], *, prompt_name: str = "") -> np.ndarray:
        """`prompt_name`: one of the version's prompts, sent as the request parameter; "" sends none."""
        request = bytes_request(self.deployment, TEXT, [t.encode("utf-8") for t in texts], version)
        if prompt_name:
            request.parameters[PROMPT_NAME].string_param = prompt_name
        try:
            response = await self._client.model_infer(request)
            served_version(response, version)
            return output_array(response, EMBEDDING)
        except ModelyardError as error:
            raise worker_failure(error, self.address, "ModelInfer") from None

    async def embed_images(self, version: str, images: Sequence[bytes]) -> np.ndarray:
        try:
            return (await self._client.embed_images(self.deployment, images, version)).vectors
        except ModelyardError as error:
            raise worker_failure(error, self.address, "ModelInfer") from None

    async def caption(self, version: str, images: Sequence[bytes]) -> list[str]:
        try:
            return (await self._client.caption(self.deployment, images, version)).captions
        except ModelyardError as error:
            raise worker_failure(error, self.address, "ModelInfer") from None
