"""RunStore backed by the registry's performance store (RecordBenchmarkRun and friends)."""

from __future__ import annotations

import grpc
from grpc import aio

from modelyard.api import registry_pb2, registry_pb2_grpc
from modelyard.benchmark.converters import run_from_pb, run_to_pb
from modelyard.benchmark.results import RunRecord
from modelyard.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelyardError,
    NotFound,
    Unavailable,
)

_CODES: dict[grpc.StatusCode, type[ModelyardError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def registry_failure(error: aio.AioRpcError, what: str) -> ModelyardError:
    """The registry's refusal as our domain error (same code); anything else is UNAVAILABLE.

    A refused token is this service's own configuration problem, not the caller's: FAILED_PRECONDITION
    (passing UNAUTHENTICATED on would tell the caller its token is wrong)."""
    if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return FailedPrecondition(
            f"the registry refused the benchmark service's credentials for {what}: {error.details()}; "
            "give the service a benchmark token (MODELYARD_TOKEN) the registry knows"
        )
    kind = _CODES.get(error.code(), Unavailable)
    return kind(f"registry {what}: {error.details() or error.code().name}")


class RegistryRunStore:
    def __init__(self, channel: aio.Channel, *, timeout_s: float = 10.0) -> None:
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self.timeout_s = timeout_s

    async def record(self, run: RunRecord) -> RunRecord:
        try:
            reply = await self._stub.RecordBenchmarkRun(
                registry_pb2.RecordBenchmarkRunRequest(run=run_to_pb(run)), timeout=self.timeout_s
            )
        except aio.AioRpcError as error:
            raise registry_failure(error, "RecordBenchmarkRun") from None
        return run_from_pb(reply)

    async def get(self, run_id: str, *, with_samples: bool = True) -> RunRecord:
        try:
            reply = await self._stub.GetBenchmarkRun(
                registry_pb2.GetBenchmarkRunRequest(run_id=run_id, without_samples=not with_samples),
                timeout=self.timeout_s,
            )
        except aio.AioRpcError as error:
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
            reply = await self._stub.ListBenchmarkRuns(
                registry_pb2.ListBenchmarkRunsRequest(
                    model_id=model_id,
                    version=version,
                    suite=suite,
                    page_size=page_size,
                    page_token=page_token,
                ),
                timeout=self.timeout_s,
            )
        except aio.AioRpcError as error:
            raise registry_failure(error, "ListBenchmarkRuns") from None
        return [run_from_pb(r) for r in reply.runs], reply.next_page_token
