"""The worker over real gRPC on tiny models: bad input gets the right status and serving goes on;
health follows what is loaded; /metrics carries the per-version series."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from worker_support import InferenceStub, png, registry_version, text_request

from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.inference.converters import deployment_from_registry, encode_bytes_raw
from modelyard.inference.settings import WorkerSettings
from modelyard.inference.worker import InferenceWorker

MAX_MESSAGE = 256 * 1024


def _deployments(tiny: dict[str, Path]) -> list[rpb.Deployment]:
    text = registry_version(tiny["st0"], "1.0.0", model_id="tiny-text", max_batch_size=8, dim=32)
    clip = registry_version(tiny["clip"], "0.1.0", model_id="tiny-clip", loader="open-clip", dim=16)
    caption = registry_version(tiny["caption"], "0.0.1", model_id="tiny-caption", loader="hf-captioning")
    return [
        rpb.Deployment(name="text", model_id="tiny-text", routes=[rpb.Route(version="1.0.0", weight=100)],
                       versions=[text], revision=1),
        rpb.Deployment(name="clip", model_id="tiny-clip", routes=[rpb.Route(version="0.1.0", weight=100)],
                       versions=[clip], revision=1),
        rpb.Deployment(name="caption", model_id="tiny-caption",
                       routes=[rpb.Route(version="0.0.1", weight=100)], versions=[caption], revision=1),
    ]  # fmt: skip


async def _start_worker(cache_dir: Path) -> InferenceWorker:
    settings = WorkerSettings(
        host="127.0.0.1", port=0, metrics_port=0, cache_dir=str(cache_dir), max_message_bytes=MAX_MESSAGE,
        grace_period_s=2.0, preimport=False,
    )  # fmt: skip
    worker = InferenceWorker(settings)
    await worker.start()
    return worker


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_worker(tmp_path: Path) -> AsyncIterator[InferenceWorker]:
    worker = await _start_worker(tmp_path)
    try:
        yield worker
    finally:
        await worker.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def worker(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
) -> AsyncIterator[InferenceWorker]:
    worker = await _start_worker(tmp_path_factory.mktemp("cache"))
    for deployment in _deployments(tiny_models):
        worker.applier.submit(deployment_from_registry(deployment))
    for deployment in _deployments(tiny_models):
        await asyncio.wait_for(worker.applier.settled(deployment.name), 60)
    try:
        yield worker
    finally:
        await worker.stop()


async def _health(channel: aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status


async def test_health_is_not_serving_until_a_model_is_loaded(
    fresh_worker: InferenceWorker, tiny_models: dict[str, Path]
) -> None:
    worker = fresh_worker
    async with aio.insecure_channel(worker.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not (await stub.ServerReady(oip.ServerReadyRequest())).ready
        for deployment in _deployments(tiny_models):
            worker.applier.submit(deployment_from_registry(deployment))
        for deployment in _deployments(tiny_models):
            await asyncio.wait_for(worker.applier.settled(deployment.name), 60)
        for _ in range(50):
            if await _health(channel) == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.02)
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert (await stub.ServerReady(oip.ServerReadyRequest())).ready


@pytest_asyncio.fixture(loop_scope="session")
async def stub(worker: InferenceWorker) -> AsyncIterator[InferenceStub]:
    options = [("grpc.max_send_message_length", 8 * MAX_MESSAGE)]
    async with aio.insecure_channel(worker.address, options=options) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


def _with_input(
    deployment: str, name: str, datatype: str, shape: list[int], items: list[bytes], version: str = ""
) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=deployment, model_version=version)
    request.inputs.add(name=name, datatype=datatype, shape=shape).contents.bytes_contents.extend(items)
    return request


BAD_REQUESTS = {
    "wrong datatype": (
        oip.ModelInferRequest(
            model_name="text",
            inputs=[
                oip.ModelInferRequest.InferInputTensor(
                    name="text",
                    datatype="FP32",
                    shape=[1],
                    contents=oip.InferTensorContents(fp32_contents=[1.0]),
                )
            ],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "shape mismatch": (_with_input("text", "text", "BYTES", [2], [b"one"]), grpc.StatusCode.INVALID_ARGUMENT),
    "rank mismatch": (
        _with_input("text", "text", "BYTES", [1, 1], [b"one"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "empty batch": (_with_input("text", "text", "BYTES", [0], []), grpc.StatusCode.INVALID_ARGUMENT),
    "no inputs": (oip.ModelInferRequest(model_name="text"), grpc.StatusCode.INVALID_ARGUMENT),
    "batch over the limit": (
        _with_input("text", "text", "BYTES", [9], [b"x"] * 9),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "undecodable image": (
        _with_input("clip", "image", "BYTES", [2], [png(), b"\x89PNG but not really"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "invalid utf-8 text": (
        _with_input("text", "text", "BYTES", [1], [b"\xff"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "unknown deployment": (_with_input("nope", "text", "BYTES", [1], [b"x"]), grpc.StatusCode.NOT_FOUND),
    "unknown version": (
        _with_input("text", "text", "BYTES", [1], [b"x"], version="9.9.9"),
        grpc.StatusCode.NOT_FOUND,
    ),
    "oversized message": (
        _with_input("text", "text", "BYTES", [1], [b"x" * (2 * MAX_MESSAGE)]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_input_gets_its_status_and_the_worker_keeps_serving(stub: InferenceStub, case: str) -> None:
    request, code = BAD_REQUESTS[case]
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.ModelInfer(request)
    assert caught.value.code() == code, caught.value.details()
    assert caught.value.details()  # says what was wrong
    good = await stub.ModelInfer(text_request("text", ["still serving"]))
    assert good.model_version == "1.0.0" and list(good.outputs[0].shape) == [1, 32]


async def test_clip_serves_images_and_texts_and_captioner_serves_captions_raw(
    stub: InferenceStub,
) -> None:
    image = await stub.ModelInfer(_with_input("clip", "image", "BYTES", [2], [png(), png((1, 2, 3))]))
    text = await stub.ModelInfer(_with_input("clip", "text", "BYTES", [1], [b"a green square"]))
    assert list(image.outputs[0].shape) == [2, 16] and list(text.outputs[0].shape) == [1, 16]
    assert image.model_version == text.model_version == "0.1.0"

    request = oip.ModelInferRequest(model_name="caption")
    request.inputs.add(name="image", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(encode_bytes_raw([png(), png((250, 250, 0))]))
    response = await stub.ModelInfer(request)
    assert response.model_version == "0.0.1"
    assert response.outputs[0].name == "caption" and response.outputs[0].datatype == "BYTES"
    assert list(response.outputs[0].shape) == [2] and len(response.raw_output_contents) == 1


async def test_metrics_carry_per_version_series(stub: InferenceStub, worker: InferenceWorker) -> None:
    await stub.ModelInfer(text_request("text", ["count me"]))
    assert worker.server.metrics is not None
    port = worker.server.metrics.port
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    )
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    version = {"deployment": "text", "model": "tiny-text", "version": "1.0.0"}
    assert (value("modelyard_request_duration_seconds_count", **version, outcome="success") or 0) >= 1
    assert (value("modelyard_queue_duration_seconds_count", **version) or 0) >= 1
    assert (value("modelyard_batch_size_count", **version) or 0) >= 1
    assert (value("modelyard_model_load_seconds_count", **version) or 0) >= 1
    assert value("modelyard_route_weight", **version) == 100
    assert (value("modelyard_swaps_total", deployment="text", model="tiny-text", outcome="success") or 0) >= 1
    assert value("modelyard_worker_applied_revision", deployment="text") == 1
    checkpoint = worker.table.get("text").versions["1.0.0"].spec.checkpoint_hash
    assert value("modelyard_model_loaded", **version, checkpoint=checkpoint) == 1
