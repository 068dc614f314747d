"""What live counters cost a heartbeat in PostgreSQL, and what GetLiveMetrics costs to read.

The heartbeat upsert is the registry's hot path (see bench_fleet.py). This measures the statement
alone, on a real PostgreSQL (pgserver), three ways on fresh databases: the upsert as it was before
live counters, the new upsert without counters, and the new upsert with two versions' counters per
worker and each worker's history already at its steady size (live_window_s / live_sample_interval_s
snapshots). W simulated workers heartbeat once a second each for D seconds through an asyncpg pool;
figures per heartbeat: WAL bytes and records, statement latency, PostgreSQL CPU. Then the read
behind GetLiveMetrics (`repository.live_windows`) over all W workers.

Run: `PYTHONPATH=tests .venv/bin/python tests/bench/bench_live_heartbeat.py [--workers 300 --seconds 20]`.
Prints a Markdown table; it writes nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg
from support import PostgresInstance, make_postgres_dir

from modelyard.common.latency import BUCKET_COUNT
from modelyard.registry import repository as repo
from modelyard.registry.db import Conn, Database, migrate
from modelyard.registry.domain import (
    DeploymentStatus,
    LiveCounters,
    LoadedVersion,
    SeriesCounters,
    WorkerStatus,
)

TICKS = os.sysconf("SC_CLK_TCK")
# The registry's defaults (live_sample_interval_s, live_window_s); --sample-every changes the first.
SAMPLE_EVERY = dt.timedelta(seconds=5)
KEEP = dt.timedelta(seconds=180)

# The statement every heartbeat ran before live counters (services/registry/repository.py, 78dc3cb).
OLD_UPSERT = (
    "INSERT INTO workers (worker_id, address, state, last_error, deployments, fallback, last_seen)"
    " VALUES ($1, $2, $3, $4, $5, $6, now())"
    " ON CONFLICT (worker_id) DO UPDATE SET address = $2, state = $3, last_error = $4,"
    " deployments = $5, fallback = $6, last_seen = now()"
)


def status(worker: int, beat: int, *, counters: bool) -> WorkerStatus:
    versions = ["1.0.0", "1.1.0"]
    live = None
    if counters:
        series = []
        for i, version in enumerate(versions):
            requests = beat * (40 + i)
            buckets = [0] * BUCKET_COUNT
            for b in (3, 4, 5, 6):
                buckets[b] = requests // 4
            series.append(
                SeriesCounters(
                    "text-embedding",
                    version,
                    3.0,
                    requests,
                    requests,
                    {"INVALID_ARGUMENT": beat // 10},
                    buckets,
                    requests * 0.012,
                )
            )
        live = LiveCounters(
            started_at_ns=1_700_000_000_000_000_000 + worker, uptime_s=3.0 + beat, series=series
        )
    return WorkerStatus(
        worker_id=f"worker-{worker:04d}",
        address=f"10.0.{worker // 250}.{worker % 250}:8001",
        state="serving",
        deployments=[
            DeploymentStatus(
                "text-embedding",
                7,
                [LoadedVersion(v, "serving", checkpoint_hash="ab" * 32, device="cpu") for v in versions],
            )
        ],
        counters=live,
    )


def postgres_ticks(pg: PostgresInstance) -> int:
    postmaster = pg.server.get_pid()
    assert postmaster is not None
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total


async def wal(conn: Conn) -> tuple[int, int]:
    row = await conn.fetchrow("SELECT wal_records, wal_bytes FROM pg_stat_wal")
    assert row is not None
    return int(row["wal_records"]), int(row["wal_bytes"])


async def updates(conn: Conn) -> tuple[int, int]:
    """(updates, HOT updates) of the workers table so far."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    row = await conn.fetchrow(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'workers'"
    )
    assert row is not None
    return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])


async def prefill_history(conn: Conn, workers: int) -> None:
    """Each worker's history at its steady size: one snapshot every 5 s over the last 180 s."""
    steps = int(KEEP / SAMPLE_EVERY)
    now = time.time()
    for w in range(workers):
        history = []
        for k in range(steps):
            snap = repo._counters_json(status(w, k * 5, counters=True).counters)
            assert snap is not None
            history.append({**snap, "r": now - KEEP.total_seconds() + k * SAMPLE_EVERY.total_seconds()})
        await conn.execute(
            "UPDATE workers SET live_history = $2::jsonb, live_sampled_at = now() - $3::interval"
            " WHERE worker_id = $1",
            f"worker-{w:04d}",
            history,
            dt.timedelta(seconds=random.uniform(0, SAMPLE_EVERY.total_seconds())),
        )


async def run_variant(pg: PostgresInstance, name: str, args: argparse.Namespace) -> dict[str, Any]:
    database = f"bench_{name.replace(' ', '_')}"
    admin = await asyncpg.connect(pg.url())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {database}")
        await admin.execute(f"CREATE DATABASE {database}")
    finally:
        await admin.close()
    url = pg.url(database)
    await migrate(url)
    db = await Database.open(url, max_size=8)
    counters = name == "counters"
    try:
        async with db.connection() as conn:
            for w in range(args.workers):  # every worker row exists: steady state, not inserts
                await repo.upsert_worker(
                    conn, status=status(w, 0, counters=counters), sample_every=SAMPLE_EVERY, keep=KEEP
                )
            if counters:
                await prefill_history(conn, args.workers)
            await conn.execute("CHECKPOINT")
            await conn.execute("VACUUM ANALYZE workers")

        latencies: list[float] = []

        async def beat(w: int, k: int) -> None:
            s = status(w, k, counters=counters)
            started = time.perf_counter()
            async with db.connection() as conn:
                if name == "before":
                    await conn.execute(OLD_UPSERT, s.worker_id, s.address, s.state, s.last_error,
                                       repo.to_json(s.deployments), s.fallback)  # fmt: skip
                else:
                    await repo.upsert_worker(conn, status=s, sample_every=SAMPLE_EVERY, keep=KEEP)
            latencies.append(time.perf_counter() - started)

        async with db.connection() as conn:
            records0, bytes0 = await wal(conn)
            updated0, hot0 = await updates(conn)
        ticks0 = postgres_ticks(pg)
        began = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        for k in range(1, args.seconds + 1):
            for w in range(args.workers):  # spread over the second, as a fleet's heartbeats are
                due = began + (k - 1) + w / args.workers
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                task = asyncio.create_task(beat(w, k))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        ticks = postgres_ticks(pg) - ticks0
        async with db.connection() as conn:
            records1, bytes1 = await wal(conn)
            updated1, hot1 = await updates(conn)
            size = await conn.fetchval("SELECT pg_total_relation_size('workers')")
        beats = len(latencies)
        result: dict[str, Any] = {
            "variant": name,
            "heartbeats": beats,
            "wal_bytes": (bytes1 - bytes0) / beats,
            "wal_records": (records1 - records0) / beats,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": sorted(latencies)[int(0.99 * beats)] * 1000,
            "pg_cpu_ms": ticks / TICKS * 1000 / beats,
            "table_kib": size / 1024,
            "hot": (hot1 - hot0) / max(1, updated1 - updated0),
        }
        if counters:
            reads = []
            async with db.connection() as conn:
                for _ in range(20):
                    started = time.perf_counter()
                    windows = await repo.live_windows(
                        conn, live_within=dt.timedelta(seconds=30), window_s=60.0, deployment="text-embedding"
                    )
                    reads.append(time.perf_counter() - started)
            assert len(windows) == args.workers and all(w.baseline is not None for w in windows)
            result["read_ms"] = statistics.median(reads) * 1000
        return result
    finally:
        await db.close()


async def main(args: argparse.Namespace) -> None:
    global SAMPLE_EVERY
    SAMPLE_EVERY = dt.timedelta(seconds=args.sample_every)
    root = make_postgres_dir()
    pg = PostgresInstance(root / "data")
    try:
        results = [await run_variant(pg, name, args) for name in ("before", "no counters", "counters")]
    finally:
        pg.server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.workers} workers x 1 heartbeat/s for {args.seconds} s each; history every "
          f"{SAMPLE_EVERY.total_seconds():g} s, kept {KEEP.total_seconds():g} s\n")  # fmt: skip
    print(
        "| upsert | heartbeats | WAL bytes / hb | WAL records / hb | p50 ms | p99 ms | PostgreSQL CPU ms / hb | HOT updates | table + TOAST KiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['heartbeats']} | {r['wal_bytes']:.0f} | {r['wal_records']:.2f} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['pg_cpu_ms']:.3f} | {r['hot']:.0%} | {r['table_kib']:.0f} |")  # fmt: skip
    print(
        f"\nlive_windows (GetLiveMetrics' read) over {args.workers} workers: {results[-1]['read_ms']:.1f} ms (median of 20)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--sample-every", type=float, default=5.0, help="history spacing, seconds")
    asyncio.run(main(parser.parse_args()))
