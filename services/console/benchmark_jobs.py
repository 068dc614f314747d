"""Benchmark runs started from the console: each RunBenchmark stream is held by a task the app owns
(not by the page that started it), so a run goes on when its browser leaves, and every progress
message is kept as a snapshot for the pages watching it, including one reloaded halfway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from modelyard.api import benchmark_pb2 as bpb
from modelyard.api import registry_pb2 as rpb
from modelyard.client import BenchmarkClient, ClientSettings, ModelyardError
from modelyard.common.log import event
from modelyard.common.states import RUN_STATUS_FROM_PB, RunStatus

log = logging.getLogger("modelyard.console")
# Runs this console holds open at once; a start beyond them is refused (the form says why).
MAX_RUNNING = 2
# Finished jobs stay viewable this long, and at most this many of them (the runs themselves are
# stored by the benchmark service for good).
KEEP_FINISHED = 20
KEEP_FINISHED_S = 3600.0
# Snapshots a job keeps for watchers catching up; one that falls further behind skips to the newest.
SNAPSHOTS_KEPT = 512


@dataclass(frozen=True)
class MetricView:
    name: str
    value: float
    unit: str


@dataclass(frozen=True)
class VersionProgress:
    """One version of a job as the last progress message about it said."""

    version: str
    phase: str = "waiting"
    fraction: float = 0.0
    message: str = ""
    run_id: str = ""
    status: RunStatus | None = None  # set once its run is recorded
    error: str = ""
    metrics: tuple[MetricView, ...] = ()


@dataclass(frozen=True)
class JobPlan:
    """What was asked, as the page shows it (the request itself stays with the job)."""

    deployment: str
    model_id: str
    versions: tuple[str, ...]
    suite: str
    settings: tuple[tuple[str, str], ...]  # (label, value) of the options that apply
    started_by: str


@dataclass(frozen=True)
class JobView:
    """An immutable snapshot of a job; `revision` counts the changes (one per progress message)."""

    job_id: str
    revision: int
    plan: JobPlan
    status: RunStatus
    versions: tuple[VersionProgress, ...]
    started_at: float
    finished_at: float = 0.0
    error: str = ""
    messages: int = 0

    @property
    def finished(self) -> bool:
        return self.status != RunStatus.RUNNING

    @property
    def recorded(self) -> int:
        return sum(1 for v in self.versions if v.status is not None)

    @property
    def succeeded_runs(self) -> list[str]:
        return [v.run_id for v in self.versions if v.status == RunStatus.SUCCEEDED]


def _apply(
    progress: bpb.RunBenchmarkProgress, versions: tuple[VersionProgress, ...]
) -> tuple[VersionProgress, ...]:
    """The versions after one progress message (protobuf stops here)."""
    updated = []
    for current in versions:
        if current.version != progress.version:
            updated.append(current)
            continue
        changed = replace(
            current,
            phase=progress.phase,
            fraction=progress.fraction,
            message=progress.message,
            run_id=progress.run_id or current.run_id,
        )
        if progress.HasField("run"):
            run: rpb.BenchmarkRun = progress.run
            changed = replace(
                changed,
                run_id=run.run_id,
                status=RunStatus(RUN_STATUS_FROM_PB.get(run.status, RunStatus.FAILED)),
                error=run.error,
                metrics=tuple(MetricView(m.name, m.value, m.unit) for m in run.metrics),
            )
        updated.append(changed)
    return tuple(updated)


class BenchmarkJob:
    """One RunBenchmark call: the task reading its stream and the snapshots it produced."""

    def __init__(
        self,
        job_id: str,
        plan: JobPlan,
        request: bpb.RunBenchmarkRequest,
        client: BenchmarkClient,
        explain: Callable[[ModelyardError], str],
    ) -> None:
        self.job_id = job_id
        self.request = request
        self._client = client
        self._explain = explain
        first = JobView(
            job_id=job_id,
            revision=0,
            plan=plan,
            status=RunStatus.RUNNING,
            versions=tuple(VersionProgress(v) for v in plan.versions),
            started_at=time.time(),
        )
        self._snapshots: deque[JobView] = deque([first], maxlen=SNAPSHOTS_KEPT)
        self._changed = asyncio.Event()
        self._answered = asyncio.Event()  # first message, or the failure that came instead
        self.refusal: ModelyardError | None = None  # the stream failed before its first message
        self.task: asyncio.Task[None] | None = None

    @property
    def view(self) -> JobView:
        return self._snapshots[-1]

    def _publish(self, view: JobView) -> None:
        self._snapshots.append(view)
        self._changed.set()
        self._changed = asyncio.Event()

    async def run(self) -> None:
        try:
            async for progress in self._client.run_benchmark(self.request):
                view = self.view
                self._publish(
                    replace(
                        view,
                        revision=view.revision + 1,
                        versions=_apply(progress, view.versions),
                        messages=view.messages + 1,
                    )
                )
                self._answered.set()
            view = self.view
            missing = [v.version for v in view.versions if v.status is None]
            if missing:
                self._finish(
                    RunStatus.FAILED,
                    f"the benchmark service ended the run before recording {', '.join(missing)}",
                )
            else:
                failed = any(v.status != RunStatus.SUCCEEDED for v in view.versions)
                self._finish(RunStatus.FAILED if failed else RunStatus.SUCCEEDED, "")
        except ModelyardError as error:
            if not self._answered.is_set():
                self.refusal = error
            self._finish(RunStatus.FAILED, self._explain(error))
        except Exception:
            # Never left "running" (it would hold one of the MAX_RUNNING places for good).
            request_id = uuid.uuid4().hex[:16]
            log.exception("console.benchmark_crashed", extra={"fields": {"request_id": request_id}})
            self._finish(
                RunStatus.FAILED,
                f"the console hit an unexpected error following this run (request id {request_id}); "
                "it is in the console's log",
            )
        except asyncio.CancelledError:
            self._finish(RunStatus.FAILED, "the console stopped while this run was going; it was cut short")
            raise
        finally:
            self._answered.set()
            await self._client.close()

    def _finish(self, status: RunStatus, error: str) -> None:
        view = self.view
        self._publish(
            replace(view, revision=view.revision + 1, status=status, error=error, finished_at=time.time())
        )
        event(
            log,
            "console.benchmark_finished",
            job=self.job_id,
            status=status,
            deployment=view.plan.deployment,
            runs=",".join(v.run_id for v in view.versions if v.run_id),
            error=error,
        )

    async def answered(self, timeout_s: float) -> None:
        """Wait until the service sent its first message (the run started) or refused the call."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answered.wait(), timeout_s)

    async def changes(self, after: int, timeout_s: float) -> list[JobView]:
        """Snapshots newer than revision `after`, oldest first; [] when none came within `timeout_s`."""
        if self.view.revision <= after:
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout_s)
        return [v for v in self._snapshots if v.revision > after]


class BenchmarkJobs:
    """The console's jobs by id. Each job gets a channel of its own, opened with the token of the
    admin who started it and closed when its stream ends: the per-user channels in `Backends` are
    closed after an outage or when evicted, which would cut a long run short."""

    def __init__(
        self, address: str, client: ClientSettings, explain: Callable[[ModelyardError], str]
    ) -> None:
        self.address = address
        self._client = client
        self._explain = explain
        self._jobs: OrderedDict[str, BenchmarkJob] = OrderedDict()
        self._closed = False

    def running(self) -> list[JobView]:
        return [j.view for j in self._jobs.values() if not j.view.finished]

    def recent(self) -> list[JobView]:
        """Every job this console still holds, newest first."""
        self._expire()
        return [j.view for j in reversed(self._jobs.values())]

    def get(self, job_id: str) -> BenchmarkJob | None:
        self._expire()
        return self._jobs.get(job_id)

    def start(self, request: bpb.RunBenchmarkRequest, plan: JobPlan, *, token: str) -> BenchmarkJob:
        """Start reading a RunBenchmark stream in the background; the caller checked `running()`."""
        if self._closed:
            raise RuntimeError("the console is stopping")
        settings = self._client.model_copy(update={"token": token}) if token else self._client
        job = BenchmarkJob(
            uuid.uuid4().hex[:16], plan, request, BenchmarkClient(self.address, settings), self._explain
        )
        job.task = asyncio.create_task(job.run(), name=f"console-benchmark-{job.job_id}")
        self._jobs[job.job_id] = job
        self._expire()
        event(
            log,
            "console.benchmark_started",
            job=job.job_id,
            deployment=plan.deployment,
            versions=",".join(plan.versions),
            suite=plan.suite,
            user=plan.started_by,
        )
        return job

    def discard(self, job_id: str) -> None:
        """Forget a job the service refused before it started (nothing ran, nothing to show)."""
        self._jobs.pop(job_id, None)

    def _expire(self) -> None:
        now = time.time()
        finished = [j for j in self._jobs.values() if j.view.finished]
        too_many = len(finished) - KEEP_FINISHED
        for index, job in enumerate(finished):
            if index < too_many or now - job.view.finished_at > KEEP_FINISHED_S:
                self._jobs.pop(job.job_id, None)

    async def close(self) -> None:
        """Cancel the runs still going (their streams end; the benchmark service records nothing
        half-measured) and wait for their channels to close."""
        self._closed = True
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
