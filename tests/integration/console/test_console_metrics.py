"""The catalog cards' newest benchmark metrics and the Compare page's history chart, against a real
registry holding runs recorded through RecordBenchmarkRun with known values. The console app is
called over ASGI in the test's event loop (the registry serves on that loop too); no browser."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest
from grpc import aio
from registry_support import Stub, register

from modelyard.api import registry_pb2 as pb
from modelyard.api import registry_pb2_grpc
from modelyard.client import RegistryClient
from modelyard.client.channel import open_channel
from modelyard.console.app import create_app
from modelyard.console.settings import ConsoleSettings
from modelyard.registry.server import RegistryServer

START = dt.datetime(2024, 5, 1, 9, 0, tzinfo=dt.UTC)


async def asgi_get(app: Any, target: str) -> tuple[int, str]:
    """GET `target` (path and query); (status, body)."""
    path, _, query = target.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "headers": [(b"host", b"console.test")], "client": ("127.0.0.1", 5000), "server": ("console.test", 80),
    }  # fmt: skip
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await asyncio.wait_for(app(scope, receive, send), 30)
    return status, b"".join(chunks).decode()


def attributes(tag: str) -> dict[str, str]:
    return {k: html.unescape(v) for k, v in re.findall(r'data-([\w-]+)="([^"]*)"', tag)}


def card_metrics(page: str, version: str) -> list[dict[str, str]]:
    card = re.search(
        rf'<article class="card" data-model="minilm" data-version="{re.escape(version)}">(.*?)</article>',
        page,
        re.S,
    )
    assert card, f"no card of {version}"
    return [attributes(tag) for tag in re.findall(r'<div class="newest-metric"[^>]*>', card.group(1))]


def plotted(page: str) -> list[dict[str, str]]:
    return [attributes(tag) for tag in re.findall(r"<circle [^>]*>", page)]


def run(run_id: str, version: str, suite: str, minutes: int, metrics: dict[str, tuple[float, str]], *,
        status: pb.RunStatus.ValueType = pb.RUN_STATUS_SUCCEEDED) -> pb.BenchmarkRun:  # fmt: skip
    started = pb.BenchmarkRun().started_at
    started.FromDatetime(START + dt.timedelta(minutes=minutes))
    return pb.BenchmarkRun(
        run_id=run_id,
        suite=suite,
        model_id="minilm",
        version=version,
        status=status,
        started_at=started,
        metrics=[pb.Metric(name=n, value=v, unit=u) for n, (v, u) in metrics.items()],
    )


@pytest.fixture
async def stored(registry: RegistryServer) -> AsyncIterator[RegistryClient]:
    """minilm 1.0.0, 1.1.0 and 1.2.0 (never benchmarked); runs with known values, oldest first."""
    async with open_channel(registry.address) as channel:
        for version in ("1.0.0", "1.1.0", "1.2.0"):
            await register(Stub(channel), version)
    runs = [
        run("q-100", "1.0.0", "scifact", 0, {"recall@10": (0.5, "ratio"), "ndcg@10": (0.4, "ratio"),
            "mrr@10": (0.3, "ratio"), "latency_p50_ms": (12.5, "ms")}),
        run("load-100", "1.0.0", "load", 5, {"latency_p50_ms[c=1]": (3.0, "ms"), "latency_p50_ms[c=4]": (5.0, "ms"),
            "throughput_rps[c=1]": (100.0, "requests/s"), "throughput_rps[c=4]": (350.5, "requests/s"),
            "error_rate[c=4]": (0.0, "")}),
        run("q-110a", "1.1.0", "scifact", 10, {"recall@10": (0.625, "ratio"), "ndcg@10": (0.5, "ratio")}),
        run("q-110b", "1.1.0", "scifact", 20, {"recall@10": (0.75, "ratio"), "ndcg@10": (0.55, "ratio")}),
        run("q-110-failed", "1.1.0", "scifact", 30, {"recall@10": (0.99, "ratio")}, status=pb.RUN_STATUS_FAILED),
        run("nq-110", "1.1.0", "nq", 40, {"recall@10": (0.25, "ratio")}),
    ]  # fmt: skip
    async with RegistryClient(registry.address) as client:
        for r in runs:
            await client.record_benchmark_run(pb.RecordBenchmarkRunRequest(run=r))
        yield client


def console(registry: RegistryServer) -> Any:
    return create_app(ConsoleSettings(registry=registry.address, benchmark="127.0.0.1:1"))


async def test_cards_show_the_newest_headline_metrics_as_stored(
    registry: RegistryServer, stored: RegistryClient
) -> None:
    app = console(registry)
    status, page = await asgi_get(app, "/catalog?model=minilm")
    assert status == 200
    shown = {v: card_metrics(page, v) for v in ("1.0.0", "1.1.0", "1.2.0")}
    # Quality first (recall@10, ndcg@10), then the peak throughput, then p50 at the lowest level.
    assert [m["metric"] for m in shown["1.0.0"]] == [
        "recall@10",
        "ndcg@10",
        "throughput_rps[c=4]",
        "latency_p50_ms",
    ]
    assert [m["metric"] for m in shown["1.1.0"]] == ["recall@10", "ndcg@10"]
    assert shown["1.2.0"] == [], "a version never benchmarked shows no metrics"
    for version in ("1.0.0", "1.1.0"):
        newest = await stored.get_version_metrics(
            pb.GetVersionMetricsRequest(model_id="minilm", version=version)
        )
        by_name = {m.name: m for m in newest.metrics}
        for m in shown[version]:
            expected = by_name[m["metric"]]
            assert float(m["value"]) == expected.value, m
            assert (m["suite"], m["run-id"], m["unit"]) == (expected.suite, expected.run_id, expected.unit)
    # The newest succeeded run wins: not the older 0.625, not the failed 0.99, and nq's is newer still.
    recall_110 = shown["1.1.0"][0]
    assert (float(recall_110["value"]), recall_110["run-id"], recall_110["suite"]) == (0.25, "nq-110", "nq")
    assert float(shown["1.0.0"][2]["value"]) == 350.5 and shown["1.0.0"][2]["run-id"] == "load-100"
    link = "/compare/history?" + urlencode(
        {"model": "minilm", "metric": "recall@10", "suite": "nq", "version": "1.1.0"}
    )
    assert f'href="{html.escape(link)}"' in page, "each metric links to its history"
    await app.state.console.backends.close()


async def test_the_history_plots_every_stored_run_in_order(
    registry: RegistryServer, stored: RegistryClient
) -> None:
    app = console(registry)
    status, page = await asgi_get(app, "/compare/history?model=minilm&metric=recall%4010")
    assert status == 200
    listed = await stored.list_benchmark_runs(
        pb.ListBenchmarkRunsRequest(model_id="minilm", status=pb.RUN_STATUS_SUCCEEDED)
    )
    expected = [
        (r.run_id, r.version, r.suite, m.value)
        for r in reversed(listed.runs)
        for m in r.metrics
        if m.name == "recall@10"
    ]
    points = [(p["run-id"], p["version"], p["series"], float(p["value"])) for p in plotted(page)]
    assert points == expected == [
        ("q-100", "1.0.0", "scifact", 0.5), ("q-110a", "1.1.0", "scifact", 0.625),
        ("q-110b", "1.1.0", "scifact", 0.75), ("nq-110", "1.1.0", "nq", 0.25),
    ]  # fmt: skip
    assert [p["at"] for p in plotted(page)][-1] == "2024-05-01 09:40:00 UTC"
    assert plotted(page)[0]["at"] == "2024-05-01 09:00:00 UTC"
    # The picker lists the metrics those runs have; one line per suite.
    options = re.search(r'<select id="history-metric".*?</select>', page, re.S)
    assert options and re.findall(r'<option value="([^"]+)"', options.group(0)) == sorted(
        {"recall@10", "ndcg@10", "mrr@10", "latency_p50_ms", "latency_p50_ms[c=1]", "latency_p50_ms[c=4]",
         "throughput_rps[c=1]", "throughput_rps[c=4]", "error_rate[c=4]"}
    )  # fmt: skip
    assert re.findall(r'<polyline [^>]*data-series="([^"]+)"', page) == ["scifact", "nq"]
    # Each point after the first of its suite links to Compare against the previous one.
    assert 'href="/compare?baseline=q-110a&amp;candidate=q-110b"' in page

    _, one_suite = await asgi_get(app, "/compare/history?model=minilm&metric=recall%4010&suite=nq")
    assert [p["run-id"] for p in plotted(one_suite)] == ["nq-110"]
    _, default = await asgi_get(app, "/compare/history?model=minilm")
    assert 'data-metric="recall@10"' in default, "without a metric: the first headline one"
    status, missing = await asgi_get(app, "/compare/history?model=minilm&metric=bleu")
    assert status == 404 and "no stored succeeded run of minilm has metric &#39;bleu&#39;" in missing
    status, unknown = await asgi_get(app, "/compare/history?model=nomodel")
    assert status == 404 and "unknown model &#39;nomodel&#39;" in unknown
    await app.state.console.backends.close()


async def test_the_history_pages_through_runs_and_keeps_the_newest_200(registry: RegistryServer) -> None:
    async with open_channel(registry.address) as channel:
        await register(Stub(channel), "1.0.0")
    async with RegistryClient(registry.address) as client:
        # 250 runs; every tenth a load run without recall@10, so 225 carry it over two pages.
        recorded = []
        for i in range(250):
            metrics = (
                {"throughput_rps[c=1]": (float(i), "requests/s")}
                if i % 10 == 9
                else {"recall@10": (i / 1000, "")}
            )
            r = run(f"r-{i:03d}", "1.0.0", "load" if i % 10 == 9 else "scifact", i, metrics)
            await client.record_benchmark_run(pb.RecordBenchmarkRunRequest(run=r))
            if "recall@10" in metrics:
                recorded.append((r.run_id, i / 1000))
    app = console(registry)
    _, page = await asgi_get(app, "/compare/history?model=minilm&metric=recall%4010")
    assert [(p["run-id"], float(p["value"])) for p in plotted(page)] == recorded[-200:]
    assert 'data-points="200"' in page
    await app.state.console.backends.close()


class _OldRegistry(registry_pb2_grpc.RegistryServiceServicer):
    """A registry from before GetVersionMetrics: lists models and versions (from the real one); every
    other RPC answers UNIMPLEMENTED, as the generated base does."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    async def ListModels(
        self, request: pb.ListModelsRequest, context: aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return await self.client.list_models(request)

    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: aio.ServicerContext
    ) -> pb.ListVersionsResponse:
        return await self.client.list_versions(request)


async def test_a_registry_without_version_metrics_shows_cards_without_them(
    registry: RegistryServer, stored: RegistryClient
) -> None:
    server = aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(_OldRegistry(stored), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        app = create_app(ConsoleSettings(registry=f"127.0.0.1:{port}", benchmark="127.0.0.1:1"))
        status, page = await asgi_get(app, "/catalog?model=minilm")
        assert status == 200 and 'id="banner" class="banner" role="alert" hidden' in page
        assert re.findall(r'data-version="([^"]+)"', page) and card_metrics(page, "1.0.0") == []
        assert 'class="newest-metric"' not in page
        await app.state.console.backends.close()
    finally:
        await server.stop(None)
