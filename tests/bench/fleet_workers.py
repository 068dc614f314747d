"""Simulated inference workers for the fleet benchmark: one process holds many, each with its own
gRPC connection, a WatchDeployments stream and the heartbeat loop of `RegistrySync`.

Run by `bench_fleet.py`: `fleet_workers.py --first F --count C --deployment D ADDRESS...` starts
workers F..F+C-1, worker i on ADDRESS[i % len(ADDRESS)]. `--jitter 0.2` waits a random 0.8-1.2
intervals between heartbeats instead of exactly one (a diagnostic: `RegistrySync` does not jitter);
`--apply-ms LO HI` is how long applying a change takes (default 2-20 ms, a routing-table switch
with the versions loaded; 300-700 a version loaded on the change). It prints `ready` once every worker
has its snapshot and one heartbeat through, then one JSON line of samples when a line `stop`
arrives (or stdin closes: the benchmark died, so leave too).

Times are `time.monotonic()`, CLOCK_MONOTONIC, which every process on the machine shares, so the
benchmark can subtract its own change times from the arrivals measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from modelyard.api import registry_pb2 as pb
from modelyard.api import registry_pb2_grpc
from modelyard.common.server import freeze_startup_objects

# As `modelyard.client.channel.open_channel`, plus a subchannel pool per channel: grpc otherwise
# shares one TCP connection between every channel of a process to the same address, and the
# registry would serve 4 connections instead of a fleet's 1,000.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.enable_retries", 1),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
RPC_TIMEOUT_S = 10.0


class SimulatedWorker:
    """What `RegistrySync` does, without models: follow the stream, apply each change after a
    routing-table switch, heartbeat at once after applying and otherwise every interval."""

    def __init__(
        self,
        index: int,
        address: str,
        deployment: str,
        record: Samples,
        *,
        jitter: float,
        apply_s: tuple[float, float],
    ) -> None:
        self.jitter = jitter
        self.apply_s = apply_s
        self.worker_id = f"fleet-{index:04d}"
        self.address = address
        self.deployment = deployment
        self.record = record
        self.channel = aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.revision = 0  # last revision seen on the stream
        self.applied: pb.Deployment | None = None  # what the routing table holds
        self.heartbeat_s = 1.0
        self.changed = asyncio.Event()
        self.snapshot = asyncio.Event()
        self.reported = asyncio.Event()
        self._request: pb.ReportStatusRequest | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, first_heartbeat_in_s: float) -> None:
        self._tasks = [
            asyncio.create_task(self._watch_forever()),
            asyncio.create_task(self._heartbeat_forever(first_heartbeat_in_s)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.channel.close(None)

    async def _watch_forever(self) -> None:
        while True:
            call = self.stub.WatchDeployments(
                pb.WatchDeploymentsRequest(deployments=[self.deployment], since_revision=self.revision)
            )
            try:
                async for message in call:
                    arrived = time.monotonic()
                    if message.kind == pb.WatchDeploymentsResponse.SNAPSHOT:
                        self.snapshot.set()
                    else:
                        self.record.arrivals.setdefault(message.revision, []).append(arrived)
                    self.revision = max(self.revision, message.revision)
                    for deployment in message.deployments:
                        if deployment.name == self.deployment:
                            self._apply_soon(deployment)
            except grpc.RpcError as exc:
                self.record.stream_errors.append(f"{self.worker_id}: {exc.code().name}")
            else:
                self.record.stream_errors.append(f"{self.worker_id}: stream ended")
            await asyncio.sleep(0.2 * random.uniform(0.8, 1.2))

    def _apply_soon(self, deployment: pb.Deployment) -> None:
        def apply() -> None:
            if self.applied is None or deployment.revision > self.applied.revision:
                self.applied = deployment
                self._request = None
                self.changed.set()  # `RegistrySync.notify_change`: tell the registry now

        asyncio.get_running_loop().call_later(random.uniform(*self.apply_s), apply)

    def _status(self) -> pb.ReportStatusRequest:
        # Rebuilt only when the routing table changed; last_seen is the registry's clock anyway.
        if self._request is None:
            status = pb.WorkerStatus(
                worker_id=self.worker_id,
                address=f"10.0.{self.worker_id[-4:-2]}.{self.worker_id[-2:]}:8001",
                state="serving" if self.applied else "starting",
                live=True,
            )
            if self.applied is not None:
                entry = status.deployments.add(deployment=self.deployment, revision=self.applied.revision)
                by_version = {v.version: v for v in self.applied.versions}
                for route in sorted(self.applied.routes, key=lambda r: r.version):
                    version = by_version.get(route.version)
                    entry.versions.add(
                        version=route.version,
                        state=pb.SERVING,
                        checkpoint_hash=version.checkpoint_hash if version else "",
                        device="cpu",
                        attempts=1,
                    )
            self._request = pb.ReportStatusRequest(status=status)
        now = Timestamp()
        now.GetCurrentTime()
        self._request.status.last_seen.CopyFrom(now)
        return self._request

    async def _heartbeat_forever(self, first_in_s: float) -> None:
        await asyncio.sleep(first_in_s)
        while True:
            self.changed.clear()
            started = time.monotonic()
            try:
                response = await self.stub.ReportStatus(self._status(), timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as exc:
                self.record.heartbeat_errors.append(exc.code().name)
            else:
                self.record.heartbeats.append((started, time.monotonic() - started))
                self.reported.set()
                if response.heartbeat_interval_ms > 0:
                    self.heartbeat_s = response.heartbeat_interval_ms / 1000
            wait_s = self.heartbeat_s * random.uniform(1 - self.jitter, 1 + self.jitter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), wait_s)


class Samples:
    def __init__(self) -> None:
        self.arrivals: dict[int, list[float]] = {}
        self.heartbeats: list[tuple[float, float]] = []
        self.heartbeat_errors: list[str] = []
        self.stream_errors: list[str] = []

    def to_json(self) -> str:
        return json.dumps(
            {
                "arrivals": {str(k): v for k, v in self.arrivals.items()},
                "heartbeat_start": [round(s, 6) for s, _ in self.heartbeats],
                "heartbeat_s": [round(d, 6) for _, d in self.heartbeats],
                "heartbeat_errors": self.heartbeat_errors,
                "stream_errors": self.stream_errors,
            }
        )


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    samples = Samples()
    addresses = args.addresses
    workers = [
        SimulatedWorker(
            i,
            addresses[i % len(addresses)],
            args.deployment,
            samples,
            jitter=args.jitter,
            apply_s=(args.apply_ms[0] / 1000, args.apply_ms[1] / 1000),
        )
        for i in range(args.first, args.first + args.count)
    ]
    # Like a service process, and for the reason bench_registry.py gives: a full collection over
    # the imported modules is tens of ms that would be timed as registry latency.
    freeze_startup_objects()
    for worker in workers:
        # Heartbeats of a fleet that started over minutes are spread over the interval.
        worker.start(first_heartbeat_in_s=random.uniform(0, args.interval_s))
        await asyncio.sleep(0.002)  # connect gradually, as pods come up
    for worker in workers:
        await asyncio.wait_for(worker.snapshot.wait(), 60)
        await asyncio.wait_for(worker.reported.wait(), 60)
    print("ready", flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() in ("stop", ""):
            break
    await asyncio.gather(*(w.stop() for w in workers))
    print(samples.to_json(), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--deployment", required=True)
    parser.add_argument("--jitter", type=float, default=0.0)
    # A worker whose versions are loaded already switches its routing table in a few ms.
    parser.add_argument("--apply-ms", type=float, nargs=2, default=(2.0, 20.0), help="apply delay range")
    parser.add_argument("--interval-s", type=float, default=1.0, help="spread of the first heartbeats")
    parser.add_argument("addresses", nargs="+")
    asyncio.run(main(parser.parse_args()))
