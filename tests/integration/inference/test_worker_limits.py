"""Bounded cost per request, on a real worker process (MiniLM text, tiny CLIP) with its default
limits: an oversized message, an oversized text element, a decompression bomb, eight bombs in one
request and a flood from many clients each get their status quickly; the worker's RSS stays within
20% of its steady value; a well-behaved client keeps, during the flood, its p99 within 2x of its
p99 under a steady load of well-behaved clients (its p99 alone is printed too).

Run with `-s` to see the figures."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from limits_support import LoadProcess, RssSampler, cached_png_bomb, rss_mib
from support import ServerProcess
from worker_support import registry_version, text_request, wait_model_ready

from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb

pytestmark = pytest.mark.slow

MAX_BATCH = 32  # so the auto admission limit is 8 x 32 = 256 items
RSS_SLACK = 1.2
P99_SLACK = 2.0
GOOD_REQUESTS = 400
# Refused flood clients retry after 25 ms, doubling on each refusal (up to 16x): what a refusal
# asks for ("retry with backoff"); Envoy's default retry back-off starts there too.
FLOOD_BACKOFF_S = 0.025


@dataclass
class Steady:
    """The worker serving the well-behaved client alone."""

    rss_mib: float
    p99_s: float
    figures: dict[str, str]


@dataclass
class Limited:
    worker: ServerProcess
    stub: oip_grpc.GRPCInferenceServiceStub
    steady: Steady
    bombs: Path


def _good_latencies(stub: oip_grpc.GRPCInferenceServiceStub, count: int) -> list[float]:
    """A well-behaved client: one short sentence at a time, each sent when the last was answered."""
    request = text_request("text", ["the quick brown fox"])
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        stub.ModelInfer(request, timeout=10)
        latencies.append(time.perf_counter() - started)
    return latencies


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path], minilm_dir: Path
) -> Iterator[Limited]:
    root = tmp_path_factory.mktemp("limits")
    text = registry_version(minilm_dir, "1", model_id="minilm", max_batch_size=MAX_BATCH, dim=384)
    clip = registry_version(tiny_models["clip"], "1", model_id="tiny-clip", loader="open-clip", dim=16)
    deployments = [
        rpb.Deployment(name=name, model_id=version.model_id, routes=[rpb.Route(version="1", weight=100)],
                       versions=[version], revision=1)
        for name, version in (("text", text), ("clip", clip))
    ]  # fmt: skip
    static = root / "static.json"
    static.write_text(json.dumps([json_format.MessageToDict(d) for d in deployments]))
    worker = ServerProcess(
        ["-m", "modelyard.inference", "--port", "0", "--metrics-port", "0", "--cache-dir", str(root / "cache"),
         "--static-deployments", str(static), "--grace-period-s", "2"],
        timeout=120,
    )  # fmt: skip
    # The client may send what the worker refuses: the worker's own limit is under test.
    channel = grpc.insecure_channel(
        worker.address,
        options=[("grpc.max_send_message_length", 256 << 20), ("grpc.use_local_subchannel_pool", 1)],
    )
    figures: dict[str, str] = {}
    try:
        wait_model_ready(worker.address, "text")
        wait_model_ready(worker.address, "clip")
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        _good_latencies(stub, 200)  # warm: first passes, allocator, gRPC buffers
        with RssSampler(worker.proc.pid) as sampler:
            latencies = _good_latencies(stub, GOOD_REQUESTS)
        steady = Steady(rss_mib=sampler.peak, p99_s=_p99(latencies), figures=figures)
        figures["steady"] = (
            f"RSS {steady.rss_mib:.0f} MiB, good client alone p50 {statistics.median(latencies) * 1e3:.2f} ms "
            f"p99 {steady.p99_s * 1e3:.2f} ms"
        )
        yield Limited(worker, stub, steady, root)
    finally:
        channel.close()
        worker.kill()
        print("\nsection 4 figures (MiniLM text + tiny CLIP, default limits):")
        for name, line in figures.items():
            print(f"  {name}: {line}")


def _attack(
    limited: Limited, name: str, request: oip.ModelInferRequest
) -> tuple[grpc.RpcError, float, float]:
    """Send one request expected to fail; its error, seconds to it, and the worker's peak RSS."""
    with RssSampler(limited.worker.proc.pid) as sampler:
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as caught:
            limited.stub.ModelInfer(request, timeout=60)
        seconds = time.perf_counter() - started
        time.sleep(0.3)  # RSS after the answer counts too
    error = caught.value
    limited.steady.figures[name] = (
        f"{error.code().name} in {seconds * 1e3:.1f} ms, RSS peak {sampler.peak:.0f} MiB "
        f"({sampler.peak / limited.steady.rss_mib:.2f}x steady): {(error.details() or '')[:120]}"
    )
    return error, seconds, sampler.peak


def _image_request(images: list[bytes]) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="clip")
    request.inputs.add(name="image", datatype="BYTES", shape=[len(images)]).contents.bytes_contents.extend(
        images
    )
    return request


def test_a_48_mib_message_is_refused_by_grpc_before_it_is_parsed(limited: Limited) -> None:
    request = text_request("text", ["a " * (24 << 20)])  # one 48 MiB text element
    serialize_s = min(_timed(request.SerializeToString) for _ in range(3))
    error, seconds, peak = _attack(limited, "48 MiB text element", request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    # Refused as the message arrives: no slower than a few local copies of it (before: 126 s).
    assert seconds < 20 * serialize_s + 0.2, (seconds, serialize_s)
    assert peak <= RSS_SLACK * limited.steady.rss_mib


def test_an_oversized_text_element_is_refused_by_size_naming_it(limited: Limited) -> None:
    request = text_request("text", ["fine", "word " * 200_000])  # 1 MB, within the message budget
    error, seconds, peak = _attack(limited, "1 MB text element", request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "element 1 is 1000000 bytes" in (error.details() or "") and "256 tokens" in (error.details() or "")
    assert seconds < 10 * limited.steady.p99_s + 0.05, seconds
    assert peak <= RSS_SLACK * limited.steady.rss_mib


@pytest.mark.parametrize("count", [1, 8])
def test_decompression_bombs_are_refused_from_their_headers(limited: Limited, count: int) -> None:
    bomb = cached_png_bomb(limited.bombs)  # 137 KiB, 12000x12000: 432 MB as RGB
    error, seconds, peak = _attack(
        limited, f"{count} bomb(s) of 137 KiB in one request", _image_request([bomb] * count)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "element 0 is a 12000x12000 image" in (error.details() or "")
    # Header reads only: about the cost of one small request (before: 1.7 s, 17 s for eight).
    assert seconds < 10 * limited.steady.p99_s + 0.05, seconds
    assert peak <= RSS_SLACK * limited.steady.rss_mib


def _good_for(stub: oip_grpc.GRPCInferenceServiceStub, seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        latencies += _good_latencies(stub, 10)
    return latencies


def test_a_flood_is_refused_quickly_and_a_well_behaved_client_keeps_its_p99(limited: Limited) -> None:
    """Steady: well-behaved clients keep the worker busy within its limit (7 x 16 = 112 of 256 items).
    Flood: 32 clients want 512 items in flight; refused ones retry with backoff, as told. Windows
    alternate, so drift on a shared machine hits both; the good client runs throughout."""
    steady_clients, flood_clients, items, window_s, rounds = 7, 32, 16, 2.0, 6
    load = LoadProcess(limited.worker.address, flood_clients, items, "text")
    samples: dict[str, list[float]] = {"steady": [], "flood": []}
    answers: dict[str, list[dict[str, dict[str, float]]]] = {"steady": [], "flood": []}
    try:
        with RssSampler(limited.worker.proc.pid) as sampler:
            for _ in range(rounds):
                for phase, clients in (("steady", steady_clients), ("flood", flood_clients)):
                    load.start(clients, window_s + 0.5, backoff_s=FLOOD_BACKOFF_S)
                    time.sleep(0.25)  # the load reaches its level
                    samples[phase] += _good_for(limited.stub, window_s)
                    answers[phase].append(load.result())
    finally:
        load.close()

    def total(phase: str, code: str, key: str = "count") -> float:
        values = [window[code][key] for window in answers[phase] if code in window]
        return sum(values) if key == "count" else max(values, default=0.0)

    refusals = [
        window["RESOURCE_EXHAUSTED"]["median_s"]
        for window in answers["flood"]
        if "RESOURCE_EXHAUSTED" in window
    ]
    steady_p99, flood_p99 = _p99(samples["steady"]), _p99(samples["flood"])
    limited.steady.figures["flood"] = (
        f"steady load {steady_clients} x {items} items: {total('steady', 'OK'):.0f} served; flood {flood_clients} x "
        f"{items} items: {total('flood', 'OK'):.0f} served, {total('flood', 'RESOURCE_EXHAUSTED'):.0f} "
        f"RESOURCE_EXHAUSTED (median {statistics.median(refusals or [0]) * 1e3:.1f} ms, slowest "
        f"{total('flood', 'RESOURCE_EXHAUSTED', 'max_s') * 1e3:.0f} ms); RSS peak {sampler.peak:.0f} MiB "
        f"({sampler.peak / limited.steady.rss_mib:.2f}x); good client p99 {flood_p99 * 1e3:.1f} ms during the "
        f"flood vs {steady_p99 * 1e3:.1f} ms under the steady load ({flood_p99 / steady_p99:.2f}x) and "
        f"{limited.steady.p99_s * 1e3:.1f} ms alone ({flood_p99 / limited.steady.p99_s:.2f}x)"
    )
    assert all(set(window) == {"OK"} for window in answers["steady"]), answers["steady"]  # within the limit
    assert all(set(window) <= {"OK", "RESOURCE_EXHAUSTED"} for window in answers["flood"]), answers["flood"]
    # Over the limit, and served up to it.
    assert total("flood", "RESOURCE_EXHAUSTED") > 0 and total("flood", "OK") > 0
    # A refusal costs no more than serving the good client's one sentence under the steady load.
    assert statistics.median(refusals) <= steady_p99, (refusals, steady_p99)
    assert sampler.peak <= RSS_SLACK * limited.steady.rss_mib
    assert flood_p99 <= P99_SLACK * steady_p99, (flood_p99, steady_p99)


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def test_the_worker_still_serves_at_its_steady_rss(limited: Limited) -> None:
    assert list(limited.stub.ModelInfer(text_request("text", ["still serving"])).outputs[0].shape) == [1, 384]
    assert rss_mib(limited.worker.proc.pid) <= RSS_SLACK * limited.steady.rss_mib
