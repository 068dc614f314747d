"""The runner and servicer against fake workers: streamed progress, recorded runs, failures recorded once."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.api import benchmark_pb2, registry_pb2
from modelyard.benchmark import converters
from modelyard.benchmark.runner import (
    BenchmarkRunner,
    ProgressEvent,
    RunSpec,
    WorkerClient,
    WorkerInfo,
    choose_worker,
)
from modelyard.benchmark.servicer import BenchmarkServicer
from modelyard.benchmark.store import InMemoryRunStore
from modelyard.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from modelyard.common.modelspec import RequestParameter

from .conftest import WriteDataset


def bag_of_words(texts: Sequence[str], dim: int) -> np.ndarray:
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", text.lower()):
            out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
    return out


class FakeWorker:
    """Serves text-embedding versions in memory: "good" hashes words into 256 buckets, "poor" into 2."""

    def __init__(self, *, loaded: Sequence[str] = ("good", "poor"), fail_after: int | None = None) -> None:
        self.loaded = set(loaded)
        self.dims = {"good": 256, "poor": 2, "staged": 64}
        self.fail_after = fail_after
        self.calls = 0
        self.closed = False

    async def model_ready(self, version: str) -> bool:
        return version in self.loaded

    async def signature(self, version: str) -> tuple[list[str], list[str]]:
        return ["text"], ["embedding"]

    async def request_parameters(self, version: str) -> tuple[RequestParameter, ...]:
        return ()

    async def embed_texts(self, version: str, texts: Sequence[str], *, prompt_name: str = "") -> np.ndarray:
        assert not prompt_name  # these versions define no prompts
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise Unavailable("worker 127.0.0.1:1 unreachable during ModelInfer: connection refused")
        await asyncio.sleep(0)
        return bag_of_words(texts, self.dims[version])

    async def embed_images(self, version: str, images: Sequence[bytes]) -> np.ndarray:
        raise AssertionError("not an image model")

    async def caption(self, version: str, images: Sequence[bytes]) -> list[str]:
        raise AssertionError("not a captioning model")

    async def close(self) -> None:
        self.closed = True


class FakeStager:
    def __init__(self, worker: FakeWorker) -> None:
        self.worker = worker
        self.calls: list[str] = []

    async def stage(self, deployment: str, version: str, *, reason: str = "") -> None:
        self.calls.append(f"stage {version}")
        self.worker.loaded.add(version)

    async def unstage(self, deployment: str, version: str) -> None:
        self.calls.append(f"unstage {version}")
        self.worker.loaded.discard(version)


def _runner(worker: FakeWorker, stager: FakeStager | None = None) -> tuple[BenchmarkRunner, InMemoryRunStore]:
    store = InMemoryRunStore()

    def connect(address: str, deployment: str) -> WorkerClient:
        return worker

    return BenchmarkRunner(store, connect, stager=stager, call_named_workers=True), store


def _spec(suite: str, *versions: str, **extra: Any) -> RunSpec:
    return RunSpec(
        worker="127.0.0.1:1",
        deployment="text-embedding",
        model_id="bow",
        versions=versions,
        suite=suite,
        **extra,
    )


async def _collect(runner: BenchmarkRunner, spec: RunSpec) -> list[ProgressEvent]:
    return [event async for event in runner.run(spec)]


async def test_quality_run_streams_progress_and_records_each_version(write_beir: WriteDataset) -> None:
    worker = FakeWorker()
    runner, store = _runner(worker)
    events = await _collect(
        runner, _spec(f"beir:{write_beir()}", "good", "poor", options={"batch_size": "2"})
    )
    finals = [e for e in events if e.run is not None]
    assert [e.version for e in finals] == ["good", "poor"]
    for final in finals:
        assert final.phase == "succeeded" and final.fraction == 1.0
        assert final.run is not None
        stored = await store.get(final.run.run_id)
        assert stored.status == "succeeded"
        assert len(stored.metric("recall@10").samples) == 3
        # Every worker call of the suite is timed: 4 documents + 3 queries in batches of 2.
        assert len(stored.metric("latency_ms").samples) == 2 + 2
        assert stored.metric("latency_p50_ms").unit == "ms"
        assert stored.conditions["host.cpu_cores"].isdigit() and stored.conditions["host.cpu_model"]
        assert stored.conditions["worker"] == "127.0.0.1:1"
        assert "software.python" in stored.conditions
    good_events = [e for e in events if e.version == "good"]
    assert good_events[0].phase == "starting"
    fractions = [e.fraction for e in good_events if e.phase == "quality"]
    assert fractions == sorted(fractions) and len(fractions) >= 3
    assert worker.closed
    good, poor = [await store.get(f.run.run_id) for f in finals if f.run]
    assert good.metric("mrr@10").value > poor.metric("mrr@10").value


async def test_worker_killed_mid_run_records_a_failed_run_with_the_reason_and_no_metrics(
    write_beir: WriteDataset,
) -> None:
    runner, store = _runner(FakeWorker(fail_after=1))
    events = await _collect(runner, _spec(f"beir:{write_beir()}", "good", batch_size=2))
    final = events[-1]
    assert final.phase == "failed"
    assert final.run is not None
    stored = await store.get(final.run.run_id)
    assert stored.status == "failed"
    assert "unreachable" in stored.error
    assert stored.metrics == ()


async def test_unloaded_version_fails_unless_staged_and_staging_is_undone(write_beir: WriteDataset) -> None:
    worker = FakeWorker()
    dataset = write_beir()
    runner, _ = _runner(worker)
    events = await _collect(runner, _spec(f"beir:{dataset}", "staged"))
    assert events[-1].run is not None and "not loaded" in events[-1].run.error

    stager = FakeStager(worker)
    runner, _ = _runner(worker, stager)
    events = await _collect(runner, _spec(f"beir:{dataset}", "staged", stage_unrouted=True))
    assert "staging" in [e.phase for e in events]
    assert events[-1].phase == "succeeded"
    assert stager.calls == ["stage staged", "unstage staged"]
    assert "staged" not in worker.loaded


async def test_load_run_measures_every_level(write_beir: WriteDataset) -> None:
    request = benchmark_pb2.RunBenchmarkRequest(
        worker="127.0.0.1:1",
        deployment="text-embedding",
        model_id="bow",
        versions=["good"],
        suite="load",
        load=benchmark_pb2.LoadSettings(concurrency=[1, 3], requests=12, warmup_requests=2, batch_size=4),
    )
    runner, _ = _runner(FakeWorker())
    events = await _collect(runner, converters.spec_from_pb(request))
    run = events[-1].run
    assert run is not None and run.status == "succeeded"
    assert len(run.metric("latency_ms[c=3]").samples) == 12
    assert run.metric("error_rate[c=1]").value == 0.0
    assert run.conditions["concurrency"] == "1,3"
    assert run.conditions["input"] == "text"


@pytest.mark.parametrize("levels", [[0], [-2], [2, 0]])
def test_load_request_with_bad_concurrency_is_refused_before_running(levels: list[int]) -> None:
    request = benchmark_pb2.RunBenchmarkRequest(
        suite="load", versions=["good"], load=benchmark_pb2.LoadSettings(concurrency=levels, requests=5)
    )
    with pytest.raises(InvalidArgument, match="concurrency must be > 0"):
        converters.spec_from_pb(request)


async def test_unknown_suite_is_refused_before_any_progress() -> None:
    runner, store = _runner(FakeWorker())
    stream = runner.run(_spec("no-such-suite", "good"))
    with pytest.raises(NotFound, match="unknown suite"):
        await anext(stream)
    assert (await store.list())[0] == []


async def test_servicer_compares_stored_runs_and_exports(write_beir: WriteDataset) -> None:
    runner, store = _runner(FakeWorker())
    servicer = BenchmarkServicer(runner, store)
    request = benchmark_pb2.RunBenchmarkRequest(
        worker="127.0.0.1:1",
        deployment="text-embedding",
        model_id="bow",
        versions=["poor", "good"],
        suite=f"beir:{write_beir()}",
    )
    finals = [p async for p in servicer.RunBenchmark(request, None) if p.HasField("run")]  # type: ignore[arg-type]
    assert [p.run.status for p in finals] == [registry_pb2.RUN_STATUS_SUCCEEDED] * 2
    baseline, candidate = (p.run.run_id for p in finals)
    reply = await servicer.Compare(
        benchmark_pb2.CompareRequest(
            baseline_run_id=baseline, candidate_run_id=candidate, resamples=200, export_format="markdown"
        ),
        None,  # type: ignore[arg-type]
    )
    by_name = {m.metric: m for m in reply.metrics}
    assert set(by_name) >= {"recall@10", "mrr@10", "ndcg@10", "latency_ms", "latency_p95_ms"}
    # Quality scores pair up per query; request latencies are resampled per run.
    assert all(by_name[n].has_interval and by_name[n].paired for n in ("recall@10", "mrr@10", "ndcg@10"))
    assert by_name["latency_p95_ms"].has_interval and not by_name["latency_p95_ms"].paired
    assert "| metric | baseline | candidate |" in reply.export

    listed = await servicer.ListRuns(benchmark_pb2.ListRunsRequest(model_id="bow", page_size=1), None)  # type: ignore[arg-type]
    assert len(listed.runs) == 1 and listed.next_page_token
    assert not listed.runs[0].metrics[0].samples  # listings leave samples out
    fetched = await servicer.GetRun(benchmark_pb2.GetRunRequest(run_id=candidate), None)  # type: ignore[arg-type]
    assert converters.run_from_pb(fetched) == await store.get(candidate)
    with pytest.raises(NotFound):
        await servicer.GetRun(benchmark_pb2.GetRunRequest(run_id="missing"), None)  # type: ignore[arg-type]
    suites = await servicer.ListSuites(benchmark_pb2.ListSuitesRequest(), None)  # type: ignore[arg-type]
    assert "stdlib-docstrings" in [s.name for s in suites.suites]


async def test_compare_refuses_a_failed_run(write_beir: WriteDataset, tmp_path: Path) -> None:
    runner, store = _runner(FakeWorker(fail_after=0))
    servicer = BenchmarkServicer(runner, store)
    events = await _collect(runner, _spec(f"beir:{write_beir()}", "good", "poor"))
    ids = [e.run.run_id for e in events if e.run is not None]
    with pytest.raises(FailedPrecondition, match="failed"):
        await servicer.Compare(
            benchmark_pb2.CompareRequest(baseline_run_id=ids[0], candidate_run_id=ids[1]),
            None,  # type: ignore[arg-type]
        )


def test_choose_worker_prefers_the_one_serving_the_versions_then_the_id() -> None:
    workers = [
        WorkerInfo("b", "127.0.0.1:2", frozenset({"good"})),
        WorkerInfo("a", "127.0.0.1:1", frozenset()),
        WorkerInfo("c", "", frozenset({"good", "poor"})),  # no address: cannot be called
    ]
    assert choose_worker(workers, ["good", "poor"]) == workers[0]
    assert choose_worker(workers, ["other"]) == workers[1]
    assert choose_worker(workers[2:], ["good"]) is None


async def test_without_worker_or_registry_the_run_is_refused() -> None:
    runner, store = _runner(FakeWorker())
    with pytest.raises(InvalidArgument, match="no registry"):
        await anext(runner.run(dataclasses.replace(_spec("stdlib-docstrings", "good"), worker="")))
    assert (await store.list())[0] == []


class FixedDirectory:
    """The registry's view: one live worker of the deployment."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def workers(self, deployment: str) -> list[WorkerInfo]:
        return [WorkerInfo("w1", self.address, frozenset({"good"}))]

    async def version_conditions(self, model_id: str, version: str) -> dict[str, str]:
        return {}


async def test_a_named_worker_the_registry_does_not_list_is_never_called() -> None:
    """The service sends its token to the worker: it must not go to an address a caller chose."""
    worker = FakeWorker()
    dialled: list[str] = []

    def connect(address: str, deployment: str) -> WorkerClient:
        dialled.append(address)
        return worker

    runner = BenchmarkRunner(InMemoryRunStore(), connect, directory=FixedDirectory("10.0.0.7:8001"))
    with pytest.raises(PermissionDenied, match=r"not one the registry lists .* \(10.0.0.7:8001\)"):
        await anext(
            runner.run(dataclasses.replace(_spec("stdlib-docstrings", "good"), worker="evil.example:443"))
        )
    assert dialled == []
    events = [
        e
        async for e in runner.run(
            dataclasses.replace(_spec("stdlib-docstrings", "good"), worker="10.0.0.7:8001")
        )
    ]
    assert dialled == ["10.0.0.7:8001"] and events[-1].run is not None


async def test_without_a_registry_a_service_holding_credentials_calls_no_named_worker() -> None:
    runner = BenchmarkRunner(InMemoryRunStore(), lambda address, deployment: FakeWorker())
    with pytest.raises(FailedPrecondition, match="holds credentials"):
        await anext(runner.run(_spec("stdlib-docstrings", "good")))
