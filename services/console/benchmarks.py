"""The Benchmark page: a form that starts a run (suite, deployment, versions, load settings), checked
here before the benchmark service is asked; the run's own page, kept live over SSE while the
console holds its stream (`benchmark_jobs`); and the recent stored runs, linked to /compare."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlencode

from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse

from modelyard.api import benchmark_pb2 as bpb
from modelyard.api import registry_pb2 as rpb
from modelyard.client import ModelyardError
from modelyard.console.backends import Problem
from modelyard.console.benchmark_jobs import MAX_RUNNING, BenchmarkJobs, JobPlan, JobView
from modelyard.console.live import KEEPALIVE_S, RECONNECT_MS, sse
from modelyard.console.present import when
from modelyard.console.web import CallFailed, Page, page

DEFAULT_SUITE = "stdlib-docstrings"
LOAD = "load"
RUNS_LISTED = 20
VERSIONS_LISTED = 100
MAX_LEVELS = 8
MAX_CONCURRENCY = 256
MAX_REQUESTS = 100_000
MAX_WARMUP = 10_000
# The CLI's cap on the default batch (`modelyard bench run`): never above what every version takes.
DEFAULT_BATCH_CAP = 32
# How often an open stream checks whether the console is stopping.
STOP_CHECK_S = 0.5
_SUITE_KINDS = {
    rpb.TEXT_EMBEDDING: "text_retrieval",
    rpb.IMAGE_EMBEDDING: "image_embedding",
    rpb.CAPTIONING: "captioning",
}


def jobs_of(current: Page) -> BenchmarkJobs:
    jobs: BenchmarkJobs = current.request.app.state.benchmark_jobs
    return jobs


@dataclass(frozen=True)
class Choices:
    """What the form offers, as the registry and the benchmark service list it."""

    deployments: list[str]
    deployment: rpb.Deployment | None
    versions: list[rpb.ModelVersion]
    suites: list[bpb.Suite]

    @property
    def suite_names(self) -> list[str]:
        return [s.name for s in self.suites]

    @property
    def routed(self) -> set[str]:
        return {r.version for r in self.deployment.routes} if self.deployment else set()


@dataclass
class FormValues:
    """The form's fields as typed (strings), so a refused form comes back as the user left it."""

    deployment: str = ""
    versions: list[str] = field(default_factory=list)
    suite: str = DEFAULT_SUITE
    concurrency: str = "1,4"
    requests: str = "200"
    warmup_requests: str = "10"
    batch_size: str = ""
    limit: str = ""
    stage_unrouted: bool = False


def default_values(choices: Choices) -> FormValues:
    names = choices.suite_names
    suite = DEFAULT_SUITE if DEFAULT_SUITE in names or not names else names[0]
    if choices.deployment is not None:
        # The first suite made for the deployment's kind of model (digits for an image model).
        kind = _SUITE_KINDS.get(choices.deployment.model_type, "")
        suite = next((s.name for s in choices.suites if s.kind == kind), suite)
    return FormValues(
        deployment=choices.deployment.name if choices.deployment else "",
        # As `modelyard bench run` without versions: every version a route names.
        versions=sorted(choices.routed),
        suite=suite,
    )


def read_values(current: Page) -> FormValues:
    return FormValues(
        deployment=current.field("deployment"),
        versions=[v.strip() for v in current.form.get("versions", []) if v.strip()],
        suite=current.field("suite"),
        concurrency=current.field("concurrency"),
        requests=current.field("requests"),
        warmup_requests=current.field("warmup_requests"),
        batch_size=current.field("batch_size"),
        limit=current.field("limit"),
        stage_unrouted=current.field("stage_unrouted") == "yes",
    )


def _whole(raw: str, name: str, low: int, high: int, errors: dict[str, str], *, blank: bool = False) -> int:
    """`raw` as a whole number in [low, high]; an error under `name` otherwise (0 when blank allowed)."""
    if blank and raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        errors[name] = f"{raw!r} is not a whole number from {low} to {high}"
        return 0
    return int(raw)


def _levels(raw: str, errors: dict[str, str]) -> tuple[int, ...]:
    parts = [p.strip() for p in raw.split(",")]
    if not raw or not all(p.isascii() and p.isdigit() and 1 <= int(p) <= MAX_CONCURRENCY for p in parts):
        errors["concurrency"] = (
            f"{raw!r}: give concurrent clients as whole numbers from 1 to {MAX_CONCURRENCY}, "
            "comma-separated (e.g. 1,4)"
        )
        return ()
    if len(parts) > MAX_LEVELS:
        errors["concurrency"] = f"at most {MAX_LEVELS} concurrency levels, got {len(parts)}"
        return ()
    if len(set(parts)) != len(parts):
        errors["concurrency"] = f"{raw!r}: a level repeats"
        return ()
    return tuple(int(p) for p in parts)


def check_form(
    values: FormValues, choices: Choices, *, started_by: str
) -> tuple[dict[str, str], bpb.RunBenchmarkRequest | None, JobPlan | None]:
    """Field errors (field name -> what is wrong), or the request to send and the plan to show.

    Every field is checked even where the chosen suite does not use it (concurrency for a quality
    suite): a value the form shows must never be silently wrong."""
    errors: dict[str, str] = {}
    deployment = choices.deployment
    if deployment is None or deployment.name != values.deployment:
        known = ", ".join(choices.deployments) or "none exists yet"
        errors["deployment"] = f"no deployment named {values.deployment!r} (deployments: {known})"
    by_version = {v.version: v for v in choices.versions}
    if not values.versions:
        errors["versions"] = "pick at least one version to benchmark"
    elif len(set(values.versions)) != len(values.versions):
        errors["versions"] = "a version is picked twice"
    elif deployment is not None and "deployment" not in errors:
        unknown = [v for v in values.versions if v not in by_version]
        unrouted = [v for v in values.versions if v not in choices.routed]
        if unknown:
            errors["versions"] = f"{', '.join(unknown)}: not a ready version of model {deployment.model_id}"
        elif unrouted and not values.stage_unrouted:
            errors["versions"] = (
                f"{', '.join(unrouted)}: no route of {deployment.name} serves it, so no worker has it "
                "loaded; tick “stage unrouted versions” to load it at weight 0 for the run"
            )
    if values.suite not in choices.suite_names:
        errors["suite"] = f"unknown suite {values.suite!r}; pick one of: {', '.join(choices.suite_names)}"
    levels = _levels(values.concurrency, errors)
    requests = _whole(values.requests, "requests", 1, MAX_REQUESTS, errors)
    warmup = _whole(values.warmup_requests, "warmup_requests", 0, MAX_WARMUP, errors)
    limit = _whole(values.limit, "limit", 1, MAX_REQUESTS, errors, blank=True)
    accepted = [
        by_version[v].inference_config.max_batch_size
        for v in values.versions
        if v in by_version and by_version[v].inference_config.max_batch_size
    ]
    most = min(accepted, default=0)
    batch_size = _whole(values.batch_size, "batch_size", 1, most or MAX_REQUESTS, errors, blank=True)
    if "batch_size" in errors and most:
        errors["batch_size"] = (
            f"{values.batch_size!r}: a whole number from 1 to {most}, the largest batch every picked "
            "version accepts (max_batch_size)"
        )
    if errors or deployment is None:
        return errors, None, None
    batch_size = batch_size or (min(most, DEFAULT_BATCH_CAP) if most else 0)
    request = bpb.RunBenchmarkRequest(
        deployment=deployment.name,
        model_id=deployment.model_id,
        versions=values.versions,
        suite=values.suite,
        stage_unrouted=values.stage_unrouted,
    )
    settings: list[tuple[str, str]] = []
    if values.suite == LOAD:
        request.load.CopyFrom(
            bpb.LoadSettings(
                concurrency=levels, requests=requests, warmup_requests=warmup, batch_size=batch_size
            )
        )
        settings += [
            ("concurrency", ",".join(map(str, levels))),
            ("requests per level", str(requests)),
            ("warm-up requests", str(warmup)),
        ]
    else:
        if limit:
            request.options["limit"] = str(limit)
            settings.append(("limit", str(limit)))
        if batch_size:
            request.options["batch_size"] = str(batch_size)
    if batch_size:
        settings.append(("batch size", str(batch_size)))
    if values.stage_unrouted:
        settings.append(("stage unrouted", "yes"))
    plan = JobPlan(
        deployment=deployment.name,
        model_id=deployment.model_id,
        versions=tuple(values.versions),
        suite=values.suite,
        settings=tuple(settings),
        started_by=started_by,
    )
    return {}, request, plan


async def _choices(current: Page, deployment_name: str) -> Choices:
    registry = await current.registry()
    listed = list((await registry.list_deployments(rpb.ListDeploymentsRequest())).deployments)
    listed.sort(key=lambda d: d.name)
    if deployment_name:
        chosen = next((d for d in listed if d.name == deployment_name), None)
    else:
        chosen = listed[0] if listed else None
    versions: list[rpb.ModelVersion] = []
    if chosen is not None:
        found = await registry.list_versions(
            rpb.ListVersionsRequest(
                model_id=chosen.model_id, status=rpb.VERSION_STATUS_READY, page_size=VERSIONS_LISTED
            )
        )
        # Oldest first, so a run of several goes in release order and its first two runs compare
        # the older version (baseline) with the newer (candidate).
        versions = list(reversed(found.versions))
    try:
        suites = (await (await current.benchmark()).list_suites(bpb.ListSuitesRequest())).suites
    except ModelyardError as error:
        raise CallFailed(error, "benchmark service") from None
    # `beir:<path>` names a pattern, not a suite: datasets on the service's disk are the CLI's.
    concrete = [s for s in suites if "<" not in s.name]
    return Choices([d.name for d in listed], chosen, versions, concrete)


@dataclass(frozen=True)
class RunRow:
    run_id: str
    model_id: str
    version: str
    suite: str
    status: str
    error: str
    started: str
    created_by: str
    compare_link: str


def _run_rows(runs: list[rpb.BenchmarkRun]) -> list[RunRow]:
    """Newest first; a succeeded run links to /compare against the previous succeeded run of the
    same model and suite (or alone as the baseline when it is the first)."""
    rows = []
    for index, run in enumerate(runs):
        status = rpb.RunStatus.Name(run.status).removeprefix("RUN_STATUS_").lower()
        link = ""
        if run.status == rpb.RUN_STATUS_SUCCEEDED:
            older = next(
                (
                    r
                    for r in runs[index + 1 :]
                    if r.status == rpb.RUN_STATUS_SUCCEEDED
                    and r.model_id == run.model_id
                    and r.suite == run.suite
                ),
                None,
            )
            query = {"baseline": older.run_id, "candidate": run.run_id} if older else {"baseline": run.run_id}
            link = "/compare?" + urlencode(query)
        rows.append(
            RunRow(
                run.run_id,
                run.model_id,
                run.version,
                run.suite,
                status,
                run.error,
                when(run.started_at),
                run.created_by,
                link,
            )
        )
    return rows


async def _render_form(
    current: Page,
    choices: Choices,
    values: FormValues,
    *,
    status: int = 200,
    errors: dict[str, str] | None = None,
    error: str = "",
) -> Response:
    try:
        listed = await (await current.benchmark()).list_runs(bpb.ListRunsRequest(page_size=RUNS_LISTED))
    except ModelyardError as failure:
        raise CallFailed(failure, "benchmark service") from None
    return current.render(
        "benchmarks.html",
        status=status,
        choices=choices,
        values=values,
        errors=errors or {},
        error=error,
        runs=_run_rows(list(listed.runs)),
        jobs=jobs_of(current).recent(),
        outage=current.query("outage") == "1",
        max_running=MAX_RUNNING,
    )


@page()
async def benchmarks_page(current: Page) -> Response:
    choices = await _choices(current, current.query("deployment"))
    values = default_values(choices)
    if current.query("deployment") and choices.deployment is None:
        return await _render_form(
            current,
            choices,
            values,
            status=404,
            errors={"deployment": f"no deployment named {current.query('deployment')!r}"},
        )
    return await _render_form(current, choices, values)


@page(admin=True)
async def benchmarks_submit(current: Page) -> Response:
    """Check the form, start the run, and send the browser to its page once the benchmark service
    has answered (its refusals, e.g. no live worker, show on the form: nothing was started)."""
    try:
        return await _submit(current)
    except (ModelyardError, CallFailed) as failure:
        error = failure.error if isinstance(failure, CallFailed) else failure
        if error.code.name not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            raise
        # The outage page reloads itself, which would post this form again: go to the GET page
        # (it shows the banner while the service stays away) and say nothing was started.
        await current.console.backends.forget(current.token)
        return RedirectResponse("/benchmarks?outage=1", 303)


async def _submit(current: Page) -> Response:
    values = read_values(current)
    choices = await _choices(current, values.deployment)
    errors, request, plan = check_form(values, choices, started_by=current.session.name)
    if errors or request is None or plan is None:
        return await _render_form(current, choices, values, status=400, errors=errors)
    jobs = jobs_of(current)
    running = jobs.running()
    if len(running) >= MAX_RUNNING:
        return await _render_form(
            current,
            choices,
            values,
            status=409,
            error=f"{len(running)} runs started here are still going (at most {MAX_RUNNING} at once); "
            "start this one when one of them has finished",
        )
    job = jobs.start(request, plan, token=current.token)
    await job.answered(current.console.settings.call_timeout_s)
    if job.refusal is not None:
        jobs.discard(job.job_id)
        if job.refusal.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            raise CallFailed(job.refusal, "benchmark service")
        problem = current.console.backends.explain(job.refusal, service="benchmark service")
        return await _render_form(
            current, choices, values, status=problem.status, error=f"not started: {problem.message}"
        )
    return RedirectResponse(f"/benchmarks/{job.job_id}", 303)


def _job_or_none(current: Page) -> tuple[str, JobView | None]:
    job_id = str(current.request.path_params["job"])
    job = jobs_of(current).get(job_id)
    return job_id, job.view if job is not None else None


def _compare_link(view: JobView) -> str:
    runs = view.succeeded_runs
    return "/compare?" + urlencode({"baseline": runs[0], "candidate": runs[1]}) if len(runs) >= 2 else ""


def _not_found(job_id: str) -> Problem:
    return Problem(
        f"this console holds no benchmark job {job_id!r}: jobs are kept an hour after they finish and "
        "are forgotten when the console restarts; the runs themselves are listed on /benchmarks",
        404,
        False,
    )


@page()
async def job_page(current: Page) -> Response:
    job_id, view = _job_or_none(current)
    if view is None:
        return current.problem(_not_found(job_id), title="Benchmark")
    return current.render(
        "benchmark_job.html",
        job=view,
        compare_link=_compare_link(view),
        live_src=f"/events/benchmarks/{job_id}",
    )


@page()
async def job_events(current: Page) -> Response:
    """Every snapshot of the job in order (one per progress message), then keepalives until the
    browser leaves; a reconnecting page starts again from the current state."""
    job_id = str(current.request.path_params["job"])
    job = jobs_of(current).get(job_id)
    if job is None:
        # Not 200: EventSource gives up instead of reconnecting to a job that is gone.
        return PlainTextResponse(_not_found(job_id).message, status_code=404)
    console = current.console

    async def stream() -> AsyncIterator[str]:
        yield f"retry: {RECONNECT_MS}\n\n"
        view = job.view
        yield sse("live", current.fragment("_benchmark_job.html", job=view, compare_link=_compare_link(view)))
        after, last_sent = view.revision, time.monotonic()
        while not console.stopping():
            for view in await job.changes(after, STOP_CHECK_S):
                html = current.fragment("_benchmark_job.html", job=view, compare_link=_compare_link(view))
                yield sse("live", html)
                after, last_sent = view.revision, time.monotonic()
            if time.monotonic() - last_sent > KEEPALIVE_S:
                yield ": keepalive\n\n"
                last_sent = time.monotonic()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
