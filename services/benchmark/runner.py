"""Runs a suite against worker versions, streams progress, and records each run exactly once."""

from __future__ import annotations

import asyncio
import itertools
import logging
import platform
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Protocol, TypeVar

import numpy as np

from modelyard.benchmark.captions import CaptionSuite
from modelyard.benchmark.catalog import LOAD, QualitySuite, resolve_suite
from modelyard.benchmark.images import ImageEmbeddingSuite, load_digits_images
from modelyard.benchmark.load import LoadPlan, measure_load
from modelyard.benchmark.results import MetricResult, RunRecord
from modelyard.benchmark.retrieval import Progress, RetrievalSuite
from modelyard.benchmark.store import RunStore
from modelyard.common.errors import FailedPrecondition, InvalidArgument, ModelyardError
from modelyard.common.log import event

log = logging.getLogger("modelyard.benchmark")
T = TypeVar("T")

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"


class WorkerClient(Protocol):
    """What a run needs from one worker deployment; `OipClient` is the real one."""

    async def model_ready(self, version: str) -> bool: ...

    async def signature(self, version: str) -> tuple[list[str], list[str]]: ...

    async def embed_texts(self, version: str, texts: Sequence[str]) -> np.ndarray: ...

    async def embed_images(self, version: str, images: Sequence[bytes]) -> np.ndarray: ...

    async def caption(self, version: str, images: Sequence[bytes]) -> list[str]: ...

    async def close(self) -> None: ...


WorkerConnector = Callable[[str, str], WorkerClient]
"""(worker address, deployment) -> client."""


class VersionStager(Protocol):
    """Routes a version at weight 0 and waits until workers report it loaded; undoes it afterwards."""

    async def stage(self, deployment: str, version: str) -> None: ...

    async def unstage(self, deployment: str, version: str) -> None: ...


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


def _software() -> dict[str, str]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for package in ("modelyard", "grpcio"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


class BenchmarkRunner:
    def __init__(
        self, store: RunStore, connect: WorkerConnector, *, stager: VersionStager | None = None
    ) -> None:
        self.store = store
        self.connect = connect
        self.stager = stager

    def validate(self, spec: RunSpec) -> QualitySuite | LoadPlan:
        """Everything that can be refused before a worker is contacted."""
        if not spec.worker or not spec.deployment or not spec.model_id:
            raise InvalidArgument("worker, deployment and model_id are required")
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
        return resolve_suite(spec.suite, spec.options)

    async def run(self, spec: RunSpec) -> AsyncIterator[ProgressEvent]:
        """One run per version, in order; each ends with an event carrying the recorded run."""
        plan = self.validate(spec)
        worker = self.connect(spec.worker, spec.deployment)
        try:
            for version in spec.versions:
                async for progress in self._run_version(worker, spec, plan, version):
                    yield progress
        finally:
            await worker.close()

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
        status, error = SUCCEEDED, ""
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
                await self.stager.stage(spec.deployment, version)
                staged = True
            inputs, outputs = await worker.signature(version)
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
            status, error = FAILED, failure.message
        except Exception as failure:  # the run is recorded as failed; the service keeps going
            status, error = FAILED, f"unexpected {type(failure).__name__}; see the benchmark service log"
            event(log, "run.crashed", logging.ERROR, run_id=run_id, version=version, exc=repr(failure))
        finally:
            if staged and self.stager is not None:
                await self.stager.unstage(spec.deployment, version)
        conditions = {
            **conditions,
            "worker": spec.worker,
            "batch_size": str(spec.batch_size),
            **{f"software.{k}": v for k, v in _software().items()},
            "benchmark_host": f"{platform.node()} {platform.machine()}",
        }
        record = RunRecord(
            run_id=run_id,
            suite=suite_name,
            model_id=spec.model_id,
            version=version,
            # A failed run keeps no metrics: nothing half-measured is ever recorded.
            metrics=metrics if status == SUCCEEDED else (),
            status=status,
            error=error,
            deployment=spec.deployment,
            conditions=conditions,
            started_at=started,
            finished_at=datetime.now(UTC),
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

        def blocking(coroutine: Awaitable[T]) -> T:
            # Suites are plain blocking code run in a thread; worker calls go back to the event loop.
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result()  # type: ignore[arg-type]

        if isinstance(suite, RetrievalSuite):
            _require(inputs, outputs, "text", "embedding", suite.name, version)
            result = await asyncio.to_thread(
                suite.run, lambda texts: blocking(worker.embed_texts(version, texts)), report
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
        return result.metrics, dict(result.conditions)


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
