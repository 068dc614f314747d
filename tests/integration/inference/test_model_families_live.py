"""A tiny SigLIP and a tiny BLIP-2 as a user meets them: `modelyard models import` against a real
registry reads their signatures by loading them, and a worker process serves both over OIP gRPC
what open_clip and transformers compute for the same inputs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from support import ServerProcess
from worker_support import WorkerFactory, png, registry_version, wait_model_ready

from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb

TEXTS = ["a photo of a cat", "a small red bird", "hello world"]


def _noise(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = [png((255, 0, 0)), _noise(1), _noise(2), png((0, 0, 255), size=200)]


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from modelyard.inference.tiny_models import build_tiny_captioner, build_tiny_siglip

    root = tmp_path_factory.mktemp("families")
    return {
        "siglip": build_tiny_siglip(root / "siglip"),
        "blip2": build_tiny_captioner(root / "blip2", kind="blip-2"),
    }


def _modelyard(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", "--registry", address, "--json", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_models_import_reads_the_siglip_and_blip2_signatures_by_loading_them(
    registry_process: ServerProcess, families: dict[str, Path], tmp_path: Path
) -> None:
    address, store = registry_process.address, str(tmp_path / "store")
    # No --loader: the importer finds open-clip and hf-captioning from the files.
    siglip = _modelyard(address, "models", "import", str(families["siglip"]), "--model", "tiny-siglip",
                        "--version", "1.0.0", "--store", store)  # fmt: skip
    assert siglip.returncode == 0, siglip.stderr
    version = json.loads(siglip.stdout)
    assert version["loader"] == "open-clip"
    assert version["signature"]["embedding_dim"] == 96
    assert {t["name"] for t in version["signature"]["inputs"]} == {"image", "text"}
    embedding = {"name": "embedding", "datatype": "FP32", "shape": ["-1", "96"]}
    assert version["signature"]["outputs"] == [embedding]

    blip2 = _modelyard(address, "models", "import", str(families["blip2"]), "--model", "tiny-blip2",
                       "--version", "1.0.0", "--store", store)  # fmt: skip
    assert blip2.returncode == 0, blip2.stderr
    version = json.loads(blip2.stdout)
    assert version["loader"] == "hf-captioning"
    assert [t["name"] for t in version["signature"]["inputs"]] == ["image"]
    assert version["signature"]["outputs"] == [{"name": "caption", "datatype": "BYTES", "shape": ["-1"]}]
    assert not version["signature"].get("embedding_dim")

    listed = _modelyard(address, "models", "list")
    assert listed.returncode == 0, listed.stderr
    types = {m["model_id"]: m["model_type"] for m in json.loads(listed.stdout)}
    assert types == {"tiny-siglip": "IMAGE_EMBEDDING", "tiny-blip2": "CAPTIONING"}


def _deployment(name: str, version: rpb.ModelVersion) -> rpb.Deployment:
    return rpb.Deployment(name=name, model_id=version.model_id, routes=[rpb.Route(version="1.0.0", weight=100)],
                          versions=[version], revision=1)  # fmt: skip


def _request(deployment: str, name: str, items: list[bytes]) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=deployment)
    request.inputs.add(name=name, datatype="BYTES", shape=[len(items)]).contents.bytes_contents.extend(items)
    return request


def _vectors(reply: oip.ModelInferResponse) -> np.ndarray:
    output = reply.outputs[0]
    return np.array(output.contents.fp32_contents, dtype=np.float32).reshape(list(output.shape))


def _open_clip_reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import open_clip
    import torch
    from PIL import Image

    source = f"local-dir:{path}"
    model, _, preprocess = open_clip.create_model_and_transforms(source, weights_only=True)
    model.eval()
    tokenizer = open_clip.get_tokenizer(source)
    with torch.inference_mode():
        pixels = torch.stack([preprocess(Image.open(io.BytesIO(i)).convert("RGB")) for i in IMAGES])
        images = model.encode_image(pixels, normalize=True).numpy()
        texts = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
    return images, texts


def _transformers_captions(path: Path) -> list[bytes]:
    import torch
    from PIL import Image
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    model = Blip2ForConditionalGeneration.from_pretrained(path, local_files_only=True).eval()
    processor = Blip2Processor.from_pretrained(path, local_files_only=True)
    pil = [Image.open(io.BytesIO(i)).convert("RGB") for i in IMAGES]
    with torch.inference_mode():
        pixels = processor(images=pil, return_tensors="pt")["pixel_values"]
        # The loader's settings: greedy, its default 20 new tokens.
        tokens = model.generate(pixel_values=pixels, max_new_tokens=20, do_sample=False)
    return [c.strip().encode() for c in processor.batch_decode(tokens, skip_special_tokens=True)]


def test_a_worker_process_serves_siglip_and_blip2_over_oip_grpc(
    spawn_worker: WorkerFactory, families: dict[str, Path]
) -> None:
    siglip = registry_version(families["siglip"], "1.0.0", model_id="tiny-siglip", loader="open-clip", dim=96)
    blip2 = registry_version(families["blip2"], "1.0.0", model_id="tiny-blip2", loader="hf-captioning")
    worker = spawn_worker(static=[_deployment("siglip", siglip), _deployment("blip2", blip2)])
    wait_model_ready(worker.address, "siglip")
    wait_model_ready(worker.address, "blip2")
    reference_images, reference_texts = _open_clip_reference(families["siglip"])
    reference_captions = _transformers_captions(families["blip2"])
    assert any(reference_captions), reference_captions  # the tiny model says something for some image

    with grpc.insecure_channel(worker.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(oip.ModelMetadataRequest(name="siglip"), timeout=10)
        assert {t.name for t in metadata.inputs} == {"image", "text"}
        assert [list(t.shape) for t in metadata.outputs] == [[-1, 96]]

        images = stub.ModelInfer(_request("siglip", "image", IMAGES), timeout=30)
        texts = stub.ModelInfer(_request("siglip", "text", [t.encode() for t in TEXTS]), timeout=30)
        assert images.model_version == texts.model_version == "1.0.0"
        served_images, served_texts = _vectors(images), _vectors(texts)
        assert served_images.shape == (len(IMAGES), 96) and served_texts.shape == (len(TEXTS), 96)
        np.testing.assert_allclose(served_images, reference_images, atol=1e-4)
        np.testing.assert_allclose(served_texts, reference_texts, atol=1e-4)

        captions = stub.ModelInfer(_request("blip2", "image", IMAGES), timeout=60)
        assert captions.model_version == "1.0.0"
        output = captions.outputs[0]
        assert output.name == "caption" and output.datatype == "BYTES" and list(output.shape) == [len(IMAGES)]
        assert list(output.contents.bytes_contents) == reference_captions
