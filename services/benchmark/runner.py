"""Runs a suite against worker versions, streams progress, and records each run exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from modelyard.benchmark.captions import CaptionSuite
from modelyard.benchmark.catalog import LOAD, QualitySuite, resolve_suite
from modelyard.benchmark.environment import hardware_summary, host_conditions
from modelyard.benchmark.images import ImageEmbeddingSuite, load_digits_images
from modelyard.benchmark.load import LoadPlan, measure_load
from modelyard.benchmark.results import MetricResult, RunRecord
from modelyard.benchmark.retrieval import Progress, RetrievalSuite, retrieval_prompts
from modelyard.benchmark.store import RunStore
from modelyard.common.errors import FailedPrecondition, InvalidArgument, ModelyardError, PermissionDenied
from modelyard.common.log import event
from modelyard.common.modelspec import PROMPT_NAME, RequestParameter
from modelyard.common.states import RunStatus

log = logging.getLogger("modelyard.benchmark")
T = TypeVar("T")


class WorkerClient(Protocol):
    """What a run needs from one worker deployment; `oip.WorkerDeployment` is the real one."""

    async def model_ready(self, version: str) -> bool: ...

    async def signature(self, version: str) -> tuple[list[str], list[str]]: ...

    async def request_parameters(self, version: str) -> tuple[RequestParameter, ...]: ...

    async def embed_texts(
        self, version: str, texts: Sequence[str], *, prompt_name: str = ""
    ) -> np.ndarray: ...

    async def embed_images(self, version: str, images: Sequence[bytes]) -> np.ndarray: ...

    async def caption(self, version: str, images: Sequence[bytes]) -> list[str]: ...

    async def close(self) -> None: ...


WorkerConnector = Callable[[str, str], WorkerClient]
"""(worker address, deployment) -> client."""


class VersionStager(Protocol):
    """Routes a version at weight 0 and waits until workers report it loaded; undoes it afterwards.

    `stage` either returns with the version loaded or raises having undone its own change;
    `unstage` is called once per successful `stage`. `RegistryVersionStager` is the real one."""

    async def stage(self, deployment: str, version: str, *, reason: str = "") -> None: ...

    async def unstage(self, deployment: str, version: str) -> None: ...


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker serving a deployment, as its heartbeats describe it to the registry."""

    worker_id: str
    address: str
    serving: frozenset[str] = frozenset()
    devices: dict[str, str] = field(default_factory=dict)


class WorkerDirectory(Protocol):
    """What the registry knows about workers and versions; `RegistryDirectory` is the real one."""

    async def workers(self, deployment: str) -> list[WorkerInfo]: ...

    async def version_conditions(self, model_id: str, version: str) -> dict[str, str]: ...


@dataclass(frozen=True)
class RunSpec:
    worker: str
    deployment: str
    model_id: str
    versions: tuple[str, ...]
    suite: str
    load: LoadPlan | None = None
    batch_size: int = 8
    options: dict[str, str] = field(default_factory=dict)
    stage_unrouted: bool = False
    created_by: str = ""


@dataclass(frozen=True)
class ProgressEvent:
    run_id: str
    version: str
    phase: str
    fraction: float
    message: str
    run: RunRecord | None = None


def choose_worker(workers: Sequence[WorkerInfo], versions: Sequence[str]) -> WorkerInfo | None:
    """The worker already serving most of `versions` (fewest to stage), then by worker id."""
    candidates = [w for w in workers if w.address]
    if not candidates:
        return None
    return min(candidates, key=lambda w: (-len(w.serving.intersection(versions)), w.worker_id))


class BenchmarkRunner:
    def __init__(
        self,
        store: RunStore,
        connect: WorkerConnector,
        *,
        stager: VersionStager | None = None,
        directory: WorkerDirectory | None = None,
        call_named_workers: bool = False,
        dataset_dirs: Sequence[Path] | None = None,
    ) -> None:
        """`call_named_workers`: without a registry, call the worker a request names; only for a
        service that holds no credentials (it would send them to whatever address it is given).
        `dataset_dirs`: where `beir:` suites may read; None = anywhere (the service always sets it)."""
        self.store = store
        self.connect = connect
        self.stager = stager
        self.directory = directory
        self.call_named_workers = call_named_workers
        self.dataset_dirs = None if dataset_dirs is None else list(dataset_dirs)

    def validate(self, spec: RunSpec) -> QualitySuite | LoadPlan:
        """Everything that can be refused before a worker is contacted."""
        if not spec.deployment or not spec.model_id:
            raise InvalidArgument("deployment and model_id are required")
        if self.directory is None and not self.call_named_workers:
            raise FailedPrecondition(
                "this benchmark service has no registry to find workers, and it holds credentials it "
                "must not send to an address a request names; configure its registry"
            )
        if not spec.worker and self.directory is None:
            raise InvalidArgument(
                "name the worker (host:port): this benchmark service has no registry to find one"
            )
        if not spec.versions or any(not v for v in spec.versions):
            raise InvalidArgument("name at least one version to benchmark (no empty names)")
        if len(set(spec.versions)) != len(spec.versions):
            raise InvalidArgument(f"versions repeat: {list(spec.versions)}")
        if spec.batch_size <= 0:
            raise InvalidArgument(f"batch_size must be > 0, got {spec.batch_size}")
        if spec.suite == LOAD:
            if spec.load is None:
                raise InvalidArgument(
                    "the load suite needs load settings (concurrency and requests or duration)"
                )
            return spec.load
        return resolve_suite(spec.suite, spec.options, dataset_dirs=self.dataset_dirs)

    async def run(self, spec: RunSpec) -> AsyncIterator[ProgressEvent]:
        """One run per version, in order; each ends with an event carrying the recorded run."""
        plan = self.validate(spec)
        if not spec.worker:
            spec = dataclasses.replace(spec, worker=await self._find_worker(spec))
        elif self.directory is not None:
            await self._check_listed(spec)
        worker = self.connect(spec.worker, spec.deployment)
        try:
            for version in spec.versions:
                async for progress in self._run_version(worker, spec, plan, version):
                    yield progress
        finally:
            await worker.close()

    async def _find_worker(self, spec: RunSpec) -> str:
        """A worker address from the registry's live workers of the deployment (no `worker` given)."""
        assert self.directory is not None
        chosen = choose_worker(await self.directory.workers(spec.deployment), spec.versions)
        if chosen is None:
            raise FailedPrecondition(
                f"no live worker serves deployment {spec.deployment}; start one "
                f"(`python -m modelyard.inference --deployment {spec.deployment}`) or name a worker"
            )
        event(log, "worker.chosen", deployment=spec.deployment, worker=chosen.address)
        return chosen.address

    async def _check_listed(self, spec: RunSpec) -> None:
        """A named worker must be one the registry lists for the deployment: the service sends its
        token to the worker, and must never send it to an address a caller chose."""
        assert self.directory is not None
        listed = sorted(w.address for w in await self.directory.workers(spec.deployment) if w.address)
        if spec.worker not in listed:
            raise PermissionDenied(
                f"worker {spec.worker} is not one the registry lists for deployment {spec.deployment} "
                f"({', '.join(listed) or 'none is live'}); the benchmark service only calls those. "
                "Leave the worker out to let it choose"
            )

    async def _worker_conditions(self, spec: RunSpec, version: str) -> dict[str, str]:
        """Device the worker reports for the version, and the version's inference settings."""
        if self.directory is None:
            return {}
        found: dict[str, str] = {}
        try:
            for info in await self.directory.workers(spec.deployment):
                if info.address == spec.worker:
                    found["worker.id"] = info.worker_id
                    if info.devices.get(version):
                        found["worker.device"] = info.devices[version]
            found.update(await self.directory.version_conditions(spec.model_id, version))
        except ModelyardError as failure:  # conditions are context; their absence fails no run
            event(log, "conditions.unavailable", logging.WARNING, version=version, error=failure.message)
        return found

    async def _run_version(
        self, worker: WorkerClient, spec: RunSpec, plan: QualitySuite | LoadPlan, version: str
    ) -> AsyncIterator[ProgressEvent]:
        run_id = uuid.uuid4().hex
        started = datetime.now(UTC)
        suite_name = spec.suite if isinstance(plan, LoadPlan) else plan.name
        yield ProgressEvent(run_id, version, "starting", 0.0, f"{suite_name} on {spec.deployment} {version}")
        staged = False
        metrics: tuple[MetricResult, ...] = ()
        conditions: dict[str, str] = {}
        worker_conditions: dict[str, str] = {}
        status, error = RunStatus.SUCCEEDED, ""
        try:
            if not await worker.model_ready(version):
                if not spec.stage_unrouted:
                    raise FailedPrecondition(
                        f"version {version} is not loaded on {spec.worker}; route it or ask to stage it"
                    )
                if self.stager is None:
                    raise FailedPrecondition(
                        "staging an unrouted version needs the registry; none is configured"
                    )
                yield ProgressEvent(run_id, version, "staging", 0.0, f"staging {version} at weight 0")
                await self.stager.stage(
                    spec.deployment,
                    version,
                    reason=f"benchmark run {run_id} for {spec.created_by or 'anonymous'}",
                )
                staged = True
            inputs, outputs = await worker.signature(version)
            worker_conditions = await self._worker_conditions(spec, version)
            measured: list[tuple[tuple[MetricResult, ...], dict[str, str]]] = []

            async def work(report: Progress) -> None:
                if isinstance(plan, LoadPlan):
                    measured.append(await self._load(worker, version, plan, spec, inputs, outputs, report))
                else:
                    measured.append(await self._quality(worker, version, plan, inputs, outputs, report))

            phase = "load" if isinstance(plan, LoadPlan) else "quality"
            async for progress in _with_progress(work, run_id, version, phase):
                yield progress
            metrics, conditions = measured[0]
        except ModelyardError as failure:
            status, error = RunStatus.FAILED, failure.message
        except Exception as failure:  # the run is recorded as failed; the service keeps going
            status, error = (
                RunStatus.FAILED,
                f"unexpected {type(failure).__name__}; see the benchmark service log",
            )
            event(log, "run.crashed", logging.ERROR, run_id=run_id, version=version, exc=repr(failure))
        finally:
            if staged and self.stager is not None:
                try:
                    await self.stager.unstage(spec.deployment, version)
                except ModelyardError as failure:  # the run's outcome is still recorded
                    event(log, "unstage.failed", logging.ERROR, version=version, error=failure.message)
        conditions = {
            **conditions,
            **worker_conditions,
            "worker": spec.worker,
            "batch_size": str(spec.batch_size),
            "staged": str(staged).lower(),
            **host_conditions(),
        }
        record = RunRecord(
            run_id=run_id,
            suite=suite_name,
            model_id=spec.model_id,
            version=version,
            # A failed run keeps no metrics: nothing half-measured is ever recorded.
            metrics=metrics if status == RunStatus.SUCCEEDED else (),
            status=status,
            error=error,
            deployment=spec.deployment,
            conditions=conditions,
            hardware=hardware_summary(worker_conditions.get("worker.device", "")),
            started_at=started,
            finished_at=datetime.now(UTC),
            created_by=spec.created_by,
        )
        stored = await self.store.record(record)
        event(
            log, "run.recorded", run_id=run_id, version=version, suite=suite_name, status=status, error=error
        )
        yield ProgressEvent(run_id, version, status, 1.0, error or "recorded", run=stored)

    async def _load(
        self,
        worker: WorkerClient,
        version: str,
        plan: LoadPlan,
        spec: RunSpec,
        inputs: list[str],
        outputs: list[str],
        report: Progress,
    ) -> tuple[tuple[MetricResult, ...], dict[str, str]]:
        kind = spec.options.get("input") or ("text" if "text" in inputs else "image")
        if kind == "text":
            texts = _load_texts()
            batches_t = itertools.cycle(
                [
                    texts[i : i + spec.batch_size]
                    for i in range(0, len(texts) - spec.batch_size, spec.batch_size)
                ]
            )

            async def call() -> Any:
                return await worker.embed_texts(version, next(batches_t))
        elif kind == "image":
            images, _ = load_digits_images(limit=max(spec.batch_size * 8, 64))
            batches_i = itertools.cycle(
                [
                    images[i : i + spec.batch_size]
                    for i in range(0, len(images) - spec.batch_size, spec.batch_size)
                ]
            )
            infer = worker.caption if "caption" in outputs else worker.embed_images

            async def call() -> Any:
                return await infer(version, next(batches_i))
        else:
            raise InvalidArgument(f"option input={kind!r}; use text or image")
        result = await measure_load(call, plan, progress=report)
        if result.levels and all(level.requests == level.errors for level in result.levels):
            raise FailedPrecondition(f"every request failed; first error: {result.first_error}")
        conditions = {
            "concurrency": ",".join(str(c) for c in plan.concurrency),
            "requests": str(plan.requests),
            "duration_s": str(plan.duration_s),
            "warmup_requests": str(plan.warmup_requests),
            "input": kind,
        }
        if result.first_error:
            conditions["first_error"] = result.first_error
        return result.metrics(), conditions

    async def _quality(
        self,
        worker: WorkerClient,
        version: str,
        suite: QualitySuite,
        inputs: list[str],
        outputs: list[str],
        report: Progress,
    ) -> tuple[tuple[MetricResult, ...], dict[str, str]]:
        loop = asyncio.get_running_loop()
        latencies_ms: list[float] = []

        async def timed(coroutine: Awaitable[T]) -> T:
            started = time.perf_counter()
            result = await coroutine
            latencies_ms.append((time.perf_counter() - started) * 1000)
            return result

        def blocking(coroutine: Awaitable[T]) -> T:
            # Suites are plain blocking code run in a thread; worker calls go back to the event loop.
            return asyncio.run_coroutine_threadsafe(timed(coroutine), loop).result()

        prompts: dict[str, str] = {}
        if isinstance(suite, RetrievalSuite):
            _require(inputs, outputs, "text", "embedding", suite.name, version)
            parameters = await worker.request_parameters(version)
            query_prompt, document_prompt = retrieval_prompts(parameters)
            prompts = _prompt_conditions(parameters, queries=query_prompt, documents=document_prompt)

            def embed(prompt_name: str) -> Callable[[list[str]], np.ndarray]:
                return lambda texts: blocking(worker.embed_texts(version, texts, prompt_name=prompt_name))

            result = await asyncio.to_thread(
                functools.partial(
                    suite.run, embed(document_prompt), report, embed_queries=embed(query_prompt)
                )
            )
        elif isinstance(suite, ImageEmbeddingSuite):
            _require(inputs, outputs, "image", "embedding", suite.name, version)
            result = await asyncio.to_thread(
                suite.run, lambda images: blocking(worker.embed_images(version, images)), report
            )
        elif isinstance(suite, CaptionSuite):
            _require(inputs, outputs, "image", "caption", suite.name, version)
            result = await asyncio.to_thread(
                suite.run, lambda images: blocking(worker.caption(version, images)), report
            )
        else:
            raise InvalidArgument(f"suite {suite!r} has no runner")
        return result.metrics + _request_latency(latencies_ms, result.metrics), {
            **result.conditions,
            **prompts,
        }


def _prompt_conditions(parameters: Sequence[RequestParameter], **sent: str) -> dict[str, str]:
    """What a run records of the prompts it sent: per kind of text, the name and the prompt's text
    (`prompt_name.queries` = `query`, `prompt.queries` = `query: `); nothing where none was sent."""
    prompt = next((p for p in parameters if p.name == PROMPT_NAME), None)
    conditions: dict[str, str] = {}
    for kind, name in sent.items():
        if name and prompt is not None:
            conditions[f"prompt_name.{kind}"] = name
            conditions[f"prompt.{kind}"] = prompt.meaning(name) or ""
    return conditions


def _request_latency(
    latencies_ms: Sequence[float], measured: Sequence[MetricResult]
) -> tuple[MetricResult, ...]:
    """Per-request latency of the suite's own inference calls (one at a time, `batch_size` items
    each): every quality run also yields a latency comparison. Suites that time themselves win."""
    if not latencies_ms or any(m.name == "latency_ms" for m in measured):
        return ()
    samples = tuple(latencies_ms)
    return (
        MetricResult("latency_ms", float(np.mean(samples)), "ms", samples),
        # No samples of their own: compare bootstraps these percentiles from latency_ms.
        MetricResult("latency_p50_ms", float(np.percentile(samples, 50)), "ms"),
        MetricResult("latency_p95_ms", float(np.percentile(samples, 95)), "ms"),
    )


def _require(
    inputs: list[str], outputs: list[str], needs_in: str, needs_out: str, suite: str, version: str
) -> None:
    if needs_in not in inputs or needs_out not in outputs:
        raise FailedPrecondition(
            f"suite {suite} needs a model taking {needs_in!r} and returning {needs_out!r}; "
            f"version {version} takes {inputs} and returns {outputs}"
        )


def _load_texts() -> list[str]:
    suite = resolve_suite("stdlib-docstrings")
    assert isinstance(suite, RetrievalSuite)
    return [suite.dataset.queries[q] for q in suite.dataset.judged_query_ids]


async def _with_progress(
    work: Callable[[Progress], Awaitable[None]], run_id: str, version: str, phase: str
) -> AsyncIterator[ProgressEvent]:
    """Run `work`, yielding its progress reports (made on any thread) as they arrive."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[ProgressEvent] = asyncio.Queue()

    def report(fraction: float, message: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ProgressEvent(run_id, version, phase, fraction, message))

    task = asyncio.ensure_future(work(report))
    try:
        while not task.done():
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
        await asyncio.sleep(0)  # let reports scheduled from a thread land
        while not queue.empty():
            yield queue.get_nowait()
        task.result()
    finally:
        if not task.done():
            task.cancel()
