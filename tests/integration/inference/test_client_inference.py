"""`modelyard.client.InferenceClient` against a real worker: embeddings and the version that served
them, pinning, the blocking twin, and errors as ModelyardError; and the client installed on its
own in a clean virtual environment, calling the worker in five lines."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from support import REPO_ROOT
from worker_support import WorkerFactory, registry_version, wait_model_ready

from modelyard.api import registry_pb2 as rpb
from modelyard.client import InferenceClient
from modelyard.client.sync import InferenceClient as SyncInferenceClient
from modelyard.common.errors import FailedPrecondition, InvalidArgument, NotFound

TEXTS = ["a red fox", "jumps over the lazy dog", "and keeps running"]


@pytest.fixture
def worker(spawn_worker: WorkerFactory, tiny_models: dict[str, Path]) -> str:
    deployment = rpb.Deployment(
        name="tiny",
        model_id="tiny",
        routes=[rpb.Route(version="1.0.0", weight=100), rpb.Route(version="1.1.0", weight=0)],
        versions=[
            registry_version(tiny_models["st0"], "1.0.0", model_id="tiny", dim=32),
            registry_version(tiny_models["st1"], "1.1.0", model_id="tiny", dim=32),
        ],
        revision=1,
    )
    process = spawn_worker(static=[deployment])
    wait_model_ready(process.address, "tiny", "1.1.0")
    return process.address


async def test_embeddings_name_the_version_that_served_them(worker: str) -> None:
    async with InferenceClient(worker) as client:
        routed = await client.embed_texts("tiny", TEXTS)
        pinned = await client.embed_texts("tiny", TEXTS, version="1.1.0")
        with pytest.raises(NotFound):
            await client.embed_texts("absent", TEXTS)
        with pytest.raises(InvalidArgument, match="empty batch"):
            await client.embed_texts("tiny", [])
    assert routed.version == "1.0.0" and pinned.version == "1.1.0"
    assert routed.vectors.shape == pinned.vectors.shape == (3, 32)
    assert not np.allclose(routed.vectors, pinned.vectors), "two different models answered"


async def test_blocking_twin_gives_the_same_vectors(worker: str) -> None:
    async with InferenceClient(worker) as client:
        expected = await client.embed_texts("tiny", TEXTS, version="1.0.0")

    def blocking() -> np.ndarray:
        with SyncInferenceClient(worker) as client:
            return client.embed_texts("tiny", TEXTS, version="1.0.0").vectors

    np.testing.assert_allclose(await asyncio.to_thread(blocking), expected.vectors, rtol=0, atol=1e-6)


def test_a_pin_answered_by_another_version_is_refused() -> None:
    from modelyard.api import grpc_predict_v2_pb2 as oip
    from modelyard.client.inference import served_version

    response = oip.ModelInferResponse(model_name="tiny", model_version="1.0.0")
    assert served_version(response, None) == "1.0.0"
    with pytest.raises(FailedPrecondition, match=r"asked tiny for version 1\.1\.0"):
        served_version(response, "1.1.0")


CALLER = """
from modelyard.client.sync import InferenceClient
with InferenceClient(ADDRESS) as worker:
    result = worker.embed_texts("tiny", ["a red fox", "a lazy dog"])
print(result.version, result.vectors.shape)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_clean_venv_with_only_the_client_calls_a_worker_in_five_lines(worker: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    installed = subprocess.run(
        [*pip, "-c", str(REPO_ROOT / "constraints.txt"), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    script = CALLER.replace("ADDRESS", repr(worker))
    assert len(script.strip().splitlines()) == 4  # the import, the client, the call, the print
    ran = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["1.0.0", "(2,", "32)"]
    absent = textwrap.dedent(
        """
        import importlib.util
        print([m for m in ("torch", "asyncpg", "pgserver", "transformers") if importlib.util.find_spec(m)])
        """
    )
    heavy = subprocess.run(
        [str(venv / "bin" / "python"), "-c", absent], capture_output=True, text=True, check=True
    )
    assert heavy.stdout.strip() == "[]", "the client installs without torch or PostgreSQL"
