"""`BenchmarkClient`: the benchmark service (`modelyard.benchmark.v1.BenchmarkService`)."""

from __future__ import annotations

from modelyard.api import benchmark_pb2 as pb
from modelyard.api import registry_pb2 as rpb
from modelyard.client.rpc import AsyncClient, ServerStream, SyncClient, Unary

SERVICE = pb.DESCRIPTOR.services_by_name["BenchmarkService"].full_name


class _BenchmarkRpcs:
    service = SERVICE
    # Progress messages; the last one of each version carries its recorded run.
    run_benchmark = ServerStream("RunBenchmark", pb.RunBenchmarkRequest, pb.RunBenchmarkProgress)
    get_run = Unary("GetRun", pb.GetRunRequest, rpb.BenchmarkRun, idempotent=True)
    list_runs = Unary("ListRuns", pb.ListRunsRequest, pb.ListRunsResponse, idempotent=True)
    compare = Unary("Compare", pb.CompareRequest, pb.CompareResponse, idempotent=True)
    list_suites = Unary("ListSuites", pb.ListSuitesRequest, pb.ListSuitesResponse, idempotent=True)


class BenchmarkClient(_BenchmarkRpcs, AsyncClient):
    """The benchmark service over grpc.aio."""


class SyncBenchmarkClient(_BenchmarkRpcs, SyncClient):
    """The benchmark service, blocking."""
