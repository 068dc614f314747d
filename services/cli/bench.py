"""`modelyard bench`: run suites against workers, compare runs, list and export them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from modelyard.api import benchmark_pb2 as bpb
from modelyard.api import registry_pb2 as rpb
from modelyard.cli import files
from modelyard.cli.context import CliContext, get_context, to_jsonable
from modelyard.cli.errors import EXIT_FAILED, CliError, UsageError
from modelyard.cli.output import json_option, number, table, when
from modelyard.cli.parsing import parse_key_values
from modelyard.cli.progress import fraction_bar
from modelyard.common.states import RUN_STATUS_FROM_PB

if TYPE_CHECKING:
    from modelyard.client import BenchmarkClient, RegistryClient


@click.group()
def bench() -> None:
    """Benchmarks through the benchmark service (`--benchmark` address)."""


def _worker_for(ctx: CliContext, deployment: str, versions: list[str]) -> tuple[str, str, list[str], int]:
    """(worker address, model id, versions to run, the smallest max_batch_size among them)."""

    async def call(registry: RegistryClient) -> tuple[str, str, list[str], int]:
        d = await registry.get_deployment(rpb.GetDeploymentRequest(name=deployment))
        workers = await registry.list_workers(rpb.ListWorkersRequest(deployment=deployment))
        live = [w for w in workers.workers if w.live and w.address]
        chosen = versions or [r.version for r in d.routes]
        limits = []
        for version in chosen:
            found = await registry.get_version(rpb.GetVersionRequest(model_id=d.model_id, version=version))
            if found.inference_config.max_batch_size:
                limits.append(found.inference_config.max_batch_size)
        return (live[0].address if live else "", d.model_id, chosen, min(limits, default=0))

    return ctx.registry_call(call)


def metric_matrix(runs: list[rpb.BenchmarkRun]) -> tuple[list[str], list[list[str]]]:
    """Rows = metric names (first-seen order), columns = runs' versions."""
    names: list[str] = []
    units: dict[str, str] = {}
    for run in runs:
        for m in run.metrics:
            if m.name not in units:
                names.append(m.name)
                units[m.name] = m.unit
    rows = []
    for name in names:
        row = [name]
        for run in runs:
            found = next((m for m in run.metrics if m.name == name), None)
            row.append(number(found.value, found.unit) if found else "-")
        rows.append(row)
    return [f"{r.version} ({r.run_id[:8]})" for r in runs], rows


@bench.command("run")
@click.argument("deployment")
@click.argument("versions", nargs=-1)
@click.option(
    "--suite", default="stdlib-docstrings", show_default=True, help="Suite name, `load`, or beir:PATH."
)
@click.option("--worker", default="", help="Worker HOST:PORT; default: a live worker of DEPLOYMENT.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Suite option, e.g. limit=200.")
@click.option("--concurrency", default="1,4", show_default=True, help="Load suite: comma-separated levels.")
@click.option(
    "--requests", type=click.IntRange(min=0), default=200, show_default=True, help="Load: per level."
)
@click.option("--duration-s", type=click.FloatRange(min=0), default=0.0, help="Load: per level, seconds.")
@click.option("--warmup-requests", type=click.IntRange(min=0), default=10, show_default=True)
@click.option(
    "--batch-size", type=click.IntRange(min=0), default=0, help="Items per request (0 = suite default)."
)
@click.option("--stage-unrouted", is_flag=True, help="Stage versions no route serves, unstage afterwards.")
@json_option
def run_cmd(
    deployment: str,
    versions: tuple[str, ...],
    suite: str,
    worker: str,
    options: tuple[str, ...],
    concurrency: str,
    requests: int,
    duration_s: float,
    warmup_requests: int,
    batch_size: int,
    stage_unrouted: bool,
) -> None:
    """Benchmark VERSIONS (default: every routed version) of DEPLOYMENT; each run is recorded."""
    ctx = get_context()
    found_worker, model_id, chosen, largest_batch = _worker_for(ctx, deployment, list(versions))
    worker = worker or found_worker
    if not worker:
        raise CliError(
            f"no live worker serves {deployment}; start one or pass --worker HOST:PORT", EXIT_FAILED
        )
    # Suites batch as they like; never more per request than every benchmarked version accepts.
    if not batch_size and largest_batch and "batch_size" not in dict(parse_key_values(options, "option")):
        batch_size = min(largest_batch, 32)
    request = bpb.RunBenchmarkRequest(
        worker=worker,
        deployment=deployment,
        model_id=model_id,
        versions=chosen,
        suite=suite,
        options=parse_key_values(options, "option"),
        stage_unrouted=stage_unrouted,
    )
    if suite == "load":
        try:
            levels = [int(c) for c in concurrency.split(",") if c.strip()]
        except ValueError:
            raise UsageError(
                f"--concurrency {concurrency!r} is not a comma-separated list of integers"
            ) from None
        request.load.CopyFrom(
            bpb.LoadSettings(
                concurrency=levels,
                requests=requests,
                duration_s=duration_s,
                warmup_requests=warmup_requests,
                batch_size=batch_size,
            )
        )
    elif batch_size:
        request.options["batch_size"] = str(batch_size)

    async def call(bench: BenchmarkClient) -> list[rpb.BenchmarkRun]:
        finished: list[rpb.BenchmarkRun] = []
        with fraction_bar(ctx) as update:
            async for progress in bench.run_benchmark(request):
                update(progress.version, progress.fraction, f"{progress.phase}: {progress.message}")
                if progress.HasField("run"):
                    finished.append(progress.run)
                    if not ctx.interactive and not ctx.json:
                        ctx.say(
                            f"{progress.version}: {RUN_STATUS_FROM_PB.get(progress.run.status, '?')} "
                            f"(run {progress.run.run_id})"
                        )
        return finished

    runs = ctx.benchmark_call(call)
    failed = [r for r in runs if r.status != rpb.RUN_STATUS_SUCCEEDED]
    if ctx.json:
        ctx.emit_json([_without_samples(r) for r in runs])
    else:
        headers, rows = metric_matrix(runs)
        table(ctx, ["metric", *headers], rows, title=f"{suite} on {deployment} ({worker})", right=headers)
    if failed:
        raise CliError(
            "; ".join(f"run {r.run_id} of {r.version} failed: {r.error}" for r in failed), EXIT_FAILED
        )


def _without_samples(run: rpb.BenchmarkRun) -> rpb.BenchmarkRun:
    copy = rpb.BenchmarkRun()
    copy.CopyFrom(run)
    for m in copy.metrics:
        del m.samples[:]
    return copy


def _newest_run(ctx: CliContext, model_id: str, version: str, suite: str) -> str:
    listed = ctx.benchmark_call(
        lambda bench: bench.list_runs(
            bpb.ListRunsRequest(model_id=model_id, version=version, suite=suite, page_size=100),
        )
    )
    ok = [r for r in listed.runs if r.status == rpb.RUN_STATUS_SUCCEEDED]
    if not ok:
        raise CliError(
            f"{model_id} {version} has no successful {suite or 'benchmark'} run; `modelyard bench run` first",
            EXIT_FAILED,
        )
    return max(ok, key=lambda r: (r.started_at.seconds, r.started_at.nanos)).run_id


def _compare(
    ctx: CliContext,
    baseline: str,
    candidate: str,
    model_id: str | None,
    suite: str,
    fmt: str,
    resamples: int,
    seed: int,
) -> bpb.CompareResponse:
    if model_id:
        baseline = _newest_run(ctx, model_id, baseline, suite)
        candidate = _newest_run(ctx, model_id, candidate, suite)
    request = bpb.CompareRequest(
        baseline_run_id=baseline,
        candidate_run_id=candidate,
        resamples=resamples,
        export_format=fmt,
        seed=seed,
    )
    return ctx.benchmark_call(lambda bench: bench.compare(request, timeout=max(ctx.timeout_s, 60)))


_COMPARE_OPTIONS = [
    click.option(
        "--model",
        "model_id",
        default=None,
        help="BASELINE and CANDIDATE are versions of this model: compare their newest successful runs.",
    ),
    click.option("--suite", default="", help="With --model: the suite whose runs to compare."),
    click.option(
        "--resamples", type=click.IntRange(min=0), default=0, help="Bootstrap resamples (0 = default)."
    ),
    click.option("--seed", type=click.IntRange(min=0), default=0, help="Bootstrap seed (0 = default)."),
]


def _with_compare_options(func: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_COMPARE_OPTIONS):
        func = option(func)
    return func


@bench.command("compare")
@click.argument("baseline")
@click.argument("candidate")
@_with_compare_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["", "json", "csv", "markdown"]),
    default="",
    help="Print the service's export in this format instead of the table.",
)
@json_option
def compare_cmd(
    baseline: str, candidate: str, model_id: str | None, suite: str, resamples: int, seed: int, fmt: str
) -> None:
    """Compare two runs (ids, or versions with --model): deltas, 95% bootstrap intervals, winner."""
    ctx = get_context()
    result = _compare(ctx, baseline, candidate, model_id, suite, fmt, resamples, seed)
    if fmt:
        click.echo(result.export.rstrip("\n"))
        return
    if ctx.json:
        ctx.emit_json(result)
        return
    table(
        ctx,
        ["metric", "baseline", "candidate", "delta", "95% interval", "better", "winner"],
        [
            (
                m.metric,
                number(m.baseline, m.unit),
                number(m.candidate, m.unit),
                f"{m.delta:+.4g}",
                f"[{m.ci_low:+.4g}, {m.ci_high:+.4g}]" if m.has_interval else "-",
                "higher" if m.higher_is_better else "lower",
                m.winner,
            )
            for m in result.metrics
        ],
        title=f"baseline {result.baseline_run_id[:12]} vs candidate {result.candidate_run_id[:12]}",
        right=["baseline", "candidate", "delta"],
    )
    ctx.say(f"overall winner: {result.winner}")


@bench.command("list")
@click.option("--model", "model_id", default="")
@click.option("--version", default="")
@click.option("--suite", default="")
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=50, show_default=True)
@json_option
def list_cmd(model_id: str, version: str, suite: str, limit: int) -> None:
    """List recorded benchmark runs."""
    ctx = get_context()
    listed = ctx.benchmark_call(
        lambda bench: bench.list_runs(
            bpb.ListRunsRequest(model_id=model_id, version=version, suite=suite, page_size=limit),
        )
    )
    if ctx.json:
        ctx.emit_json([_without_samples(r) for r in listed.runs])
        return
    table(
        ctx,
        ["run", "model", "version", "suite", "status", "metrics", "started", "error"],
        [
            (
                r.run_id,
                r.model_id,
                r.version,
                r.suite,
                RUN_STATUS_FROM_PB.get(r.status, "?"),
                len(r.metrics),
                when(r.started_at),
                r.error or "-",
            )
            for r in listed.runs
        ],
        right=["metrics"],
    )


def export_run(run: rpb.BenchmarkRun, fmt: str) -> str:
    """One run's metrics as JSON, CSV or Markdown (comparisons are exported by the service)."""
    if fmt == "json":
        return json.dumps(to_jsonable(_without_samples(run)), indent=2)
    rows = [(m.name, repr(m.value), m.unit, len(m.samples)) for m in run.metrics]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["run_id", "model_id", "version", "suite", "metric", "value", "unit", "samples"])
        for name, value, unit, samples in rows:
            writer.writerow([run.run_id, run.model_id, run.version, run.suite, name, value, unit, samples])
        return buffer.getvalue()
    lines = [
        f"### {run.model_id} {run.version} on {run.suite} (run {run.run_id})",
        "",
        "| metric | value | unit | samples |",
        "|---|---:|---|---:|",
        *(f"| {n} | {number(float(v))} | {u} | {s} |" for n, v, u, s in rows),
    ]
    return "\n".join(lines) + "\n"


@bench.command("export")
@click.argument("run_id")
@click.argument("candidate_run_id", required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "csv", "markdown"]),
    default=None,
    help="Default: markdown, or json with --json.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File; default stdout.",
)
@_with_compare_options
@json_option
def export_cmd(
    run_id: str,
    candidate_run_id: str | None,
    fmt: str | None,
    output: Path | None,
    model_id: str | None,
    suite: str,
    resamples: int,
    seed: int,
) -> None:
    """Export one run, or the comparison of RUN_ID (baseline) with CANDIDATE_RUN_ID.

    --json is --format json; with -o FILE, stdout then gets {"output": FILE, "bytes": N}.
    """
    ctx = get_context()
    if ctx.json and fmt not in (None, "json"):
        raise UsageError(f"--json asks for JSON and --format {fmt} for {fmt}; give one of them")
    fmt = fmt or ("json" if ctx.json else "markdown")
    if output is not None:
        files.check_writable(output, "export file")
    if candidate_run_id:
        text = _compare(ctx, run_id, candidate_run_id, model_id, suite, fmt, resamples, seed).export
    else:
        if model_id:
            run_id = _newest_run(ctx, model_id, run_id, suite)
        run = ctx.benchmark_call(
            lambda bench: bench.get_run(bpb.GetRunRequest(run_id=run_id, without_samples=False))
        )
        text = export_run(run, fmt)
    if output is None:
        click.echo(text.rstrip("\n"))
        return
    files.write_text(output, text, "export file")
    if ctx.json:
        ctx.emit_json({"output": str(output), "bytes": len(text.encode())})
    else:
        click.echo(f"wrote {output}", err=True)
