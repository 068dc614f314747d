"""Heartbeats with live counters as a worker sends them, for registry and console tests that need
figures without a model behind them."""

from __future__ import annotations

import time

from registry_support import Stub, deploy, register

from modelyard.api import registry_pb2 as pb
from modelyard.client import ClientSettings, RegistryClient
from modelyard.client.channel import open_channel
from modelyard.common.latency import BUCKET_COUNT, bucket_index


async def seed(address: str, token: str = "") -> None:
    """Version 1.0.0 of minilm, deployed as `text` at 100 %."""
    async with open_channel(address, ClientSettings(token=token)) as channel:
        await register(Stub(channel), "1.0.0")
        await deploy(Stub(channel), "text", {"1.0.0": 100})


class FakeWorker:
    """Heartbeats as `RegistrySync` sends them: counters of one series, serving 1.0.0 of `text`."""

    def __init__(self, client: RegistryClient, worker_id: str = "w1") -> None:
        self.client = client
        self.worker_id = worker_id
        self.started = time.monotonic()
        self.started_at_ns = time.time_ns()
        self.requests = 0
        self.errors: dict[str, int] = {}
        self.buckets = [0] * BUCKET_COUNT

    def serve(self, requests: int, seconds: float = 0.004, invalid: int = 0) -> None:
        self.requests += requests + invalid
        self.buckets[bucket_index(seconds)] += requests
        if invalid:
            self.errors["INVALID_ARGUMENT"] = self.errors.get("INVALID_ARGUMENT", 0) + invalid

    def report(
        self, *, buckets: list[int] | None = None, errors: dict[str, int] | None = None
    ) -> pb.ReportStatusRequest:
        status = pb.WorkerStatus(
            worker_id=self.worker_id,
            state="serving",
            deployments=[
                pb.DeploymentStatus(
                    deployment="text",
                    revision=1,
                    versions=[pb.LoadedVersion(version="1.0.0", state=pb.SERVING)],
                )
            ],
        )
        status.counters.started_at.FromNanoseconds(self.started_at_ns)
        status.counters.uptime_s = time.monotonic() - self.started
        status.counters.versions.add(
            deployment="text",
            version="1.0.0",
            since_s=0.0,
            requests=self.requests,
            items=self.requests - sum(self.errors.values()),
            errors=self.errors if errors is None else errors,
            latency_buckets=self.buckets if buckets is None else buckets,
            latency_sum_s=0.004 * sum(self.buckets),
        )
        return pb.ReportStatusRequest(status=status)

    async def beat(self) -> None:
        await self.client.report_status(self.report())
