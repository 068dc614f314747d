"""Registry benchmark: broadcast fan-out across two replicas, route-change latency with 10,000
versions registered, and read latency. Writes the `registry` section of docs/benchmarks.md.

Run with `make bench` (or `PYTHONPATH=tests .venv/bin/python tests/bench/bench_registry.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg
from registry_support import Stub, deploy, register, routes_pb
from report import machine, write_section
from support import PostgresInstance, make_postgres_dir, spawn_registry

from modelyard.api import registry_pb2 as pb
from modelyard.client.channel import open_channel
from modelyard.common.server import freeze_startup_objects
from modelyard.registry.db import migrate

WATCHERS = 100
CHANGES = 40
VERSIONS = 10_000
READS = 300


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def row(name: str, samples_s: list[float], goal: str = "") -> str:
    ms = [s * 1000 for s in samples_s]
    return f"| {name} | {len(ms)} | {pct(ms, 50):.2f} | {pct(ms, 99):.2f} | {max(ms):.2f} | {goal} |"


async def fan_out(stubs: list[Stub], writer: Stub) -> list[float]:
    """Latency from issuing a route change to its arrival at each of WATCHERS streams."""
    arrivals: dict[int, list[float]] = {}
    ready = 0
    all_ready = asyncio.Event()

    async def watch(stub: Stub) -> None:
        nonlocal ready
        stream = stub.WatchDeployments(pb.WatchDeploymentsRequest(deployments=["text"]))
        try:
            async for event in stream:
                if event.kind == pb.WatchDeploymentsResponse.SNAPSHOT:
                    ready += 1
                    if ready == WATCHERS:
                        all_ready.set()
                    continue
                arrivals.setdefault(event.revision, []).append(time.perf_counter())
        finally:
            stream.cancel()

    tasks = [asyncio.create_task(watch(stubs[i % len(stubs)])) for i in range(WATCHERS)]
    await asyncio.wait_for(all_ready.wait(), 60)
    latencies: list[float] = []
    for i in range(CHANGES):
        weights = {"1.0.0": 100 - (i % 2) * 10, "1.1.0": (i % 2) * 10}
        start = time.perf_counter()
        changed = await writer.SetRoutes(pb.SetRoutesRequest(name="text", routes=routes_pb(weights)))
        deadline = time.perf_counter() + 10
        while len(arrivals.get(changed.revision, [])) < WATCHERS and time.perf_counter() < deadline:
            await asyncio.sleep(0.001)
        got = arrivals.get(changed.revision, [])
        if len(got) < WATCHERS:
            raise RuntimeError(f"revision {changed.revision} reached {len(got)}/{WATCHERS} watchers")
        latencies += [t - start for t in got]
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return latencies


async def bulk_versions(url: str) -> None:
    """10,000 registered versions of one model, inserted directly (set-up, not what is measured)."""
    conn = await asyncpg.connect(url)
    try:
        sig = json.dumps(
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
             "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}], "embedding_dim": 384}
        )  # fmt: skip
        records = [
            ("minilm", f"2.{i // 100}.{i % 100}", "/m", hashlib.sha256(str(i).encode()).hexdigest(),
             "sentence-transformers", "{}", sig, "{}", json.dumps({"batch": str(i % 10)}), f"bulk {i}", "bench")
            for i in range(VERSIONS)
        ]  # fmt: skip
        await conn.executemany(
            "INSERT INTO model_versions (model_id, version, source_uri, checkpoint_hash, loader,"
            " inference_config, signature, lineage, tags, description, created_by)"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb, $9::jsonb, $10, $11)",
            records,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def timed(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


async def main() -> None:
    root = make_postgres_dir()
    pg = PostgresInstance(root / "data")
    admin = await asyncpg.connect(pg.url())
    await admin.execute("CREATE DATABASE bench")
    await admin.close()
    url = pg.url("bench")
    await migrate(url)
    a, b = spawn_registry(url), spawn_registry(url)
    try:
        async with open_channel(a.address) as ca, open_channel(b.address) as cb:
            sa, sb = Stub(ca), Stub(cb)
            # The client freezes its start-up objects as the services do (`freeze_startup_objects`):
            # its own full collections took 33-42 ms, which would be timed as registry latency.
            freeze_startup_objects()
            await register(sa, "1.0.0")
            await register(sa, "1.1.0")
            await deploy(sa, "text", {"1.0.0": 100})
            fan = await fan_out([sa, sb], sa)

            await bulk_versions(url)
            flips = iter(range(10**6))

            async def change_routes() -> None:
                i = next(flips)
                await sa.SetRoutes(
                    pb.SetRoutesRequest(name="text", routes=routes_pb({"1.0.0": 100 - i % 2, "1.1.0": i % 2}))
                )

            routes = await timed(change_routes, 200)
            reads = {
                "GetVersion": await timed(
                    lambda: sa.GetVersion(pb.GetVersionRequest(model_id="minilm", version="2.57.3")), READS
                ),
                "GetDeployment": await timed(
                    lambda: sa.GetDeployment(pb.GetDeploymentRequest(name="text")), READS
                ),
                "ListVersions (model, page of 50)": await timed(
                    lambda: sa.ListVersions(pb.ListVersionsRequest(model_id="minilm", page_size=50)), READS
                ),
                "ListVersions (tag filter)": await timed(
                    lambda: sa.ListVersions(pb.ListVersionsRequest(tags=["batch=7"], page_size=50)), READS
                ),
                "ListVersions (text search)": await timed(
                    lambda: sa.ListVersions(pb.ListVersionsRequest(query="bulk 99", page_size=50)), READS
                ),
            }
    finally:
        a.kill()
        b.kill()
        pg.server.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    lines = [
        "## Registry",
        "",
        f"Machine: {machine()}. Command: `make bench` (`tests/bench/bench_registry.py`). "
        "Two registry processes on one embedded PostgreSQL 16; the benchmark client runs in a third "
        "process, so figures include its own event loop handling all streams. Like the services, the "
        "client freezes its start-up objects out of the cyclic GC before measuring.",
        "",
        "| measurement | samples | p50 ms | p99 ms | max ms | goal |",
        "|---|---|---|---|---|---|",
        row(f"fan-out: route change → {WATCHERS} watchers on 2 replicas", fan, "p99 < 50 ms"),
        row(f"SetRoutes with {VERSIONS:,} versions registered", routes),
    ]
    lines += [row(name, samples, "p99 < 10 ms") for name, samples in reads.items()]
    lines += ["", f"Fan-out mean {statistics.mean(fan) * 1000:.2f} ms over {CHANGES} changes."]
    body = "\n".join(lines)
    write_section("registry", body)
    print(body)


if __name__ == "__main__":
    # The versions registered here point at paths that are never fetched; the replicas must accept them.
    os.environ.setdefault("MODELYARD_ARTIFACT_ROOTS", "file:///models/")
    asyncio.run(main())
