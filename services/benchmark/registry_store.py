"""RunStore backed by the registry's performance store (RecordBenchmarkRun and friends), and how a
failed registry call becomes the benchmark service's own answer."""

from __future__ import annotations

import grpc

from modelyard.api import registry_pb2
from modelyard.benchmark.converters import run_from_pb, run_to_pb
from modelyard.benchmark.results import RunRecord
from modelyard.client import ModelyardError, RegistryClient
from modelyard.common.errors import FailedPrecondition, Unavailable, error_for_status

# The registry's refusals the caller of the benchmark service may act on; the rest is UNAVAILABLE.
_PASSED_ON = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
)


def registry_failure(error: ModelyardError, what: str) -> ModelyardError:
    """A failed registry call as this service's answer, naming the call.

    A refused token is this service's own configuration problem, not the caller's: FAILED_PRECONDITION
    (passing UNAUTHENTICATED on would tell the caller its token is wrong)."""
    if error.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return FailedPrecondition(
            f"the registry refused the benchmark service's credentials for {what}: {error.message}; "
            "give the service a benchmark token (MODELYARD_TOKEN) the registry knows"
        )
    message = f"registry {what}: {error.message}"
    return error_for_status(error.code, message) if error.code in _PASSED_ON else Unavailable(message)


class RegistryRunStore:
    def __init__(self, registry: RegistryClient) -> None:
        self._registry = registry

    async def record(self, run: RunRecord) -> RunRecord:
        try:
            reply = await self._registry.record_benchmark_run(
                registry_pb2.RecordBenchmarkRunRequest(run=run_to_pb(run))
            )
        except ModelyardError as error:
            raise registry_failure(error, "RecordBenchmarkRun") from None
        return run_from_pb(reply)

    async def get(self, run_id: str, *, with_samples: bool = True) -> RunRecord:
        try:
            reply = await self._registry.get_benchmark_run(
                registry_pb2.GetBenchmarkRunRequest(run_id=run_id, without_samples=not with_samples)
            )
        except ModelyardError as error:
            raise registry_failure(error, "GetBenchmarkRun") from None
        return run_from_pb(reply)

    async def list(
        self,
        *,
        model_id: str = "",
        version: str = "",
        suite: str = "",
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[RunRecord], str]:
        try:
            reply = await self._registry.list_benchmark_runs(
                registry_pb2.ListBenchmarkRunsRequest(
                    model_id=model_id,
                    version=version,
                    suite=suite,
                    page_size=page_size,
                    page_token=page_token,
                )
            )
        except ModelyardError as error:
            raise registry_failure(error, "ListBenchmarkRuns") from None
        return [run_from_pb(r) for r in reply.runs], reply.next_page_token
