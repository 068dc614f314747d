"""A third-party loader: the example plugin (examples/hashed-text-classifier) installed by pip into
a directory of its own, found through its `modelyard.loaders` entry point by the CLI and by a
worker process, registered as a generic model, served and hot-swapped under load."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from grpc import aio
from support import REPO_ROOT
from worker_support import WorkerFactory, text_request

from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.api import registry_pb2_grpc as rpb_grpc
from modelyard.inference.artifacts import checkpoint_hash

pytestmark = pytest.mark.slow

PLUGIN = REPO_ROOT / "examples" / "hashed-text-classifier"
LABELS = ["billing", "bug", "praise"]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where pip installed the plugin (a wheel built from examples/, its dist-info and entry point)."""
    target = tmp_path_factory.mktemp("plugin")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(PLUGIN)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    yield target


def _env(plugin_path: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")])}


def _build(plugin_path: Path, directory: Path, seed: int) -> Path:
    script = (
        "import sys; from pathlib import Path; import modelyard_example_classifier as m; "
        f"m.build(Path(sys.argv[1]), {LABELS!r}, seed={seed})"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(directory)], env={**os.environ, **_env(plugin_path)}, check=True
    )
    return directory


def test_loaders_list_shows_the_plugin_with_its_tensors_and_where_it_came_from(plugin_path: Path) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", "loaders", "list", "--json"],
        env={**os.environ, **_env(plugin_path)}, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    found = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert found["hashed-text-classifier"] == {
        "name": "hashed-text-classifier",
        "model_type": "generic",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
        ],
        "origin": "modelyard-example-classifier 0.1.0",
    }
    assert found["sentence-transformers"]["origin"] == "built-in"
    # Without the plugin on the path, the same command lists only the built-ins.
    plain = subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", "loaders", "list", "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "hashed-text-classifier" not in {entry["name"] for entry in json.loads(plain.stdout)}


def _version(directory: Path, version: str) -> rpb.ModelVersion:
    return rpb.ModelVersion(
        model_id="tickets",
        version=version,
        source_uri=f"file://{directory}",
        checkpoint_hash=checkpoint_hash(directory),
        loader="hashed-text-classifier",
        inference_config=rpb.InferenceConfig(max_batch_size=16, max_delay_ms=2, device="cpu"),
        signature=rpb.Signature(
            inputs=[rpb.TensorSpec(name="text", datatype="BYTES", shape=[-1])],
            outputs=[
                rpb.TensorSpec(name="label", datatype="BYTES", shape=[-1]),
                rpb.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, len(LABELS)]),
            ],
        ),
    )


def _probabilities(reply: oip.ModelInferResponse) -> tuple[list[str], np.ndarray]:
    outputs = {o.name: (i, o) for i, o in enumerate(reply.outputs)}
    labels_at, labels = outputs["label"]
    probs_at, probs = outputs["probabilities"]
    if reply.raw_output_contents:
        from modelyard.inference.converters import decode_bytes_raw

        names = [b.decode() for b in decode_bytes_raw(reply.raw_output_contents[labels_at], "label")]
        flat = np.frombuffer(reply.raw_output_contents[probs_at], dtype="<f4")
    else:
        names = [b.decode() for b in labels.contents.bytes_contents]
        flat = np.array(probs.contents.fp32_contents, dtype=np.float32)
    return names, flat.reshape(list(probs.shape))


async def test_a_plugin_model_is_registered_served_and_hot_swapped_like_any_other(
    plugin_path: Path, registry: object, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    first = _build(plugin_path, tmp_path / "tickets-1", seed=1)
    second = _build(plugin_path, tmp_path / "tickets-2", seed=2)
    address = registry.address  # type: ignore[attr-defined]
    texts = ["my invoice is wrong", "the app crashes on start", "love the new release!"]
    async with aio.insecure_channel(address) as channel:
        reg = rpb_grpc.RegistryServiceStub(channel)
        for version, directory in (("1.0.0", first), ("1.1.0", second)):
            await reg.RegisterVersion(
                rpb.RegisterVersionRequest(
                    version=_version(directory, version), create_model=True, model_type=rpb.GENERIC
                )
            )
        model = await reg.GetModel(rpb.GetModelRequest(model_id="tickets"))
        assert model.model_type == rpb.GENERIC
        created = await reg.CreateDeployment(
            rpb.CreateDeploymentRequest(
                name="tickets", model_id="tickets", routes=[rpb.Route(version="1.0.0", weight=100)]
            )
        )
        worker = spawn_worker(registry=address, deployments=("tickets",), env=_env(plugin_path))

        async def converged(revision: int) -> None:
            status = await reg.GetRolloutStatus(
                rpb.GetRolloutStatusRequest(deployment="tickets", revision=revision, wait_timeout_ms=120_000)
            )
            assert status.converged, status

        await converged(created.revision)
        async with aio.insecure_channel(worker.address) as worker_channel:
            stub = oip_grpc.GRPCInferenceServiceStub(worker_channel)
            reply = await stub.ModelInfer(text_request("tickets", texts))
            assert reply.model_version == "1.0.0"
            names, before = _probabilities(reply)
            assert before.shape == (3, len(LABELS)) and set(names) <= set(LABELS)
            np.testing.assert_allclose(before.sum(axis=1), 1.0, atol=1e-5)
            assert names == [LABELS[i] for i in before.argmax(axis=1)]

            stop, failures, served = asyncio.Event(), [], set()

            async def client(index: int) -> None:
                while not stop.is_set():
                    try:
                        answer = await stub.ModelInfer(text_request("tickets", [texts[index % 3]]))
                    except aio.AioRpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")
                        continue
                    served.add(answer.model_version)

            clients = [asyncio.create_task(client(i)) for i in range(8)]
            try:
                changed = await reg.SetRoutes(
                    rpb.SetRoutesRequest(name="tickets", routes=[rpb.Route(version="1.1.0", weight=100)])
                )
                await converged(changed.revision)
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await asyncio.gather(*clients)
            reply = await stub.ModelInfer(text_request("tickets", texts))
            assert reply.model_version == "1.1.0"
            _, after = _probabilities(reply)
            with pytest.raises(aio.AioRpcError) as refused:
                await stub.ModelInfer(text_request("tickets", ["x"], version="9.9.9"))
        assert refused.value.code().name == "NOT_FOUND"
    assert failures == []
    assert served == {"1.0.0", "1.1.0"}
    assert not np.allclose(before, after)  # other weights: the swap really changed the model
    assert worker.terminate() == 0


def test_a_broken_or_clashing_plugin_is_left_out_with_its_reason_and_the_rest_still_load(
    tmp_path: Path,
) -> None:
    # What pip writes for an installed distribution: its modules and a dist-info with entry points.
    (tmp_path / "bad_plugins.py").write_text(
        "import modelyard.inference.loaders.sentence_transformers as st\n"
        "class Impostor(st.SentenceTransformerRuntime):\n"
        "    loader_name = 'sentence-transformers'\n"
        "class NotALoader:\n"
        "    loader_name = 'not-a-loader'\n"
    )
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs a library nobody installed')\n")
    info = tmp_path / "bad_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[modelyard.loaders]\n"
        "sentence-transformers = bad_plugins:Impostor\n"
        "not-a-loader = bad_plugins:NotALoader\n"
        "broken = broken_plugin:Anything\n"
    )
    listed = subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", "loaders", "list", "--json"],
        env={**os.environ, **_env(tmp_path)}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    found = {entry["name"]: entry["origin"] for entry in json.loads(listed.stdout)}
    assert found == {
        "hf-captioning": "built-in",
        "open-clip": "built-in",
        "sentence-transformers": "built-in",
    }
    refused = [line for line in listed.stderr.splitlines() if line.startswith("warning: plugin loader")]
    assert len(refused) == 3, listed.stderr
    assert any(
        "'sentence-transformers' (bad-plugins 1.0) left out: loader 'sentence-transformers' is "
        "already built-in" in line
        for line in refused
    )
    assert any("is not a ModelRuntime subclass" in line for line in refused)
    assert any("needs a library nobody installed" in line for line in refused)
