"""The benchmark service over real gRPC against a stand-in OIP worker: runs, comparison, bad input,
and a worker that dies mid-run."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from benchmark_support import BenchStub
from grpc import aio

from modelyard.api import benchmark_pb2, benchmark_pb2_grpc, registry_pb2
from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.benchmark.server import BenchmarkServer
from modelyard.benchmark.settings import BenchmarkSettings

# Version -> embedding width. Both hash words; 256 buckets keep words apart, 3 buckets do not.
VERSIONS = {"1.0.0": 256, "2.0.0": 3}


def _embed(texts: list[str], dim: int) -> np.ndarray:
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", text.lower()):
            out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
    return out


class StandInWorker(oip_grpc.GRPCInferenceServiceServicer):
    """Speaks OIP v2 for one text-embedding deployment; 1.0.0 answers in raw bytes, 2.0.0 in contents."""

    server: aio.Server

    def __init__(self) -> None:
        self.calls = 0

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        return oip.ModelReadyResponse(ready=request.version in VERSIONS)

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        meta = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=request.name,
            versions=list(VERSIONS),
            inputs=[meta(name="text", datatype="BYTES", shape=[-1])],
            outputs=[meta(name="embedding", datatype="FP32", shape=[-1, -1])],
        )

    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: aio.ServicerContext
    ) -> oip.ModelInferResponse:
        self.calls += 1
        texts = [b.decode() for b in request.inputs[0].contents.bytes_contents]
        vectors = _embed(texts, VERSIONS[request.model_version])
        tensor = oip.ModelInferResponse.InferOutputTensor(
            name="embedding", datatype="FP32", shape=vectors.shape
        )
        response = oip.ModelInferResponse(model_name=request.model_name, model_version=request.model_version)
        if request.model_version == "1.0.0":
            response.raw_output_contents.append(struct.pack(f"<{vectors.size}f", *vectors.ravel()))
        else:
            tensor.contents.fp32_contents.extend(vectors.ravel().tolist())
        response.outputs.append(tensor)
        return response


@dataclass
class Stack:
    worker: StandInWorker
    worker_address: str
    bench: BenchStub


@pytest_asyncio.fixture(loop_scope="session")
async def stack() -> AsyncIterator[Stack]:
    # Only the RPCs the benchmark calls: the others answer UNIMPLEMENTED, as the generated base does.
    worker = StandInWorker()  # type: ignore[abstract]
    worker_server = aio.server()
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(worker, worker_server)
    port = worker_server.add_insecure_port("127.0.0.1:0")
    worker.server = worker_server
    await worker_server.start()
    bench = BenchmarkServer(BenchmarkSettings(port=0, metrics_port=None, grace_period_s=0.5))
    await bench.start()
    channel = aio.insecure_channel(bench.address)
    try:
        yield Stack(worker, f"127.0.0.1:{port}", benchmark_pb2_grpc.BenchmarkServiceStub(channel))
    finally:
        await channel.close(None)
        await bench.stop()
        await worker_server.stop(None)


def _request(stack: Stack, suite: str, *versions: str, **fields: Any) -> benchmark_pb2.RunBenchmarkRequest:
    return benchmark_pb2.RunBenchmarkRequest(
        worker=stack.worker_address,
        deployment="text-embedding",
        model_id="bow",
        versions=list(versions),
        suite=suite,
        **fields,
    )


async def _finished_runs(
    stack: Stack, request: benchmark_pb2.RunBenchmarkRequest
) -> list[registry_pb2.BenchmarkRun]:
    return [p.run async for p in stack.bench.RunBenchmark(request) if p.HasField("run")]


@pytest.mark.asyncio(loop_scope="session")
async def test_quality_runs_are_stored_and_compared(stack: Stack) -> None:
    runs = await _finished_runs(
        stack, _request(stack, "stdlib-docstrings", "2.0.0", "1.0.0", options={"batch_size": "128"})
    )
    assert [r.status for r in runs] == [registry_pb2.RUN_STATUS_SUCCEEDED] * 2, [r.error for r in runs]
    fetched = await stack.bench.GetRun(benchmark_pb2.GetRunRequest(run_id=runs[1].run_id))
    recall = next(m for m in fetched.metrics if m.name == "recall@10")
    assert len(recall.samples) == 600
    reply = await stack.bench.Compare(
        benchmark_pb2.CompareRequest(
            baseline_run_id=runs[0].run_id, candidate_run_id=runs[1].run_id, export_format="json", seed=7
        )
    )
    by_name = {m.metric: m for m in reply.metrics}
    assert by_name["recall@10"].winner == "candidate" and by_name["recall@10"].ci_low > 0
    for quality in ("recall@10", "mrr@10", "ndcg@10"):
        assert by_name[quality].winner == "candidate", quality
    # Quality runs also time their requests; on a shared machine latency may go either way, and the
    # overall verdict must say so: "candidate" only when the baseline wins nothing.
    baseline_wins = [m.metric for m in reply.metrics if m.winner == "baseline"]
    expected = "mixed" if baseline_wins else "candidate"
    assert reply.winner == expected, baseline_wins
    assert json.loads(reply.export)["winner"] == expected


@pytest.mark.asyncio(loop_scope="session")
async def test_load_run_over_grpc(stack: Stack) -> None:
    load = benchmark_pb2.LoadSettings(concurrency=[1, 4], requests=20, warmup_requests=2, batch_size=4)
    (run,) = await _finished_runs(stack, _request(stack, "load", "1.0.0", load=load))
    assert run.status == registry_pb2.RUN_STATUS_SUCCEEDED, run.error
    names = {m.name for m in run.metrics}
    assert {"latency_p99_ms[c=4]", "throughput_rps[c=1]", "error_rate[c=4]"} <= names


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(
    ("suite", "load", "code", "words"),
    [
        (
            "load",
            benchmark_pb2.LoadSettings(concurrency=[0], requests=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "> 0",
        ),
        (
            "load",
            benchmark_pb2.LoadSettings(concurrency=[-3], requests=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "-3",
        ),
        ("imagenet-21k", None, grpc.StatusCode.NOT_FOUND, "unknown suite"),
    ],
)
async def test_bad_requests_get_a_status_naming_the_problem(
    stack: Stack, suite: str, load: benchmark_pb2.LoadSettings | None, code: grpc.StatusCode, words: str
) -> None:
    request = _request(stack, suite, "1.0.0", **({"load": load} if load else {}))
    with pytest.raises(aio.AioRpcError) as caught:
        await _finished_runs(stack, request)
    assert caught.value.code() == code
    assert words in (caught.value.details() or "")
