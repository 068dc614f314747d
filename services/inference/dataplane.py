"""The data plane every transport uses: validate a neutral request, route it to a loaded
version, batch it, and build the neutral response naming the version that served it."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.inference import metrics
from modelyard.inference.batching import DynamicBatcher
from modelyard.inference.domain import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    OutputTensor,
    TensorSpec,
)
from modelyard.inference.errors import BadInput, NotReady
from modelyard.inference.routing import LoadedVersion, RoutingTable

# Below this many input bytes, cheap decoding (UTF-8) costs less than a hop to the executor.
_INLINE_PREPARE_BYTES = 64 * 1024


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class DataPlane:
    """Serves requests from the routing table. Forward passes run in `executor`, up to `instances`
    at once per version, a lone request in `solo_executor` when given (see `batching`); input
    decoding runs in `decode_executor` (default: `executor`)."""

    def __init__(
        self,
        table: RoutingTable,
        executor: Executor,
        *,
        instances: int = 1,
        solo_executor: Executor | None = None,
        decode_executor: Executor | None = None,
    ) -> None:
        self.table = table
        self._executor = executor
        self._instances = instances
        self._solo_executor = solo_executor
        self._decode_executor = decode_executor or executor

    def ready(self) -> bool:
        return self.table.any_routable

    def model_ready(self, deployment: str, version: str = "") -> bool:
        routes = self.table.find(deployment)
        if routes is None:
            return False
        return version in routes.versions if version else routes.routable

    def model_metadata(self, deployment: str, version: str = "") -> ModelMetadata:
        routes = self.table.get(deployment)
        if not routes.versions:
            raise NotReady(f"deployment {deployment!r} has no version loaded yet")
        loaded = routes.choose(version) if version else _representative(routes.versions, routes.weights)
        signature = loaded.runtime.signature()
        return ModelMetadata(
            name=deployment,
            versions=sorted(routes.versions),
            platform=loaded.spec.loader,
            inputs=list(signature.inputs),
            outputs=list(signature.outputs),
        )

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        if not request.deployment:
            raise BadInput("model_name is empty; set it to the deployment to call")
        started = time.perf_counter()
        async with self.table.acquire(request.deployment, request.version) as loaded:
            labels = (request.deployment, loaded.spec.model_id, loaded.version)
            outcome = "error"
            try:
                response = await self._infer_on(loaded, request, labels)
                outcome = "success"
                return response
            except BadInput:
                outcome = "invalid"
                raise
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                metrics.REQUEST_DURATION.labels(*labels, outcome).observe(time.perf_counter() - started)

    async def _infer_on(
        self, loaded: LoadedVersion, request: InferenceRequest, labels: tuple[str, str, str]
    ) -> InferenceResponse:
        signature = loaded.runtime.signature()
        tensor = _single_input(request.inputs, [spec.name for spec in signature.inputs])
        spec = signature.input(tensor.name)
        if spec is None:
            accepted = ", ".join(f"`{s.name}` {s.datatype}" for s in signature.inputs)
            raise BadInput(f"input {tensor.name!r} is not accepted by this model; it takes {accepted}")
        if tensor.datatype != spec.datatype:
            raise BadInput(
                f"input {tensor.name!r} has datatype {tensor.datatype}; this model needs {spec.datatype}"
            )
        if len(tensor.shape) != len(spec.shape):
            raise BadInput(
                f"input {tensor.name!r} has shape {tensor.shape}; this model needs {list(spec.shape)} "
                "(-1 = any size)"
            )
        count = tensor.shape[0]
        if count == 0:
            raise BadInput(f"input {tensor.name!r} is an empty batch; send at least one element")
        limit = loaded.spec.config.max_batch_size
        if count > limit:
            # INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: retrying the same request can never succeed.
            raise BadInput(
                f"input {tensor.name!r} has {count} elements; version {loaded.version} takes at most "
                f"{limit} per request, split the batch"
            )
        signature_outputs = [s.name for s in signature.outputs]
        for name in request.requested_outputs:
            if name not in signature_outputs:
                raise BadInput(
                    f"output {name!r} does not exist; this model has {', '.join(signature_outputs)}"
                )
        items = tensor.data if isinstance(tensor.data, list) else list(tensor.data)
        runtime = loaded.runtime
        if runtime.prepare_is_cheap(tensor.name) and sum(len(item) for item in items) < _INLINE_PREPARE_BYTES:
            prepared = runtime.prepare(tensor.name, items)
        else:
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(self._decode_executor, runtime.prepare, tensor.name, items)
        batcher = self._batcher(loaded, tensor.name, labels)
        rows, waited = await batcher.submit(prepared)
        metrics.QUEUE_DURATION.labels(*labels).observe(waited)
        wanted = request.requested_outputs or list(rows)
        outputs = [_output(name, rows[name]) for name in wanted if name in rows]
        return InferenceResponse(
            deployment=request.deployment,
            version=loaded.version,
            id=request.id,
            outputs=outputs,
            raw=request.raw,
        )

    def _batcher(
        self, loaded: LoadedVersion, input_name: str, labels: tuple[str, str, str]
    ) -> DynamicBatcher:
        batcher = loaded.batchers.get(input_name)
        if batcher is None:
            runtime = loaded.runtime
            observe = metrics.BATCH_SIZE.labels(*labels).observe

            def run(items: list[Any]) -> dict[str, Any]:
                return runtime.predict(input_name, items)  # type: ignore[no-any-return]

            batcher = DynamicBatcher(
                run,
                max_batch_size=loaded.spec.config.max_batch_size,
                max_delay_s=loaded.spec.config.max_delay_ms / 1000,
                executor=self._executor,
                instances=self._instances,
                solo_executor=self._solo_executor,
                on_batch=observe,
            )
            loaded.batchers[input_name] = batcher
        return batcher  # type: ignore[no-any-return]


def _single_input(inputs: list[InputTensor], accepted: list[str]) -> InputTensor:
    if not inputs:
        raise BadInput(f"the request has no inputs; send one of {', '.join(accepted)}")
    if len(inputs) > 1:
        raise BadInput(
            f"the request has {len(inputs)} inputs; send one input tensor per request "
            f"(one of {', '.join(accepted)})"
        )
    return inputs[0]


def _output(name: str, value: Any) -> OutputTensor:
    if isinstance(value, np.ndarray):
        return OutputTensor(name=name, datatype="FP32", shape=list(value.shape), data=value)
    items = [v if isinstance(v, bytes) else str(v).encode() for v in value]
    return OutputTensor(name=name, datatype="BYTES", shape=[len(items)], data=items)


def _representative(versions: Any, weights: Any) -> LoadedVersion:
    """The heaviest-weighted version, for metadata requests that pin none."""
    best = max(versions, key=lambda name: weights.get(name, 0))
    return versions[best]  # type: ignore[no-any-return]
