"""SigLIP through the open-clip loader and BLIP-2 through the captioning loader, on tiny models built
here: what they serve equals what their own libraries compute, with remote code off."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from worker_support import png, version_spec

from modelyard.inference.artifacts import checkpoint_hash
from modelyard.inference.errors import ArtifactRefused, BadInput, RemoteCodeRefused
from modelyard.inference.loaders import create_runtime
from modelyard.inference.loaders.hf_captioning import CaptioningRuntime
from modelyard.inference.loaders.open_clip import OpenClipRuntime

TEXTS = ["a photo of a cat", "the quick brown fox jumps over the lazy dog", "red", "hello world " * 20]


def _noise(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _images() -> list[bytes]:
    return [png((255, 0, 0)), png((0, 0, 255), size=300), _noise(1), _noise(2, (20, 90))]


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelyard.inference.tiny_models import build_tiny_siglip

    return build_tiny_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip")


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelyard.inference.tiny_models import build_tiny_captioner

    return build_tiny_captioner(tmp_path_factory.mktemp("models") / "tiny-blip2", kind="blip-2")


def _siglip_runtime(path: Path, quantization: str = "") -> OpenClipRuntime:
    runtime = create_runtime(version_spec(path, "1", loader="open-clip", quantization=quantization), path)
    assert not runtime.allow_remote_code and not runtime.spec.config.trust_remote_code
    runtime.load()
    return cast(OpenClipRuntime, runtime)


# ---- SigLIP ----------------------------------------------------------------------------------------


def test_the_tiny_siglip_is_an_open_clip_siglip_config_with_a_local_tokenizer(tiny_siglip: Path) -> None:
    config = json.loads((tiny_siglip / "open_clip_config.json").read_text())
    model_cfg, preprocess_cfg = config["model_cfg"], config["preprocess_cfg"]
    assert model_cfg["init_logit_bias"] == -10 and model_cfg["custom_text"] is True
    assert model_cfg["vision_cfg"]["timm_pool"] == "map" and model_cfg["vision_cfg"]["timm_proj"] == "none"
    assert model_cfg["text_cfg"]["no_causal_mask"] is True and model_cfg["text_cfg"]["pool_type"] == "last"
    assert preprocess_cfg["mean"] == preprocess_cfg["std"] == [0.5, 0.5, 0.5]
    assert preprocess_cfg["resize_mode"] == "squash"
    assert {"tokenizer.json", "open_clip_model.safetensors"} <= {p.name for p in tiny_siglip.iterdir()}


def test_siglip_serves_what_open_clip_computes_in_one_normalised_space(tiny_siglip: Path) -> None:
    import open_clip
    import torch

    runtime = _siglip_runtime(tiny_siglip)
    runtime.warmup()
    signature = runtime.signature()
    assert signature.embedding_dim == 96 and signature.outputs[0].shape == (-1, 96)
    assert {s.name for s in signature.inputs} == {"image", "text"}
    assert runtime.scores == "sigmoid" and runtime.logit_bias == pytest.approx(-10.0)
    assert isinstance(runtime.tokenizer, open_clip.tokenizer.HFTokenizer)  # the artifact's, not a download

    images = _images()
    served_images = cast(np.ndarray, runtime.predict("image", runtime.prepare("image", images))["embedding"])
    texts = [t.encode() for t in TEXTS]
    served_texts = cast(np.ndarray, runtime.predict("text", runtime.prepare("text", texts))["embedding"])
    assert served_images.shape == (len(images), 96) and served_texts.shape == (len(TEXTS), 96)
    assert served_images.dtype == served_texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(served_images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served_texts, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(served_images[0], served_images[1], atol=1e-3)

    # open_clip on its own, as its README runs a SigLIP: the same directory, its own transforms.
    from PIL import Image

    source = f"local-dir:{tiny_siglip}"
    model, _, preprocess = open_clip.create_model_and_transforms(source, weights_only=True)
    model.eval()
    tokenizer = open_clip.get_tokenizer(source)
    with torch.inference_mode():
        pixels = torch.stack([preprocess(Image.open(io.BytesIO(i)).convert("RGB")) for i in images])
        reference_images = model.encode_image(pixels, normalize=True).numpy()
        reference_texts = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
    np.testing.assert_allclose(served_images, reference_images, atol=1e-4)
    np.testing.assert_allclose(served_texts, reference_texts, atol=1e-4)
    runtime.unload()
    assert runtime.model is None


def test_siglip_preprocessing_is_its_own_squash_and_half_mean_not_clips(tiny_siglip: Path) -> None:
    from PIL import Image

    runtime = _siglip_runtime(tiny_siglip)
    # 4:1, red in the left quarter: a squash resize keeps it, CLIP's shortest-edge + centre crop
    # would cut it away; red under SigLIP's mean/std 0.5 is (1, -1, -1), under CLIP's about (1.93, -1.75, -1.48).
    image = Image.new("RGB", (400, 100), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 100, 100))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (pixels,) = runtime.prepare("image", [buffer.getvalue()])
    assert tuple(pixels.shape) == (3, 160, 160)
    np.testing.assert_allclose(pixels[:, 80, 5].numpy(), [1.0, -1.0, -1.0], atol=0.02)
    np.testing.assert_allclose(pixels[:, 80, 150].numpy(), [-1.0, -1.0, 1.0], atol=0.02)
    runtime.unload()


def test_clip_stays_a_softmax_model_without_a_logit_bias(tiny_clip: Path) -> None:
    runtime = _siglip_runtime(tiny_clip)
    assert runtime.scores == "softmax" and runtime.logit_bias is None
    assert runtime.signature().embedding_dim == 16
    runtime.unload()


def test_siglip_int8_is_quantized_and_still_the_same_model(tiny_siglip: Path) -> None:
    fp32 = _siglip_runtime(tiny_siglip)
    int8 = _siglip_runtime(tiny_siglip, quantization="int8-dynamic")
    texts = [t.encode() for t in TEXTS]
    reference = cast(np.ndarray, fp32.predict("text", fp32.prepare("text", texts))["embedding"])
    quantized = cast(np.ndarray, int8.predict("text", int8.prepare("text", texts))["embedding"])
    assert int8.signature() == fp32.signature()
    assert not np.allclose(quantized, reference, atol=1e-6)
    assert np.all(np.sum(quantized * reference, axis=1) > 0.9)
    fp32.unload()
    int8.unload()


def _edit(path: Path, change: Any) -> None:
    document = json.loads(path.read_text()) if path.exists() else {}
    change(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("file", "change", "named"),
    [
        ("tokenizer_config.json", lambda d: d.update(auto_map={"AutoTokenizer": ["tok.Evil", None]}),
         r"tokenizer_config\.json sets `auto_map`"),
        ("open_clip_config.json",
         lambda d: d["model_cfg"]["text_cfg"]["tokenizer_kwargs"].update(trust_remote_code=True),
         r"tokenizer_kwargs\.trust_remote_code"),
        ("open_clip_config.json",
         lambda d: d["model_cfg"]["text_cfg"].update(hf_tokenizer_name="/srv/elsewhere"),
         r"hf_tokenizer_name names the local path"),
    ],
    ids=["tokenizer-auto-map", "tokenizer-kwargs-trust", "tokenizer-by-path"],
)  # fmt: skip
def test_siglip_tokenizer_code_is_refused_without_remote_code(
    tiny_siglip: Path, tmp_path: Path, file: str, change: Any, named: str
) -> None:
    model = Path(shutil.copytree(tiny_siglip, tmp_path / "siglip"))
    _edit(model / file, change)
    with pytest.raises(RemoteCodeRefused, match=named):
        create_runtime(version_spec(model, "1", loader="open-clip"), model).load()


def test_an_open_clip_artifact_without_weights_is_refused(tiny_siglip: Path, tmp_path: Path) -> None:
    model = Path(shutil.copytree(tiny_siglip, tmp_path / "siglip"))
    (model / "open_clip_model.safetensors").unlink()
    with pytest.raises(ArtifactRefused, match="no weights file"):
        create_runtime(version_spec(model, "1", loader="open-clip"), model).load()


# ---- BLIP-2 ----------------------------------------------------------------------------------------


def test_blip2_captions_equal_its_own_generate(tiny_blip2: Path) -> None:
    import torch
    from PIL import Image
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    spec = version_spec(tiny_blip2, "1", loader="hf-captioning")
    runtime = cast(CaptioningRuntime, create_runtime(spec, tiny_blip2))
    runtime.load()
    runtime.warmup()
    assert runtime.kind == "blip-2" and type(runtime.model).__name__ == "Blip2ForConditionalGeneration"
    signature = runtime.signature()
    assert [(s.name, s.datatype) for s in signature.inputs] == [("image", "BYTES")]
    assert [(s.name, s.datatype) for s in signature.outputs] == [("caption", "BYTES")]
    assert signature.embedding_dim == 0

    images = [png(), png((0, 0, 0)), _noise(3), _noise(4, (64, 16)), png()]
    captions = runtime.predict("image", runtime.prepare("image", images))["caption"]
    assert len(captions) == len(images) and all(isinstance(c, bytes) for c in captions)
    assert captions[0] == captions[4]
    assert any(captions), captions  # the tiny model says something for some image

    # transformers on its own: the processor's pixels, generate with the loader's settings.
    model = Blip2ForConditionalGeneration.from_pretrained(tiny_blip2, local_files_only=True).eval()
    processor = Blip2Processor.from_pretrained(tiny_blip2, local_files_only=True)
    pil = [Image.open(io.BytesIO(i)).convert("RGB") for i in images]
    with torch.inference_mode():
        pixels = processor(images=pil, return_tensors="pt")["pixel_values"]
        tokens = model.generate(pixel_values=pixels, max_new_tokens=runtime.max_new_tokens, do_sample=False)
    expected = [c.strip().encode() for c in processor.batch_decode(tokens, skip_special_tokens=True)]
    assert captions == expected
    runtime.unload()
    assert runtime.model is None


def test_the_tiny_blip2_is_the_same_model_for_the_same_seed(tiny_blip2: Path, tmp_path: Path) -> None:
    from modelyard.inference.tiny_models import build_tiny_captioner

    again = build_tiny_captioner(tmp_path / "again", kind="blip-2", seed=0)
    other = build_tiny_captioner(tmp_path / "other", kind="blip-2", seed=1)
    assert checkpoint_hash(again) == checkpoint_hash(tiny_blip2) != checkpoint_hash(other)
    image = [_noise(7)]
    captions = []
    for path in (tiny_blip2, again):
        runtime = create_runtime(version_spec(path, "1", loader="hf-captioning"), path)
        runtime.load()
        captions.append(runtime.predict("image", runtime.prepare("image", image))["caption"])
        runtime.unload()
    assert captions[0] == captions[1]


def test_blip2_processor_code_and_a_checkpoint_without_image_tokens_are_refused(
    tiny_blip2: Path, tmp_path: Path
) -> None:
    coded = Path(shutil.copytree(tiny_blip2, tmp_path / "coded"))
    _edit(coded / "processor_config.json", lambda d: d.update(auto_map={"AutoProcessor": "proc.Evil"}))
    with pytest.raises(RemoteCodeRefused, match=r"processor_config\.json sets `auto_map`"):
        create_runtime(version_spec(coded, "1", loader="hf-captioning"), coded).load()

    legacy = Path(shutil.copytree(tiny_blip2, tmp_path / "legacy"))
    _edit(legacy / "config.json", lambda d: d.pop("image_token_index"))
    with pytest.raises(BadInput, match="no image_token_index"):
        create_runtime(version_spec(legacy, "1", loader="hf-captioning"), legacy).load()

    other = Path(shutil.copytree(tiny_blip2, tmp_path / "other"))
    _edit(other / "config.json", lambda d: d.update(model_type="git"))
    named = r"model_type blip, blip-2, vision-encoder-decoder\); config\.json says 'git'"
    with pytest.raises(BadInput, match=named):
        create_runtime(version_spec(other, "1", loader="hf-captioning"), other).load()
