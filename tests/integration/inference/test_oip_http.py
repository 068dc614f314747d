"""OIP v2 over HTTP on a real worker (in-process, tiny text models): tritonclient.http, a third-party
client, gets the gRPC answer in JSON and binary form; bad input is refused with the right status at
once; tokens and TLS hold as on the gRPC port."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.http as triton
from grpc import aio
from support import wait_until
from tritonclient.utils import InferenceServerException
from worker_support import (
    deployment_spec,
    registry_version,
    start_static_http_worker,
    text_request,
    version_spec,
)

import modelyard.inference.torchvision_compat  # noqa: F401  (before any torchvision import)
from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.inference.converters import encode_bytes_raw
from modelyard.inference.settings import WorkerSettings
from modelyard.inference.worker import InferenceWorker

MAX_MESSAGE = 256 * 1024
MAX_BATCH = 8
TEXTS = ["Model serving without restarts.", "A cat sat on the mat.", "é ü 漢字 🚀"]
QUICK_S = 2.0
T = TypeVar("T")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    root = tmp_path_factory.mktemp("tiny")
    return {
        "1.0.0": build_tiny_sentence_transformer(root / "st0", seed=0),
        "2.0.0": build_tiny_sentence_transformer(root / "st1", seed=1),
    }


async def _worker(
    cache: Path, models: dict[str, Path], routes: dict[str, int] | None = None, **settings: Any
) -> InferenceWorker:
    """Serves `text`: by default 1.0.0 takes the traffic, 2.0.0 is staged (weight 0, reachable when
    pinned)."""
    worker = InferenceWorker(
        WorkerSettings(
            host="127.0.0.1", port=0, metrics_port=None, http_port=0, cache_dir=str(cache),
            max_message_bytes=MAX_MESSAGE, grace_period_s=2.0, preimport=False, **settings,
        )
    )  # fmt: skip
    await worker.start()
    versions = [version_spec(path, name, max_batch_size=MAX_BATCH) for name, path in models.items()]
    worker.applier.submit(deployment_spec("text", routes or {"1.0.0": 100, "2.0.0": 0}, versions))
    await asyncio.wait_for(worker.applier.settled("text"), 60)
    return worker


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def worker(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]
) -> AsyncIterator[InferenceWorker]:
    worker = await _worker(tmp_path_factory.mktemp("cache"), models)
    try:
        yield worker
    finally:
        await worker.stop()


def _in_thread(function: Callable[[], T]) -> Any:
    # tritonclient.http is blocking (gevent) and one client belongs to one thread: each session of
    # calls runs whole in a thread of its own, while the worker serves on this event loop.
    return asyncio.to_thread(function)


def _text_input(texts: list[str], *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)
    return tensor


async def _grpc_embeddings(worker: InferenceWorker, texts: list[str], version: str = "") -> np.ndarray:
    async with aio.insecure_channel(worker.address) as channel:
        reply = await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            text_request("text", texts, version)
        )
    assert reply.model_version == (version or "1.0.0")
    output = reply.outputs[0]
    return np.array(output.contents.fp32_contents, dtype=np.float32).reshape(list(output.shape))


async def test_tritonclient_health_and_metadata(worker: InferenceWorker) -> None:
    def session() -> dict[str, Any]:
        with triton.InferenceServerClient(worker.http_address) as client:
            return {
                "live": client.is_server_live(),
                "ready": client.is_server_ready(),
                "model_ready": client.is_model_ready("text"),
                "staged_ready": client.is_model_ready("text", "2.0.0"),
                "missing_version_ready": client.is_model_ready("text", "9.9.9"),
                "missing_ready": client.is_model_ready("nope"),
                "server": client.get_server_metadata(),
                "metadata": client.get_model_metadata("text"),
                "pinned": client.get_model_metadata("text", "2.0.0"),
            }

    got = await _in_thread(session)
    assert got["live"] and got["ready"] and got["model_ready"] and got["staged_ready"]
    assert not got["missing_version_ready"] and not got["missing_ready"]
    assert got["server"]["name"] == "modelyard-worker"
    assert "binary_tensor_data" in got["server"]["extensions"]
    assert got["metadata"] == {
        "name": "text",
        "versions": ["1.0.0", "2.0.0"],
        "platform": "sentence-transformers",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 32]}],
    }
    assert got["pinned"]["versions"] == ["1.0.0", "2.0.0"]


async def test_tritonclient_json_and_binary_infer_equal_the_grpc_answer(worker: InferenceWorker) -> None:
    expected = await _grpc_embeddings(worker, TEXTS)

    def session() -> dict[str, Any]:
        with triton.InferenceServerClient(worker.http_address) as client:
            as_json = client.infer(
                "text",
                [_text_input(TEXTS, binary=False)],
                outputs=[triton.InferRequestedOutput("embedding", binary_data=False)],
                request_id="r-json",
            )
            # No outputs named: tritonclient asks for every output as binary data.
            as_binary = client.infer("text", [_text_input(TEXTS, binary=True)], request_id="r-bin")
            gzipped = client.infer(
                "text", [_text_input(TEXTS, binary=True)], request_compression_algorithm="gzip"
            )
            return {"json": as_json, "binary": as_binary, "gzip": gzipped}

    got = await _in_thread(session)
    json_output = got["json"].get_response()["outputs"][0]
    assert "data" in json_output and "parameters" not in json_output  # really sent back as JSON
    binary_output = got["binary"].get_response()["outputs"][0]
    assert (
        binary_output["parameters"]["binary_data_size"] == expected.size * 4 and "data" not in binary_output
    )
    for name, result in got.items():
        response = result.get_response()
        assert response["model_name"] == "text" and response["model_version"] == "1.0.0", name
        embedding = result.as_numpy("embedding")
        assert embedding.shape == expected.shape == (len(TEXTS), 32), name
        assert np.allclose(embedding, expected, atol=1e-6), name
    assert got["json"].get_response()["id"] == "r-json" and got["binary"].get_response()["id"] == "r-bin"


async def test_pinned_version_answers_with_that_version(worker: InferenceWorker) -> None:
    expected = await _grpc_embeddings(worker, TEXTS, version="2.0.0")
    default = await _grpc_embeddings(worker, TEXTS)

    def session() -> Any:
        with triton.InferenceServerClient(worker.http_address) as client:
            return client.infer("text", [_text_input(TEXTS, binary=True)], model_version="2.0.0")

    result = await _in_thread(session)
    assert result.get_response()["model_version"] == "2.0.0"
    assert np.allclose(result.as_numpy("embedding"), expected, atol=1e-6)
    assert not np.allclose(expected, default, atol=1e-3)  # the pin matters: the versions differ


async def test_readiness_follows_what_can_take_traffic(tmp_path: Path, models: dict[str, Path]) -> None:
    """Only staged versions: live, not ready (400, as the spec and Triton answer), unpinned calls 503."""
    worker = await _worker(tmp_path, models, routes={"1.0.0": 0, "2.0.0": 0})
    try:
        body = _infer_body([_text(["hello"])])
        async with httpx2.AsyncClient(base_url=f"http://{worker.http_address}/v2") as client:
            live = await client.get("/health/live")
            ready = await client.get("/health/ready")
            unpinned = await client.post("/models/text/infer", content=body)
            pinned = await client.post("/models/text/versions/2.0.0/infer", content=body)
        assert live.status_code == 200 and live.json() == {"live": True}
        assert ready.status_code == 400 and ready.json() == {"ready": False}
        assert unpinned.status_code == 503 and "no version with traffic weight" in unpinned.json()["error"]
        assert pinned.status_code == 200 and pinned.json()["model_version"] == "2.0.0"
    finally:
        await worker.stop()


def _infer_body(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def _text(texts: list[str]) -> dict[str, Any]:
    return {"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}


_RAW = encode_bytes_raw([b"hello", b"world"])
_BINARY_HEADER = _infer_body(
    [{"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(_RAW)}}]
)

# name -> (path, body, extra headers, expected status, a phrase the error must hold)
BAD_REQUESTS: dict[str, tuple[str, bytes, dict[str, str], int, str]] = {
    "malformed json": ("text/infer", b'{"inputs": [', {}, 400, "not valid JSON"),
    "not an object": ("text/infer", b"[1, 2]", {}, 400, "JSON array"),
    "no inputs": ("text/infer", b"{}", {}, 400, "inputs"),
    "unknown model": ("nope/infer", _infer_body([_text(["a"])]), {}, 404, "not served"),
    "unknown version": ("text/versions/9.9.9/infer", _infer_body([_text(["a"])]), {}, 404, "9.9.9"),
    "wrong datatype": (
        "text/infer",
        _infer_body([{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]),
        {},
        400,
        "needs BYTES",
    ),
    "number as BYTES": (
        "text/infer",
        _infer_body([{"name": "text", "shape": [1], "datatype": "BYTES", "data": [7]}]),
        {},
        400,
        "strings",
    ),
    "shape disagrees with data": (
        "text/infer",
        _infer_body([{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]),
        {},
        400,
        "needs 3 elements",
    ),
    "too many items": (
        "text/infer",
        _infer_body([_text(["x"] * (MAX_BATCH + 1))]),
        {},
        400,
        "split the batch",
    ),
    "unknown output": (
        "text/infer",
        _infer_body([_text(["a"])], outputs=[{"name": "logits"}]),
        {},
        400,
        "logits",
    ),
    "header length beyond the body": (
        "text/infer",
        _BINARY_HEADER + _RAW,
        {"Inference-Header-Content-Length": str(len(_BINARY_HEADER) + len(_RAW) + 1)},
        400,
        "Inference-Header-Content-Length",
    ),
    "header length not a number": (
        "text/infer",
        _BINARY_HEADER + _RAW,
        {"Inference-Header-Content-Length": "12abc"},
        400,
        "non-negative integer",
    ),
    "binary data shorter than declared": (
        "text/infer",
        _BINARY_HEADER + _RAW[:-3],
        {"Inference-Header-Content-Length": str(len(_BINARY_HEADER))},
        400,
        "past the end",
    ),
    "unsupported encoding": ("text/infer", b"{}", {"Content-Encoding": "br"}, 415, "br"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_requests_are_refused_at_once_with_the_right_status(
    worker: InferenceWorker, case: str
) -> None:
    path, body, headers, status, phrase = BAD_REQUESTS[case]
    async with httpx2.AsyncClient(base_url=f"http://{worker.http_address}/v2/models/") as client:
        started = time.perf_counter()
        reply = await client.post(path, content=body, headers=headers)
        elapsed = time.perf_counter() - started
        assert reply.status_code == status, reply.text
        assert phrase in reply.json()["error"]
        assert elapsed < QUICK_S
        # The worker serves on: the binary form of the same texts is fine.
        good = await client.post(
            "text/infer", content=_BINARY_HEADER + _RAW,
            headers={"Inference-Header-Content-Length": str(len(_BINARY_HEADER))},
        )  # fmt: skip
        assert good.status_code == 200, good.text
        assert good.json()["outputs"][0]["shape"] == [2, 32]


async def test_unknown_endpoint_and_method_answer_in_json(worker: InferenceWorker) -> None:
    async with httpx2.AsyncClient(base_url=f"http://{worker.http_address}") as client:
        missing = await client.get("/v2/repository/index")
        wrong_method = await client.get("/v2/models/text/infer")
    assert missing.status_code == 404 and "no such endpoint" in missing.json()["error"]
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]


async def _raw_exchange(address: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send a hand-made request; return the status and what the server said before closing."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), QUICK_S)
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1]), answer


async def test_oversized_bodies_are_refused_with_413_before_they_are_read(worker: InferenceWorker) -> None:
    address = worker.http_address
    # A body that claims a gigabyte and sends none of it: refused from its Content-Length at once.
    head = (
        b"POST /v2/models/text/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    started = time.perf_counter()
    status, answer = await _raw_exchange(address, head, b'{"inputs": [')
    assert status == 413 and b"at most 262144" in answer
    assert time.perf_counter() - started < QUICK_S
    # Chunked (no length announced): refused once the received bytes pass the budget.
    chunk = b"x" * 65536
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6))
    head = b"POST /v2/models/text/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, answer = await _raw_exchange(address, head, chunked)
    assert status == 413
    async with httpx2.AsyncClient(base_url=f"http://{address}") as client:
        plain = await client.post("/v2/models/text/infer", content=b" " * (MAX_MESSAGE + 1))
        # A small gzip body that inflates past the budget is refused as it inflates.
        bomb = gzip.compress(b" " * (4 * MAX_MESSAGE))
        inflated = await client.post(
            "/v2/models/text/infer", content=bomb, headers={"Content-Encoding": "gzip"}
        )
    assert plain.status_code == 413 and "max_message_bytes" in plain.json()["error"]
    assert inflated.status_code == 413 and "decompressed" in inflated.json()["error"]
    assert len(bomb) < MAX_MESSAGE // 10


async def test_tokens_are_checked_like_on_grpc(tmp_path: Path, models: dict[str, Path]) -> None:
    worker = await _worker(tmp_path, models, reader_tokens="app:r-secret", admin_tokens="ops:a-secret")
    try:
        body = _infer_body([_text(["hello"])])
        async with httpx2.AsyncClient(base_url=f"http://{worker.http_address}") as client:
            anonymous = await client.post("/v2/models/text/infer", content=body)
            bad = await client.post(
                "/v2/models/text/infer", content=body, headers={"Authorization": "Bearer wrong"}
            )
            metadata = await client.get("/v2/models/text")
            probe = await client.get("/v2/health/ready")  # probes stay open, like gRPC health
        assert anonymous.status_code == 401 and "missing credentials" in anonymous.json()["error"]
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert bad.status_code in (401, 403) and "unknown token" in bad.json()["error"]
        assert metadata.status_code == 401
        assert probe.status_code == 200

        def session() -> Any:
            with triton.InferenceServerClient(worker.http_address) as client:
                try:
                    client.get_model_metadata("text")
                except InferenceServerException as error:
                    refused = error.status()
                else:
                    refused = "200"
                auth = {"Authorization": "Bearer r-secret"}
                result = client.infer("text", [_text_input(["hello"], binary=True)], headers=auth)
                return refused, result.as_numpy("embedding")

        refused, embedding = await _in_thread(session)
        assert refused == "401"
        assert embedding.shape == (1, 32)
    finally:
        await worker.stop()


async def test_tls_serves_https_with_the_worker_certificate(tmp_path: Path, models: dict[str, Path]) -> None:
    from modelyard.cli.stack_security import ensure_certificates

    tls = ensure_certificates(tmp_path / "tls", "127.0.0.1")
    worker = await _worker(
        tmp_path / "cache", models, tls_cert_file=str(tls.cert_file), tls_key_file=str(tls.key_file)
    )
    try:
        port = worker.http_address.rsplit(":", 1)[1]

        def session() -> Any:
            options = {"ca_certs": str(tls.ca_file)}
            with triton.InferenceServerClient(f"localhost:{port}", ssl=True, ssl_options=options) as client:
                assert client.is_server_live()
                return client.infer("text", [_text_input(TEXTS, binary=False)]).as_numpy("embedding")

        embedding = await _in_thread(session)
        assert np.allclose(embedding, await _tls_grpc_embeddings(worker, tls.ca_file), atol=1e-6)
        async with httpx2.AsyncClient() as client:
            with pytest.raises(httpx2.HTTPError):  # plaintext on the TLS port
                await client.get(f"http://localhost:{port}/v2/health/live")
            with pytest.raises(httpx2.HTTPError):  # a client that does not trust the worker's CA
                await client.get(f"https://localhost:{port}/v2/health/live")
    finally:
        await worker.stop()


async def _tls_grpc_embeddings(worker: InferenceWorker, ca: Path) -> np.ndarray:
    from modelyard.client import ClientSettings
    from modelyard.client.channel import open_channel

    async with open_channel(worker.address, ClientSettings(tls=True, tls_ca_file=str(ca))) as channel:
        reply = await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(text_request("text", TEXTS))
    output = reply.outputs[0]
    return np.array(output.contents.fp32_contents, dtype=np.float32).reshape(list(output.shape))


def test_worker_process_serves_http_port_and_exits_cleanly(tmp_path: Path, models: dict[str, Path]) -> None:
    """`--http-port 0` on the real command: the port is logged, answers, and SIGTERM still exits 0."""
    deployment = rpb.Deployment(
        name="text", model_id="tiny", routes=[rpb.Route(version="1.0.0", weight=100)],
        versions=[registry_version(models["1.0.0"], "1.0.0", model_id="tiny", dim=32)], revision=1,
    )  # fmt: skip
    worker, address = start_static_http_worker(tmp_path, deployment)
    try:
        with httpx2.Client(base_url=f"http://{address}") as client:
            assert wait_until(lambda: client.get("/v2/health/ready").status_code == 200, 60), worker.log()
            reply = client.post("/v2/models/text/infer", content=_infer_body([_text(TEXTS)]))
        assert reply.status_code == 200, reply.text
        assert reply.json()["outputs"][0]["shape"] == [len(TEXTS), 32]
        assert worker.terminate() == 0, worker.log()  # SIGTERM stays the worker's, not uvicorn's
    finally:
        worker.kill()
