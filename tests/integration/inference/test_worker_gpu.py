"""Must-show 5 on CUDA: allocated memory after 20 swap cycles, and an fp16 run with its throughput.
Skipped, with the reason, where no CUDA device is present."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from worker_support import artifact_cache, deployment_spec, version_spec

from modelyard.inference.dataplane import DataPlane
from modelyard.inference.deployments import DeploymentApplier
from modelyard.inference.domain import InferenceRequest, InputTensor
from modelyard.inference.routing import RoutingTable


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(
        not _cuda(), reason="no CUDA device: torch.cuda.is_available() is False on this machine"
    ),
]


def _request(texts: list[str]) -> InferenceRequest:
    return InferenceRequest(
        "emb", "", "r", [InputTensor("text", "BYTES", [len(texts)], [t.encode() for t in texts])]
    )


async def _apply(applier: DeploymentApplier, spec: object) -> None:
    applier.submit(spec)  # type: ignore[arg-type]
    await asyncio.wait_for(applier.settled("emb"), 120)


async def test_cuda_memory_after_20_swap_cycles_and_fp16_throughput(tmp_path: Path, minilm_dir: Path) -> None:
    import torch

    infer, load = ThreadPoolExecutor(2), ThreadPoolExecutor(1)
    table = RoutingTable()
    applier = DeploymentApplier(table, artifact_cache(tmp_path), load)
    plane = DataPlane(table, infer)
    fp32 = version_spec(minilm_dir, "1.0.0", model_id="minilm", device="cuda", max_batch_size=64)
    fp16 = version_spec(
        minilm_dir, "1.0.1", model_id="minilm", device="cuda", dtype="float16", max_batch_size=64
    )
    allocated: dict[int, int] = {}
    try:
        for cycle in range(1, 21):
            await _apply(applier, deployment_spec("emb", {"1.0.1": 100}, [fp16], revision=2 * cycle))
            await _apply(applier, deployment_spec("emb", {"1.0.0": 100}, [fp32], revision=2 * cycle + 1))
            await plane.infer(_request(["warm"]))
            await asyncio.sleep(0.2)  # the replaced version drains and unloads
            if cycle in (1, 20):
                allocated[cycle] = torch.cuda.memory_allocated()
        assert allocated[20] <= allocated[1] * 1.10, allocated

        await _apply(applier, deployment_spec("emb", {"1.0.1": 100}, [fp16], revision=100))
        texts = [f"throughput sentence number {i}" for i in range(64)]
        started, rounds = time.perf_counter(), 20
        for _ in range(rounds):
            response = await plane.infer(_request(texts))
            assert response.version == "1.0.1"
        rate = rounds * len(texts) / (time.perf_counter() - started)
        print(f"fp16 MiniLM on {torch.cuda.get_device_name()}: {rate:.0f} sentences/s; allocated {allocated}")
    finally:
        await applier.close()
        infer.shutdown()
        load.shutdown()
