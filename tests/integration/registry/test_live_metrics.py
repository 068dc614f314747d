"""GetLiveMetrics on a real registry and PostgreSQL, fed by heartbeats a test sends the way a worker
does (cumulative counters on the test's own monotonic clock): old traffic leaves the window, the
kept history stays bounded, bad counters and bad windows are refused, and only readers (and
admins) may read the figures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from live_support import FakeWorker, seed

from modelyard.api import registry_pb2 as pb
from modelyard.client import ModelyardError, RegistryClient
from modelyard.common.auth import token_verifier
from modelyard.common.latency import BUCKET_COUNT
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings

KEEP_S = 3.0
SAMPLE_EVERY_S = 0.2
BEAT_S = 0.05


@contextlib.asynccontextmanager
async def serving(database_url: str, **overrides: object) -> AsyncIterator[RegistryServer]:
    settings: dict[str, object] = {
        "live_window_s": KEEP_S,
        "live_sample_interval_s": SAMPLE_EVERY_S,
        **overrides,
    }
    server = RegistryServer(
        RegistrySettings(
            database_url=database_url,
            port=0,
            metrics_port=None,
            poll_interval_s=0.5,
            **settings,  # type: ignore[arg-type]
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def live(client: RegistryClient, window_s: float) -> pb.VersionLiveFigures:
    metrics = await client.get_live_metrics(pb.GetLiveMetricsRequest(deployment="text", window_s=window_s))
    [row] = metrics.versions
    return row


async def test_rates_follow_traffic_and_old_traffic_leaves_the_window(database_url: str) -> None:
    async with serving(database_url) as server, RegistryClient(server.address) as client:
        await seed(server.address)
        worker = FakeWorker(client)
        # About 200 requests/s for 1.5 s (a batch of 10 every 50 ms), plus 3 refused ones.
        for beat in range(30):
            worker.serve(10, invalid=1 if beat % 10 == 0 else 0)
            await worker.beat()
            await asyncio.sleep(BEAT_S)
        row = await live(client, window_s=1.0)
        figures = row.total
        assert (row.deployment, row.version, [w.worker_id for w in row.workers]) == ("text", "1.0.0", ["w1"])
        assert 0.6 <= figures.window_s <= 1.0, "the oldest snapshot inside the 1 s window, 0.2 s apart"
        served = figures.requests / figures.window_s
        assert figures.requests_per_s == pytest.approx(served)
        assert 50 < figures.requests_per_s < 400, figures
        assert 2.5 <= figures.p50_ms <= 5.0 and figures.samples >= 4

        whole = (await live(client, window_s=KEEP_S)).total
        assert whole.requests == 303 and whole.errors == {"INVALID_ARGUMENT": 3}
        assert whole.error_rate == pytest.approx(3 / 303)
        assert sum(whole.latency_buckets) == 300 and whole.items == 300

        # Traffic stops; the worker keeps heartbeating. Past the window nothing of it is left.
        deadline = time.monotonic() + KEEP_S + 1.0
        while time.monotonic() < deadline:
            await worker.beat()
            await asyncio.sleep(BEAT_S)
        after = (await live(client, window_s=KEEP_S)).total
        assert after.requests == 0 and after.requests_per_s == 0.0 and after.errors == {}
        assert after.window_s == pytest.approx(KEEP_S, abs=2 * SAMPLE_EVERY_S + 0.1)

        conn = await asyncpg.connect(database_url)
        try:
            kept = await conn.fetchval(
                "SELECT jsonb_array_length(live_history) FROM workers WHERE worker_id = 'w1'"
            )
        finally:
            await conn.close()
        assert kept <= KEEP_S / SAMPLE_EVERY_S + 2, f"{kept} snapshots kept for a {KEEP_S} s window"


async def test_bad_windows_and_bad_counters_are_refused(database_url: str) -> None:
    async with serving(database_url) as server, RegistryClient(server.address) as client:
        await seed(server.address)
        worker = FakeWorker(client)
        worker.serve(5)
        await worker.beat()
        for window_s, message in [(-1.0, "window_s is -1"), (KEEP_S + 1, "up to 3 s")]:
            with pytest.raises(ModelyardError) as refused:
                await client.get_live_metrics(pb.GetLiveMetricsRequest(deployment="text", window_s=window_s))
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in refused.value.message
        with pytest.raises(ModelyardError) as missing:
            await client.get_live_metrics(pb.GetLiveMetricsRequest(deployment="nope"))
        assert missing.value.code == grpc.StatusCode.NOT_FOUND

        for report, message in [
            (worker.report(buckets=[1, 2, 3]), "3 latency buckets, expected 14"),
            (worker.report(errors={"OOPS": 1}), "errors keyed by OOPS"),
            (worker.report(errors={"INTERNAL": -1}), "a counter is negative"),
        ]:
            with pytest.raises(ModelyardError) as refused:
                await client.report_status(report)
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert message in refused.value.message and "nothing was stored" in refused.value.message
        whole = (await live(client, window_s=KEEP_S)).total
        assert whole.requests == 5 and whole.errors == {}, "the refused reports changed nothing"

        everything = await client.get_live_metrics(pb.GetLiveMetricsRequest())
        assert [(v.deployment, v.version) for v in everything.versions] == [("text", "1.0.0")]
        assert everything.window_s == KEEP_S, "0 asks for the default (60 s), at most what is kept"
        assert len(everything.latency_bounds_s) == BUCKET_COUNT - 1


async def test_readers_and_admins_may_read_live_figures_others_may_not(database_url: str) -> None:
    tokens = {
        "admin_tokens": "ops:admin-secret",
        "reader_tokens": "dash:read-secret",
        "worker_tokens": f"w1:{token_verifier('worker-secret')}",
        "benchmark_tokens": f"bench:{token_verifier('bench-secret')}",
    }
    async with serving(database_url, **tokens) as server:
        await seed(server.address, token="admin-secret")
        async with RegistryClient(server.address, token="worker-secret") as worker_client:
            worker = FakeWorker(worker_client)
            worker.serve(7)
            await worker.beat()
        request = pb.GetLiveMetricsRequest(deployment="text", window_s=KEEP_S)
        for token in ("read-secret", "admin-secret"):
            async with RegistryClient(server.address, token=token) as reader:
                [row] = (await reader.get_live_metrics(request)).versions
                assert row.total.requests == 7
        for token, code in [
            ("", grpc.StatusCode.UNAUTHENTICATED),
            ("not-a-token", grpc.StatusCode.UNAUTHENTICATED),
            ("worker-secret", grpc.StatusCode.PERMISSION_DENIED),
            ("bench-secret", grpc.StatusCode.PERMISSION_DENIED),
        ]:
            async with RegistryClient(server.address, token=token) as other:
                with pytest.raises(ModelyardError) as refused:
                    await other.get_live_metrics(request)
                assert refused.value.code == code, token


async def modelyard(address: str, *args: str) -> tuple[int, str, str]:
    """The real CLI in its own process (the registry runs on this event loop, so never block it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from modelyard.cli.main import main; main()",
        "--registry",
        address,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_deployments_status_shows_each_versions_figures(database_url: str) -> None:
    async with serving(database_url, live_window_s=60.0) as server, RegistryClient(server.address) as client:
        await seed(server.address)
        worker = FakeWorker(client)
        for beat in range(10):
            worker.serve(20, invalid=1 if beat == 5 else 0)
            await worker.beat()
            await asyncio.sleep(BEAT_S)

        async def keep_beating() -> None:  # idle now, as a worker keeps reporting
            while True:
                await worker.beat()
                await asyncio.sleep(0.2)

        beating = asyncio.create_task(keep_beating())
        try:
            await _check_status_cli(server.address, await live(client, window_s=30))
        finally:
            beating.cancel()


async def _check_status_cli(address: str, row: pb.VersionLiveFigures) -> None:
    whole = row.total
    code, out, err = await modelyard(address, "deployments", "status", "text", "--window", "30")
    assert code == 0, err
    assert "live figures, last 30 s" in out
    [cells] = [line.split() for line in out.splitlines() if line.split()[:3] == ["1.0.0", "100", "all"]]
    assert cells[5] == f"{whole.error_rate:.1%}" and "INVALID_ARGUMENT" in cells[6]
    assert int(cells[-5]) == whole.requests == 201, cells
    assert cells[-2] == "-", "no drift summaries in these heartbeats"
    assert cells[-1] == "-", "no shadow copies in these heartbeats"

    code, out, err = await modelyard(address, "--json", "deployments", "status", "text")
    assert code == 0, err
    doc = json.loads(out)
    [version] = doc["live"]["versions"]
    assert version["version"] == "1.0.0" and int(version["total"]["requests"]) == 201
    assert version["total"]["errors"] == {"INVALID_ARGUMENT": "1"}
    assert [w["worker_id"] for w in version["workers"]] == ["w1"]

    code, out, err = await modelyard(address, "deployments", "status", "text", "--window", "99")
    assert code != 0 and "window_s is 99" in err and "Traceback" not in err
