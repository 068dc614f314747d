"""Heartbeats with live counters as a worker sends them, for registry and console tests that need
figures without a model behind them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

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


@dataclass
class _Series:
    since_s: float
    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * BUCKET_COUNT)
    shadow: int = 0
    agreement_sum: float = 0.0
    agreement_items: int = 0


class TrafficWorker:
    """A worker that serves `rate` requests/s of `deployment`, split by the deployment's current
    routes (re-read every beat), and heartbeats counters as `RegistrySync` does: per version, a set
    latency (`latency_s`) and a share of requests failing with `error_code` (`error_share`); a
    version in `failed_loads` is reported FAILED with that error. A route that mirrors gets its
    percent of all requests as shadow copies (one item each) agreeing with the primary by
    `agreement` (default 0.99)."""

    def __init__(
        self,
        client: RegistryClient,
        *,
        worker_id: str,
        deployment: str = "text",
        rate: float = 400.0,
        latency_s: dict[str, float] | None = None,
        error_share: dict[str, float] | None = None,
        error_code: str = "INTERNAL",
        failed_loads: dict[str, str] | None = None,
        agreement: dict[str, float] | None = None,
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.deployment = deployment
        self.rate = rate
        self.latency_s = latency_s or {}
        self.error_share = error_share or {}
        self.error_code = error_code
        self.failed_loads = failed_loads or {}
        self.agreement = agreement or {}
        self.started = time.monotonic()
        self.started_at_ns = time.time_ns()
        self.last = self.started
        self.carry: dict[str, float] = {}
        self.series: dict[str, _Series] = {}

    def _latency(self, version: str) -> float:
        return self.latency_s.get(version, 0.004)

    def _count(self, version: str, requests: int, now: float, *, shadow: bool = False) -> None:
        s = self.series.setdefault(version, _Series(since_s=now - self.started))
        failed = round(requests * self.error_share.get(version, 0.0))
        s.requests += requests
        s.errors += failed
        s.buckets[bucket_index(self._latency(version))] += requests - failed
        if shadow:
            s.shadow += requests
            s.agreement_sum += (requests - failed) * self.agreement.get(version, 0.99)
            s.agreement_items += requests - failed

    async def beat(self) -> pb.Deployment:
        deployment = await self.client.get_deployment(pb.GetDeploymentRequest(name=self.deployment))
        now = time.monotonic()
        elapsed, self.last = now - self.last, now
        for route in deployment.routes:
            due = self.carry.get(route.version, 0.0) + self.rate * elapsed * route.weight / 100
            whole = int(due)
            self.carry[route.version] = due - whole
            self._count(route.version, whole, now)
            if route.mirror_percent:
                key = f"shadow:{route.version}"
                due = self.carry.get(key, 0.0) + self.rate * elapsed * route.mirror_percent / 100
                whole = int(due)
                self.carry[key] = due - whole
                self._count(route.version, whole, now, shadow=True)
        status = pb.WorkerStatus(worker_id=self.worker_id, state="serving")
        loaded = [
            pb.LoadedVersion(
                version=r.version,
                state=pb.FAILED if r.version in self.failed_loads else pb.SERVING,
                last_error=self.failed_loads.get(r.version, ""),
            )
            for r in deployment.routes
        ]
        status.deployments.add(deployment=self.deployment, revision=deployment.revision, versions=loaded)
        status.counters.started_at.FromNanoseconds(self.started_at_ns)
        status.counters.uptime_s = now - self.started
        for version, s in sorted(self.series.items()):
            status.counters.versions.add(
                deployment=self.deployment,
                version=version,
                since_s=s.since_s,
                requests=s.requests,
                items=s.requests - s.errors,
                errors={self.error_code: s.errors} if s.errors else {},
                latency_buckets=s.buckets,
                latency_sum_s=sum(s.buckets) * self._latency(version),
                shadow_requests=s.shadow,
                agreement_sum=s.agreement_sum,
                agreement_items=s.agreement_items,
            )
        await self.client.report_status(pb.ReportStatusRequest(status=status))
        return deployment

    async def run(self, interval_s: float = 0.1) -> None:
        while True:
            with contextlib.suppress(Exception):  # a replica going away: the next beat goes elsewhere
                await self.beat()
            await asyncio.sleep(interval_s)
