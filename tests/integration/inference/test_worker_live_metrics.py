"""Live figures end to end: real worker processes under a known client load, heartbeating their
counters to real registries on one PostgreSQL, read back with GetLiveMetrics.

Tolerances, and why:
- Counts are exact. Once the load stopped and a heartbeat went out, requests, errors by code and the
  latency bucket counts equal what the clients sent and what the worker's own Prometheus histogram
  holds; nothing is sampled.
- Requests/s mid-load: within 10 % of the clients' completions inside the window the registry
  reports (window_start..window_end). The registry's rate is exact on the worker's clock; the edges
  differ by the requests in flight and by a heartbeat's delivery time (a few ms, more on a busy
  machine), 1-3 % at these rates.
- Percentiles: the worker measures inside ModelInfer, the clients around the whole call, so each
  worker duration is shorter than the client's and so is each quantile; and the registry only knows
  the bucket of each duration and interpolates inside it. So a registry percentile lies at most at
  the upper bound of the bucket holding the clients' percentile, and at least at the lower bound of
  the bucket below it (gRPC's overhead is under one bucket width: 15 ms at 10-25 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from closed_loop_support import deploy_versions
from google.protobuf import json_format
from worker_support import WorkerFactory, registry_version

from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.api import registry_pb2 as rpb
from modelyard.client import InferenceClient, ModelyardError, RegistryClient
from modelyard.common.latency import LATENCY_BUCKETS_S, bucket_index
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings

pytestmark = pytest.mark.slow

SENTENCES = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog near the river bank",
    "live figures come from heartbeat counters",
    "embeddings map sentences to vectors of three hundred and eighty four numbers",
]


@contextlib.asynccontextmanager
async def registry_replica(database_url: str) -> AsyncIterator[RegistryServer]:
    server = RegistryServer(
        RegistrySettings(
            database_url=database_url,
            host="127.0.0.1",
            port=0,
            metrics_port=None,
            poll_interval_s=0.5,
            grace_period_s=1.0,
            heartbeat_interval_ms=200,
            heartbeat_ttl_s=3.0,
            live_window_s=60.0,
            live_sample_interval_s=0.5,
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def converged(address: str, name: str, workers: int) -> None:
    """Until `workers` workers serve every routed version of `name`."""
    async with RegistryClient(address) as client:
        deadline = time.monotonic() + 120
        while True:
            status = await client.get_rollout_status(
                rpb.GetRolloutStatusRequest(deployment=name, wait_timeout_ms=5000), timeout=10
            )
            if status.converged and len(status.workers) == workers:
                return
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.1)


@dataclass
class Load:
    """Closed-loop clients; every outcome is recorded with the wall time it completed at."""

    deployment: str
    done: list[tuple[float, float]] = field(default_factory=list)  # (completed at, seconds)
    versions: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, address: str, index: int) -> None:
        async with InferenceClient(address) as worker:
            n = index
            while not self.stop.is_set():
                n += 1
                started = time.perf_counter()
                try:
                    answer = await worker.embed_texts(self.deployment, [SENTENCES[n % len(SENTENCES)]])
                except ModelyardError as error:
                    self.failures[error.code.name] += 1
                    await asyncio.sleep(0.05)
                    continue
                self.done.append((time.time(), time.perf_counter() - started))
                self.versions[answer.version] += 1

    async def bad_requests(self, address: str, count: int, spacing_s: float) -> None:
        """Requests a version refuses: a FP32 `text` tensor (INVALID_ARGUMENT)."""
        async with InferenceClient(address) as worker:
            for _ in range(count):
                tensor = oip.ModelInferRequest.InferInputTensor(name="text", datatype="FP32", shape=[1])
                tensor.contents.fp32_contents.append(1.0)
                try:
                    await worker.model_infer(
                        oip.ModelInferRequest(model_name=self.deployment, inputs=[tensor])
                    )
                except ModelyardError as error:
                    self.failures[error.code.name] += 1
                await asyncio.sleep(spacing_s)


async def model_ready(address: str, deployment: str) -> None:
    async with InferenceClient(address) as worker:
        deadline = time.monotonic() + 120
        while not (await worker.model_ready(oip.ModelReadyRequest(name=deployment))).ready:
            assert time.monotonic() < deadline, f"{deployment} not ready on {address}"
            await asyncio.sleep(0.1)


def peak_rate(load: Load) -> float:
    """The clients' highest completions per second over any 1 s."""
    times = sorted(at for at, _ in load.done)
    return float(max((np.searchsorted(times, t + 1.0) - i for i, t in enumerate(times)), default=0))


async def live(
    client: RegistryClient, deployment: str, window_s: float = 0.0
) -> list[rpb.VersionLiveFigures]:
    metrics = await client.get_live_metrics(
        rpb.GetLiveMetricsRequest(deployment=deployment, window_s=window_s)
    )
    return list(metrics.versions)


async def settle(
    client: RegistryClient, deployment: str, requests: int, timeout_s: float = 10.0
) -> list[rpb.VersionLiveFigures]:
    """The figures once every request sent is counted (the next heartbeats carry the last ones)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await live(client, deployment)
        if sum(r.total.requests for r in rows) >= requests or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


def prometheus_success_buckets(metrics_port: int, deployment: str, version: str) -> list[int]:
    """The worker's modelyard_request_duration_seconds buckets (outcome=success), not cumulative."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    cumulative: dict[float, float] = {}
    pattern = re.compile(r"^modelyard_request_duration_seconds_bucket\{(.*)\} (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if (labels["deployment"], labels["version"], labels["outcome"]) == (deployment, version, "success"):
            cumulative[float(labels["le"])] = float(match.group(2))
    ordered = [cumulative[b] for b in sorted(cumulative)]
    return [int(c - (ordered[i - 1] if i else 0)) for i, c in enumerate(ordered)]


def within_one_bucket_below(registry_ms: float, client_s: float) -> bool:
    i = bucket_index(client_s)
    upper = LATENCY_BUCKETS_S[i] if i < len(LATENCY_BUCKETS_S) else float("inf")
    lower = LATENCY_BUCKETS_S[i - 2] if i >= 2 else 0.0
    return lower <= registry_ms / 1000 <= upper


async def test_figures_agree_with_what_the_clients_measured(
    database_url: str, spawn_worker: WorkerFactory, minilm_dir: Path
) -> None:
    async with registry_replica(database_url) as registry, RegistryClient(registry.address) as reader:
        await deploy_versions(
            registry.address,
            "text-embedding",
            [registry_version(minilm_dir, "1.0.0", model_id="minilm")],
            {"1.0.0": 100},
        )
        worker = spawn_worker(registry=registry.address, deployments=("text-embedding",))
        await converged(registry.address, "text-embedding", 1)
        load = Load("text-embedding")
        tasks = [asyncio.create_task(load.client(worker.address, i)) for i in range(4)]
        tasks.append(asyncio.create_task(load.bad_requests(worker.address, 20, 0.25)))
        try:
            await asyncio.sleep(6.0)
            [row] = await live(reader, "text-embedding", window_s=4.0)
            figures = row.total
            start, end = figures.window_start.ToNanoseconds() / 1e9, figures.window_end.ToNanoseconds() / 1e9
            inside = sum(1 for at, _ in load.done if start <= at <= end)
            client_rate = inside / (end - start)
            print(f"mid-load: registry {figures.requests_per_s:.1f} req/s over {figures.window_s:.2f} s, "
                  f"clients {client_rate:.1f} req/s")  # fmt: skip
            assert 3.0 <= figures.window_s <= 4.2, "the oldest snapshot inside 4 s, 0.5 s apart"
            assert figures.requests_per_s == pytest.approx(client_rate, rel=0.10)
            assert figures.errors["INVALID_ARGUMENT"] > 0
        finally:
            load.stop.set()
            await asyncio.gather(*tasks)

        sent = len(load.done) + sum(load.failures.values())
        assert load.failures == {"INVALID_ARGUMENT": 20}, load.failures
        [row] = await settle(reader, "text-embedding", sent)
        total = row.total
        assert (row.version, [w.worker_id for w in row.workers]) == ("1.0.0", [row.workers[0].worker_id])
        assert total.requests == sent, "every request the clients sent, counted once"
        assert total.errors == {"INVALID_ARGUMENT": 20}
        assert total.items == len(load.done) and sum(total.latency_buckets) == len(load.done)
        assert list(total.latency_buckets) == prometheus_success_buckets(
            worker.metrics_port, "text-embedding", "1.0.0"
        )

        latencies = np.array([seconds for _, seconds in load.done])
        for q, registry_ms in [(0.5, total.p50_ms), (0.95, total.p95_ms), (0.99, total.p99_ms)]:
            client_s = float(np.quantile(latencies, q))
            print(f"p{round(q * 100)}: registry {registry_ms:.2f} ms, clients {client_s * 1000:.2f} ms")
            assert within_one_bucket_below(registry_ms, client_s), (q, registry_ms, client_s)
        assert total.mean_ms <= float(latencies.mean()) * 1000


async def test_two_replicas_give_the_same_two_rows_for_two_versions_at_50_50(
    database_url: str, spawn_worker: WorkerFactory, tiny_models: dict[str, Path]
) -> None:
    async with (
        registry_replica(database_url) as one,
        registry_replica(database_url) as two,
        RegistryClient(one.address) as reader_one,
        RegistryClient(two.address) as reader_two,
    ):
        versions = [
            registry_version(tiny_models["st0"], "1.0.0", model_id="tiny", dim=32),
            registry_version(tiny_models["st1"], "2.0.0", model_id="tiny", dim=32),
        ]
        await deploy_versions(one.address, "tiny", versions, {"1.0.0": 50, "2.0.0": 50})
        # Each worker heartbeats to its own replica.
        workers = [
            spawn_worker(registry=one.address, deployments=("tiny",), extra=("--worker-id", "w-one")),
            spawn_worker(registry=two.address, deployments=("tiny",), extra=("--worker-id", "w-two")),
        ]
        await converged(one.address, "tiny", 2)
        load = Load("tiny")
        tasks = [asyncio.create_task(load.client(w.address, i)) for i, w in enumerate(workers * 2)]
        await asyncio.sleep(4.0)
        load.stop.set()
        await asyncio.gather(*tasks)
        assert load.failures == {}
        sent = len(load.done)
        rows = await settle(reader_one, "tiny", sent)

        assert [r.version for r in rows] == ["1.0.0", "2.0.0"]
        assert {r.version: r.total.requests for r in rows} == dict(load.versions)
        for r in rows:
            assert [w.worker_id for w in r.workers] == ["w-one", "w-two"]
            assert 0.35 <= r.total.requests / sent <= 0.65, "weights 50/50"

        # Any replica answers for the whole fleet. The figures move with each heartbeat (a rate is
        # over the newest uptime), so compare answers read between two heartbeats: replica one
        # twice the same around replica two's answer.
        def plain(rows: list[rpb.VersionLiveFigures]) -> list[dict[str, object]]:
            return [json_format.MessageToDict(r) for r in rows]

        for _ in range(100):
            first, other, again = [plain(await live(c, "tiny")) for c in (reader_one, reader_two, reader_one)]
            if first == again:
                assert other == first
                break
        else:
            pytest.fail("replica one never answered twice alike in a row")


async def test_a_worker_restart_reads_as_neither_a_negative_nor_a_spiking_rate(
    database_url: str, spawn_worker: WorkerFactory, tiny_models: dict[str, Path]
) -> None:
    # Longer than a restart (about 6 s here), so snapshots of the old process taken under load are
    # still inside the window while the new one serves; phase one's load covers the window's start.
    window_s = 12.0
    async with registry_replica(database_url) as registry, RegistryClient(registry.address) as reader:
        tiny = registry_version(tiny_models["st0"], "1.0.0", model_id="tiny", dim=32)
        await deploy_versions(registry.address, "tiny", [tiny], {"1.0.0": 100})
        readings: list[tuple[float, rpb.LiveFigures]] = []
        watching = asyncio.Event()

        async def watch() -> None:
            while not watching.is_set():
                for r in await live(reader, "tiny", window_s=window_s):
                    readings.append((time.time(), r.total))
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        peaks, loads, steady = [], [], (0.0, 0.0)
        try:
            for phase, seconds in enumerate((8.0, 5.0)):
                # The same worker id: the registry must tell the new process by its counter epoch.
                worker = spawn_worker(
                    registry=registry.address, deployments=("tiny",), extra=("--worker-id", "w-restart")
                )
                await model_ready(worker.address, "tiny")
                load = Load("tiny")
                began = time.time()
                tasks = [asyncio.create_task(load.client(worker.address, i)) for i in range(2)]
                await asyncio.sleep(seconds)
                load.stop.set()
                await asyncio.gather(*tasks)
                peaks.append(peak_rate(load))
                loads.append(load)
                if phase == 0:
                    # SIGKILL: no stopping heartbeat; the row keeps the old process's counters, and
                    # the old snapshots stay inside the window while the new process starts serving.
                    worker.kill()
                else:
                    steady = (began + 1.5, began + seconds)
        finally:
            watching.set()
            await watcher
        after = await settle(reader, "tiny", len(loads[1].done))
        print(f"client peak rates {[round(r) for r in peaks]} req/s; registry readings {len(readings)}, "
              f"max {max(f.requests_per_s for _, f in readings):.0f} req/s")  # fmt: skip
        assert len(readings) > 50
        assert all(f.requests >= 0 and f.requests_per_s >= 0 and f.items >= 0 for _, f in readings)
        assert max(f.requests_per_s for _, f in readings) <= 2 * max(peaks), "no spike at the restart"
        # While the new process serves, its figures are its own: neither zero nor distorted by the old
        # process's snapshots still in the window.
        done = sorted(at for at, _ in loads[1].done)
        checked = 0
        for at, f in readings:
            if not steady[0] <= at <= steady[1]:
                continue
            start, end = f.window_start.ToNanoseconds() / 1e9, f.window_end.ToNanoseconds() / 1e9
            assert f.window_s >= 1.0, f
            served = (np.searchsorted(done, end, side="right") - np.searchsorted(done, start)) / (end - start)
            assert f.requests_per_s == pytest.approx(served, rel=0.25), (f, served)
            checked += 1
        assert checked >= 10
        [row] = after
        assert row.total.requests == len(loads[1].done), "the killed process's counts are not in the window"
