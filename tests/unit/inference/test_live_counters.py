"""The worker's cumulative counters: what the data plane records per version, what a heartbeat
snapshot carries, and that memory stays bounded by the versions the worker holds."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from worker_support import artifact_cache, deployment_spec, version_spec

from modelyard.common.latency import BUCKET_COUNT, bucket_index
from modelyard.inference.dataplane import DataPlane
from modelyard.inference.deployments import DeploymentApplier
from modelyard.inference.domain import InferenceRequest, InputTensor
from modelyard.inference.errors import BadInput
from modelyard.inference.live_counters import LiveCounters
from modelyard.inference.routing import RoutingTable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_series_count_requests_items_errors_and_latency_buckets() -> None:
    clock = Clock()
    counters = LiveCounters(clock=clock, wall_ns=lambda: 42)
    clock.now = 103.0
    s = counters.series("text", "1.0.0")
    s.succeeded(0.004, 3)
    s.succeeded(0.004, 1)
    s.failed("INVALID_ARGUMENT")
    snap = counters.snapshot({("text", "1.0.0")})
    assert snap.started_at_ns == 42 and snap.uptime_s == pytest.approx(3.0)
    [taken] = snap.series
    assert (taken.since_s, taken.requests, taken.items) == (pytest.approx(3.0), 3, 4)
    assert taken.errors == {"INVALID_ARGUMENT": 1}
    assert len(taken.buckets) == BUCKET_COUNT and taken.buckets[bucket_index(0.004)] == 2
    assert taken.latency_sum_s == pytest.approx(0.008)


def test_a_version_that_left_is_reported_once_more_then_dropped_and_starts_afresh() -> None:
    clock = Clock()
    counters = LiveCounters(clock=clock)
    counters.series("text", "1.0.0").succeeded(0.01, 1)
    counters.series("text", "2.0.0").succeeded(0.01, 1)
    # 1.0.0 was unloaded: this heartbeat still carries its last counts, the next one not.
    assert [s.version for s in counters.snapshot({("text", "2.0.0")}).series] == ["1.0.0", "2.0.0"]
    assert [s.version for s in counters.snapshot({("text", "2.0.0")}).series] == ["2.0.0"]
    clock.now += 50
    counters.series("text", "1.0.0").succeeded(0.01, 1)
    again = next(s for s in counters.snapshot({("text", "1.0.0")}).series if s.version == "1.0.0")
    assert again.requests == 1 and again.since_s == pytest.approx(50.0), "a new series, from zero"


def test_a_serving_version_without_traffic_is_reported_with_zero_counts() -> None:
    counters = LiveCounters()
    [s] = counters.snapshot({("text", "1.0.0")}, serving={("text", "1.0.0")}).series
    assert s.requests == 0 and sum(s.buckets) == 0


async def test_the_data_plane_counts_what_each_version_served(tmp_path: Path, tiny_st: Path) -> None:
    infer, load = ThreadPoolExecutor(2), ThreadPoolExecutor(1)
    applier = DeploymentApplier(table := RoutingTable(), artifact_cache(tmp_path / "cache"), load)
    try:
        applier.submit(deployment_spec("tiny", {"1.0.0": 100}, [version_spec(tiny_st, "1.0.0")]))
        await asyncio.wait_for(applier.settled("tiny"), 60)
        plane = DataPlane(table, infer)

        def request(texts: list[bytes], datatype: str = "BYTES") -> InferenceRequest:
            return InferenceRequest(
                deployment="tiny",
                version="",
                id="r",
                inputs=[InputTensor("text", datatype, [len(texts)], texts)],
            )

        for _ in range(3):
            await plane.infer(request([b"one", b"two"]))
        with pytest.raises(BadInput):
            await plane.infer(request([b"x"], datatype="FP32"))
        [s] = plane.counters.snapshot({("tiny", "1.0.0")}).series
        assert (s.deployment, s.version, s.requests, s.items) == ("tiny", "1.0.0", 4, 6)
        assert s.errors == {"INVALID_ARGUMENT": 1}
        assert sum(s.buckets) == 3, "latency is counted for the successes only"
    finally:
        await applier.close()
        infer.shutdown()
        load.shutdown()
