"""The onnxruntime engine on the real MiniLM in a worker process: a version of the same artifact
that only changes `engine`, hot-swapped both ways under load with no failed request, serving what
the torch engine serves, and saying which engine runs it."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families
from sentences import english
from worker_support import WorkerFactory, registry_version, text_request

from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.api import registry_pb2_grpc as rpb_grpc

pytestmark = pytest.mark.slow

DEPLOYMENT = "text-embedding"


def _vectors(reply: oip.ModelInferResponse) -> np.ndarray:
    output = reply.outputs[0]
    if reply.raw_output_contents:
        flat = np.frombuffer(reply.raw_output_contents[0], dtype="<f4")
    else:
        flat = np.array(output.contents.fp32_contents, dtype=np.float32)
    return flat.reshape(list(output.shape))


def _engines(metrics_port: int) -> dict[str, str]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return {
        sample.labels["version"]: sample.labels["engine"]
        for family in text_string_to_metric_families(body)
        if family.name == "modelyard_model_engine"
        for sample in family.samples
        if sample.value == 1
    }


async def test_an_onnxruntime_version_swaps_in_and_out_under_load_and_serves_what_torch_does(
    registry: object, spawn_worker: WorkerFactory, minilm_dir: Path
) -> None:
    import random

    rng = random.Random(5)
    texts = [" ".join((english(rng) + ". ") * (1 + i % 6)).strip() for i in range(24)]  # 1-6 sentences
    address = registry.address  # type: ignore[attr-defined]
    async with aio.insecure_channel(address) as channel:
        reg = rpb_grpc.RegistryServiceStub(channel)
        torch_version = registry_version(minilm_dir, "1.0.0", model_id="minilm")
        onnx_version = registry_version(minilm_dir, "1.0.1", model_id="minilm")
        onnx_version.inference_config.engine = "onnxruntime"
        for version in (torch_version, onnx_version):
            await reg.RegisterVersion(
                rpb.RegisterVersionRequest(version=version, create_model=True, model_type=rpb.TEXT_EMBEDDING)
            )
        stored = await reg.GetVersion(rpb.GetVersionRequest(model_id="minilm", version="1.0.1"))
        assert stored.inference_config.engine == "onnxruntime"
        assert stored.checkpoint_hash == torch_version.checkpoint_hash  # the same artifact
        created = await reg.CreateDeployment(
            rpb.CreateDeploymentRequest(
                name=DEPLOYMENT, model_id="minilm", routes=[rpb.Route(version="1.0.0", weight=100)]
            )
        )
        worker = spawn_worker(registry=address, deployments=(DEPLOYMENT,))

        async def converged(revision: int) -> None:
            status = await reg.GetRolloutStatus(
                rpb.GetRolloutStatusRequest(deployment=DEPLOYMENT, revision=revision, wait_timeout_ms=120_000)
            )
            assert status.converged, status

        await converged(created.revision)
        async with aio.insecure_channel(worker.address) as worker_channel:
            stub = oip_grpc.GRPCInferenceServiceStub(worker_channel)
            by_torch = _vectors(await stub.ModelInfer(text_request(DEPLOYMENT, texts)))
            stop = asyncio.Event()
            failures: list[str] = []
            served: dict[str, int] = {}

            async def client(index: int) -> None:
                i = index
                while not stop.is_set():
                    try:
                        reply = await stub.ModelInfer(text_request(DEPLOYMENT, [texts[i % len(texts)]]))
                    except aio.AioRpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")
                        continue
                    served[reply.model_version] = served.get(reply.model_version, 0) + 1
                    i += 16

            clients = [asyncio.create_task(client(i)) for i in range(16)]
            try:
                for target in ("1.0.1", "1.0.0", "1.0.1"):
                    changed = await reg.SetRoutes(
                        rpb.SetRoutesRequest(name=DEPLOYMENT, routes=[rpb.Route(version=target, weight=100)])
                    )
                    await converged(changed.revision)
                    await asyncio.sleep(0.5)
            finally:
                stop.set()
                await asyncio.gather(*clients)
            reply = await stub.ModelInfer(text_request(DEPLOYMENT, texts))
            assert reply.model_version == "1.0.1"
            by_onnx = _vectors(reply)
        engines = await asyncio.to_thread(_engines, worker.metrics_port)
    assert failures == []
    assert served.get("1.0.0", 0) > 0 and served.get("1.0.1", 0) > 0, served
    assert by_onnx.shape == by_torch.shape == (len(texts), 384)
    np.testing.assert_allclose(by_onnx, by_torch, atol=1e-4)
    assert engines == {"1.0.1": "onnxruntime"}, engines  # 1.0.0 was unloaded: its series is gone
    assert "version=1.0.1 device=cpu engine=onnxruntime" in worker.log()  # the version.loaded event
    assert worker.terminate() == 0
