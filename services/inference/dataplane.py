"""The data plane every transport uses: validate a neutral request, route it to a loaded
version, admit it (`limits`), batch it, and build the neutral response naming the version that
served it."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.common.errors import ModelyardError
from modelyard.common.log import event
from modelyard.common.modelspec import MODEL_PARAMETERS, Signature, TensorSpec, parameters_to_metadata
from modelyard.inference import metrics
from modelyard.inference.batching import CoreUse, DynamicBatcher
from modelyard.inference.domain import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    OutputTensor,
)
from modelyard.inference.errors import BadInput, NotReady, WorkerAtCapacity
from modelyard.inference.limits import Admission, ItemLimits, TextLimit, check_images, text_token_limit
from modelyard.inference.live_counters import LiveCounters
from modelyard.inference.routing import LoadedRuntime, RoutingTable
from modelyard.inference.shadow import SHADOW_CALLER, SHADOW_ITEMS_IN_FLIGHT, agreement

log = logging.getLogger("modelyard.inference.dataplane")

# Below this many input bytes, cheap decoding (UTF-8) costs less than a hop to the executor.
_INLINE_PREPARE_BYTES = 64 * 1024


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # The request parameters the version reads, flattened to strings (`modelspec.parameters_to_metadata`).
    parameters: dict[str, str] = field(default_factory=dict)


class DataPlane:
    """Serves requests from the routing table. Forward passes run in `executor`, up to `instances`
    at once per version, a lone request in `solo_executor` when given (see `batching`); input
    decoding runs in `decode_executor` (default: `executor`), mirrored copies of requests for a shadow
    version in `shadow_executor` (see `shadow`). Requests are bounded by `limits` and
    admitted by `admission` (see `limits`); call `routes_changed()` whenever the table changes.
    Every request that reaches a version is counted in `counters` (what heartbeats carry)."""

    def __init__(
        self,
        table: RoutingTable,
        executor: Executor,
        *,
        instances: int = 1,
        solo_executor: Executor | None = None,
        decode_executor: Executor | None = None,
        shadow_executor: Executor | None = None,
        limits: ItemLimits | None = None,
        admission: Admission | None = None,
        counters: LiveCounters | None = None,
        core_use: CoreUse | None = None,
    ) -> None:
        self.table = table
        self._core_use = core_use or CoreUse()  # the primary lanes' work, loads included (`batching`)
        self.counters = counters or LiveCounters()
        self._executor = executor
        self._instances = instances
        self._solo_executor = solo_executor
        self._decode_executor = decode_executor or executor
        self._shadow_executor = shadow_executor or executor
        self._shadow_items = 0  # items being mirrored now (see `shadow`)
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.limits = limits or ItemLimits()
        self.admission = admission or Admission()
        self._text_limits: weakref.WeakKeyDictionary[LoadedRuntime, TextLimit] = weakref.WeakKeyDictionary()

    def routes_changed(self) -> None:
        """Size the auto admission limit for the versions now loaded."""
        batches = [
            loaded.spec.config.max_batch_size
            for name in self.table.deployments()
            for loaded in self.table.get(name).versions.values()
        ]
        if batches:
            self.admission.fit_batches(max(batches))

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
            parameters=parameters_to_metadata(signature.parameters),
        )

    async def infer(self, request: InferenceRequest, caller: str = "") -> InferenceResponse:
        """Serve one request; `caller` names who sent it (a connection), for fair admission and
        batching."""
        if not request.deployment:
            raise BadInput("model_name is empty; set it to the deployment to call")
        started = time.perf_counter()
        async with self.table.acquire(request.deployment, request.version) as loaded:
            labels = (request.deployment, loaded.spec.model_id, loaded.version)
            outcome, code = "error", "INTERNAL"
            try:
                response = await self._infer_on(loaded, request, labels, caller)
                outcome = "success"
                return response
            except BadInput:
                outcome, code = "invalid", BadInput.code.name
                raise
            except WorkerAtCapacity:
                outcome, code = "refused", WorkerAtCapacity.code.name
                raise
            except asyncio.CancelledError:
                # The caller went away (often its deadline): evidence of a slow version too.
                outcome, code = "cancelled", "CANCELLED"
                raise
            except ModelyardError as error:
                code = error.code.name
                raise
            finally:
                seconds = time.perf_counter() - started
                metrics.REQUEST_DURATION.labels(*labels, outcome).observe(seconds)
                # Looked up now, not before the work: a heartbeat may have dropped the series of a
                # version that left the status meanwhile, and this count must not go with it.
                series = self.counters.series(request.deployment, loaded.version)
                if outcome == "success":
                    series.succeeded(seconds, request.inputs[0].shape[0])
                else:
                    series.failed(code)

    async def _infer_on(
        self, loaded: LoadedRuntime, request: InferenceRequest, labels: tuple[str, str, str], caller: str
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
        parameters = model_parameters(signature, request.parameters, loaded.version)
        items = tensor.data if isinstance(tensor.data, list) else list(tensor.data)
        admission = self.admission
        admitted = len(items)
        admission.enter(caller, admitted)
        try:
            prepared = await self._prepare(loaded, tensor.name, items, parameters)
            batcher = self._batcher(loaded, tensor.name, labels)
            lengths = loaded.runtime.item_lengths(tensor.name, prepared)
            rows, waited = await batcher.submit(prepared, caller, lengths)
        finally:
            admission.exit(caller, admitted)
        metrics.QUEUE_DURATION.labels(*labels).observe(waited)
        self._observe_drift(request.deployment, loaded, tensor.name, items, rows)
        if not request.version:
            routes = self.table.find(request.deployment)
            shadow = routes.shadow() if routes is not None else None
            if shadow is not None and shadow is not loaded:
                # Prepared elements depend on the parameters (a prompt) when a version reads any:
                # then the shadow prepares its own from the request, as if sent to it.
                reads = bool(signature.parameters or shadow.runtime.signature().parameters)
                own = request.parameters if reads else None
                self._mirror(request.deployment, shadow, tensor.name, items, prepared, lengths, rows, own)
        wanted = request.requested_outputs or list(rows)
        outputs = [_output(name, rows[name]) for name in wanted if name in rows]
        return InferenceResponse(
            deployment=request.deployment,
            version=loaded.version,
            id=request.id,
            outputs=outputs,
            raw=request.raw,
        )

    def _mirror(
        self,
        deployment: str,
        shadow: LoadedRuntime,
        name: str,
        items: list[bytes],
        prepared: list[Any],
        lengths: list[int] | None,
        primary: dict[str, Any],
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        """Send a copy of an answered request to the shadow version, in the background (`shadow`).
        With `parameters` (the request's), the shadow prepares the items itself instead of taking
        `prepared`."""
        labels = (deployment, shadow.spec.model_id, shadow.version)
        if self._shadow_items + len(prepared) > SHADOW_ITEMS_IN_FLIGHT:
            metrics.SHADOW_DROPPED.labels(*labels).inc()
            return
        self._shadow_items += len(prepared)
        shadow.enter()  # held until the call ends: a version leaving the routes drains it first
        task = asyncio.get_running_loop().create_task(
            self._shadow_call(
                deployment, shadow, labels, name, items, prepared, lengths, primary, parameters
            ),
            name="shadow",
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow_call(
        self,
        deployment: str,
        shadow: LoadedRuntime,
        labels: tuple[str, str, str],
        name: str,
        items: list[bytes],
        prepared: list[Any],
        lengths: list[int] | None,
        primary: dict[str, Any],
        parameters: Mapping[str, Any] | None,
    ) -> None:
        started = time.perf_counter()
        outcome, code = "error", "INTERNAL"
        rows: dict[str, Any] | None = None
        try:
            if parameters is not None:  # a refusal (BadInput) is what the shadow would answer
                chosen = model_parameters(shadow.runtime.signature(), parameters, shadow.version)
                prepared = await self._prepare(shadow, name, items, chosen)
                lengths = shadow.runtime.item_lengths(name, prepared)
            batcher = self._batcher(shadow, name, labels, shadow=True)
            rows, _ = await batcher.submit(prepared, SHADOW_CALLER, lengths)
            outcome = "success"
        except asyncio.CancelledError:
            outcome, code = "cancelled", "CANCELLED"
        except ModelyardError as error:
            code = error.code.name
        except Exception as exc:  # a shadow's failure is evidence about it, never the caller's problem
            event(log, "shadow.failed", level=logging.INFO, deployment=deployment, version=shadow.version,
                  error=repr(exc))  # fmt: skip
        finally:
            self._shadow_items -= len(prepared)
            shadow.exit()
        seconds = time.perf_counter() - started
        metrics.SHADOW_DURATION.labels(*labels, outcome).observe(seconds)
        series = self.counters.series(deployment, shadow.version)
        series.shadow_requests += 1
        if rows is None:
            series.failed(code)
            return
        series.succeeded(seconds, len(prepared))
        series.agreed(*agreement(primary, rows))
        self._observe_drift(deployment, shadow, name, items, rows)

    def _observe_drift(
        self, deployment: str, loaded: LoadedRuntime, name: str, items: list[bytes], rows: dict[str, Any]
    ) -> None:
        """Drift summaries are evidence, never a reason to fail the request they describe."""
        try:
            self.counters.observe_outputs(deployment, loaded.version, loaded.spec.model_id, name, items, rows)
        except Exception as exc:
            event(log, "drift.observe_failed", level=logging.WARNING, deployment=deployment, error=repr(exc))

    async def _prepare(
        self, loaded: LoadedRuntime, name: str, items: list[bytes], parameters: Mapping[str, str]
    ) -> list[Any]:
        """Check the elements against their limits, then decode them (with the request parameters
        the version reads): inline when cheap, else in the decode executor (images: header checks
        there too, they are PIL calls)."""
        runtime = loaded.runtime
        if name == "text":
            self._text_limit(loaded).check(items, name, loaded.version)
        if runtime.prepare_is_cheap(name) and sum(len(item) for item in items) < _INLINE_PREPARE_BYTES:
            return runtime.prepare_request(name, items, parameters)
        loop = asyncio.get_running_loop()
        if name == "image":
            return await loop.run_in_executor(
                self._decode_executor, self._prepare_images, runtime, items, parameters
            )
        return await loop.run_in_executor(
            self._decode_executor, runtime.prepare_request, name, items, parameters
        )

    def _prepare_images(self, runtime: Any, items: list[bytes], parameters: Mapping[str, str]) -> list[Any]:
        check_images(items, "image", self.limits)
        return runtime.prepare_request("image", items, parameters)

    def _text_limit(self, loaded: LoadedRuntime) -> TextLimit:
        limit = self._text_limits.get(loaded)
        if limit is None:
            limit = TextLimit(text_token_limit(loaded.runtime), self.limits.text_bytes_per_token)
            self._text_limits[loaded] = limit
        return limit

    def _batcher(
        self, loaded: LoadedRuntime, input_name: str, labels: tuple[str, str, str], *, shadow: bool = False
    ) -> DynamicBatcher:
        """The version's batcher for `input_name`; a shadow's copies have their own, on the shadow lane."""
        key = f"shadow:{input_name}" if shadow else input_name
        batcher = loaded.batchers.get(key)
        if batcher is None:
            runtime = loaded.runtime
            observe = metrics.BATCH_SIZE.labels(*labels).observe

            def run(items: list[Any]) -> dict[str, Any]:
                return runtime.predict(input_name, items)

            batcher = DynamicBatcher(
                run,
                max_batch_size=loaded.spec.config.max_batch_size,
                max_delay_s=loaded.spec.config.max_delay_ms / 1000,
                executor=self._shadow_executor if shadow else self._executor,
                instances=1 if shadow else self._instances,
                solo_executor=None if shadow else self._solo_executor,
                on_batch=observe,
                max_batch_tokens=loaded.spec.config.batch_tokens(runtime.device),
                core_use=None if shadow else self._core_use,
            )
            loaded.batchers[key] = batcher
        return batcher


def model_parameters(signature: Signature, sent: Mapping[str, Any], version: str) -> dict[str, str]:
    """The request parameters `version` reads, each checked against what its signature declares;
    a parameter Modelyard defines for models (`MODEL_PARAMETERS`) that the version does not read
    is refused too. Anything else a request sends is ignored."""
    chosen: dict[str, str] = {}
    for parameter in signature.parameters:
        if parameter.name not in sent:
            continue
        value = sent[parameter.name]
        what = MODEL_PARAMETERS.get(parameter.name, "values")
        defined = ", ".join(f"{v} ({meaning!r})" for v, meaning in parameter.choices)
        if not isinstance(value, str):
            raise BadInput(
                f"parameter {parameter.name!r} is {_describe(value)}; send a string, one of version "
                f"{version}'s {what}: {defined}"
            )
        if parameter.choices and parameter.meaning(value) is None:
            raise BadInput(
                f"parameter {parameter.name!r} is {value!r}, not one of version {version}'s {what}: {defined}"
            )
        chosen[parameter.name] = value
    for name, what in MODEL_PARAMETERS.items():
        if name in sent and signature.parameter(name) is None:
            raise BadInput(f"parameter {name!r}: version {version} defines no {what}; leave {name} out")
    return chosen


def _describe(value: Any) -> str:
    if value is None:
        return "unset (null)"
    return f"a {type(value).__name__} ({value!r})"


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


def _representative(versions: Any, weights: Any) -> LoadedRuntime:
    """The heaviest-weighted version, for metadata requests that pin none."""
    best = max(versions, key=lambda name: weights.get(name, 0))
    return versions[best]
