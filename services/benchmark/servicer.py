"""gRPC surface of the benchmark service: converts messages and delegates to the runner and store."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from modelyard.api import benchmark_pb2, benchmark_pb2_grpc, registry_pb2
from modelyard.benchmark import converters
from modelyard.benchmark.catalog import list_suites
from modelyard.benchmark.compare import compare_runs
from modelyard.benchmark.export import export_comparison
from modelyard.benchmark.runner import BenchmarkRunner
from modelyard.benchmark.stats import DEFAULT_RESAMPLES, DEFAULT_SEED
from modelyard.benchmark.store import RunStore
from modelyard.common.errors import InvalidArgument
from modelyard.common.interceptors import principal_var

MAX_RESAMPLES = 100_000


class BenchmarkServicer(benchmark_pb2_grpc.BenchmarkServiceServicer):
    def __init__(self, runner: BenchmarkRunner, store: RunStore) -> None:
        self.runner = runner
        self.store = store

    async def RunBenchmark(
        self, request: benchmark_pb2.RunBenchmarkRequest, context: aio.ServicerContext
    ) -> AsyncIterator[benchmark_pb2.RunBenchmarkProgress]:
        principal = principal_var.get()
        spec = converters.spec_from_pb(request, created_by=principal.name if principal else "")
        async for progress in self.runner.run(spec):
            yield converters.progress_to_pb(progress)

    async def GetRun(
        self, request: benchmark_pb2.GetRunRequest, context: aio.ServicerContext
    ) -> registry_pb2.BenchmarkRun:
        run = await self.store.get(request.run_id, with_samples=not request.without_samples)
        return converters.run_to_pb(run)

    async def ListRuns(
        self, request: benchmark_pb2.ListRunsRequest, context: aio.ServicerContext
    ) -> benchmark_pb2.ListRunsResponse:
        runs, next_token = await self.store.list(
            model_id=request.model_id,
            version=request.version,
            suite=request.suite,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return benchmark_pb2.ListRunsResponse(
            runs=[converters.run_to_pb(r) for r in runs], next_page_token=next_token
        )

    async def Compare(
        self, request: benchmark_pb2.CompareRequest, context: aio.ServicerContext
    ) -> benchmark_pb2.CompareResponse:
        resamples = request.resamples or DEFAULT_RESAMPLES
        if not 0 < resamples <= MAX_RESAMPLES:
            raise InvalidArgument(f"resamples must be between 1 and {MAX_RESAMPLES}, got {resamples}")
        baseline = await self.store.get(request.baseline_run_id)
        candidate = await self.store.get(request.candidate_run_id)
        comparison = compare_runs(baseline, candidate, resamples=resamples, seed=request.seed or DEFAULT_SEED)
        export = export_comparison(comparison, request.export_format) if request.export_format else ""
        return converters.comparison_to_pb(comparison, export)

    async def ListSuites(
        self, request: benchmark_pb2.ListSuitesRequest, context: aio.ServicerContext
    ) -> benchmark_pb2.ListSuitesResponse:
        return benchmark_pb2.ListSuitesResponse(suites=[converters.suite_to_pb(s) for s in list_suites()])
