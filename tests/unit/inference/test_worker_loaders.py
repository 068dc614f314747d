"""The three model families on tiny models: load, warm up, signature, predict, unload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pytest
from worker_support import png, version_spec

from modelyard.inference.domain import VersionSpec
from modelyard.inference.errors import BadInput, UnknownLoader, UnsupportedConfig
from modelyard.inference.loaders import create_runtime, loader_names
from modelyard.inference.loaders.base import Outputs, apply_precision, resolve_device

if TYPE_CHECKING:
    from modelyard.inference.loaders.sentence_transformers import SentenceTransformerRuntime


def _st_runtime(spec: VersionSpec, path: Path) -> SentenceTransformerRuntime:
    """create_runtime for a sentence-transformers version, typed as that family's runtime."""
    return cast("SentenceTransformerRuntime", create_runtime(spec, path))


def _embedding(outputs: Outputs) -> np.ndarray:
    """The `embedding` output, an array (only captions come back as lists of bytes)."""
    return cast(np.ndarray, outputs["embedding"])


def test_every_family_is_registered_by_name() -> None:
    assert {"sentence-transformers", "open-clip", "hf-captioning"} <= set(loader_names())
    with pytest.raises(UnknownLoader, match="names loader 'onnx'"):
        create_runtime(version_spec(Path("/x"), "1", loader="onnx", checkpoint="0" * 64), Path("/x"))


def test_a_config_this_worker_cannot_serve_is_unsupported_not_an_unknown_loader(tiny_st: Path) -> None:
    import torch

    with pytest.raises(UnsupportedConfig, match="unknown quantization 'int4'"):
        apply_precision(object(), version_spec(tiny_st, "1", quantization="int4"), "cpu")
    with pytest.raises(UnsupportedConfig, match="CPU only"):
        apply_precision(object(), version_spec(tiny_st, "1", quantization="int8-dynamic"), "cuda:0")
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedConfig, match="no CUDA device"):
            resolve_device("cuda")


def test_sentence_transformers_matches_the_library_and_quantizes(tiny_st: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["the cat sat on the mat", "hello world", "a quick brown fox jumps over the lazy dog"]
    runtime = _st_runtime(version_spec(tiny_st, "1"), tiny_st)
    runtime.load()
    runtime.warmup()
    signature = runtime.signature()
    assert signature.embedding_dim == 32 and signature.outputs[0].shape == (-1, 32)
    served = _embedding(runtime.predict("text", runtime.prepare("text", [t.encode() for t in texts])))
    reference = SentenceTransformer(str(tiny_st), device="cpu").encode(texts)
    np.testing.assert_allclose(served, reference, atol=1e-5)
    with pytest.raises(BadInput, match="UTF-8"):
        runtime.prepare("text", [b"\xff\xfe"])
    runtime.unload()
    assert runtime.model is None

    quantized = create_runtime(version_spec(tiny_st, "1-int8", quantization="int8-dynamic"), tiny_st)
    quantized.load()
    q = _embedding(quantized.predict("text", quantized.prepare("text", [t.encode() for t in texts])))
    assert q.shape == reference.shape
    assert not np.allclose(q, reference, atol=1e-6)  # really quantized
    assert np.all(np.sum(q * reference, axis=1) > 0.9)  # still the same model
    quantized.unload()


def test_text_lengths_are_estimated_tokens_cut_where_the_model_truncates(tiny_st: Path) -> None:
    runtime = _st_runtime(version_spec(tiny_st, "1", max_sequence_length=64), tiny_st)
    runtime.load()
    texts = ["hi", "a sentence of a few words", "word " * 200]
    lengths = runtime.item_lengths("text", texts)
    # [CLS] + [SEP] + ceil(characters / 4); the 1000-character text counts as the 64 tokens it is cut to.
    assert lengths == [3, 2 + 7, 64]
    runtime.unload()


def test_the_token_budget_of_a_batch_defaults_by_device() -> None:
    from modelyard.common.modelspec import CPU_BATCH_TOKENS, CUDA_BATCH_TOKENS, InferenceConfig

    assert InferenceConfig().batch_tokens("cpu") == CPU_BATCH_TOKENS == 1024
    assert InferenceConfig().batch_tokens("cuda:1") == CUDA_BATCH_TOKENS == 16384
    assert InferenceConfig(max_batch_tokens=300).batch_tokens("cuda") == 300


SHAPES = [
    ["one"],
    ["a", "a longer sentence with rather more tokens in it", "mid-sized sentence"],
    [f"sentence number {i} " * (i % 7 + 1) for i in range(40)],
]


@pytest.mark.parametrize("quantization", ["", "int8-dynamic"])
def test_sentence_transformers_serves_a_verified_trace_equal_to_encode(
    tiny_st: Path, tiny_st_other: Path, quantization: str
) -> None:
    from sentence_transformers import SentenceTransformer

    from modelyard.inference.loaders import sentence_transformers as st_loader

    traces: list[int] = []
    for path in (tiny_st, tiny_st_other):  # same architecture, other weights: the trace is reused
        runtime = _st_runtime(version_spec(path, "1", quantization=quantization), path)
        runtime.load()
        assert runtime.traced is None  # served through encode until optimized
        runtime.optimize()
        assert runtime.traced is not None
        # One flat module: the tracer turned no submodule into a script module of its own.
        assert not list(runtime.traced.children())
        traces.append(len(st_loader._TEMPLATES))
        for texts in SHAPES:
            served = _embedding(runtime.predict("text", texts))
            assert served.dtype == np.float32 and served.shape == (len(texts), 32)
            # encode on the same (for int8: the same quantized) weights
            np.testing.assert_allclose(served, runtime._encode(texts), atol=1e-5)
            if not quantization:
                reference = SentenceTransformer(str(path), device="cpu").encode(texts)
                np.testing.assert_allclose(served, reference, atol=1e-5)
        runtime.unload()
        assert runtime.traced is None
        runtime.optimize()  # after unload: nothing to trace, and no error
        assert runtime.traced is None
    assert traces[0] == traces[1]  # one TorchScript trace for both versions


def test_a_version_loaded_again_skips_the_trace_check_and_still_equals_encode(
    tiny_st: Path, tiny_st_other: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rollback or a swap back loads a checkpoint this process already traced and checked: the
    check's forward passes are skipped, not the trace; other weights of the same architecture, or
    the same weights at another precision, are checked again."""
    import logging

    def load(path: Path, max_sequence_length: int) -> tuple[SentenceTransformerRuntime, bool]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="modelyard.inference.loaders"):
            runtime = _st_runtime(version_spec(path, "1", max_sequence_length=max_sequence_length), path)
            runtime.load()
            runtime.optimize()
        (traced,) = [r.fields for r in caplog.records if r.getMessage() == "model.traced"]  # type: ignore[attr-defined]
        assert runtime.traced is not None
        return runtime, bool(traced["checked"])

    first, checked = load(tiny_st, max_sequence_length=29)
    assert checked
    first.unload()
    again, checked = load(tiny_st, max_sequence_length=29)
    assert not checked
    for texts in SHAPES:
        np.testing.assert_allclose(_embedding(again.predict("text", texts)), again._encode(texts), atol=1e-5)
    again.unload()
    assert load(tiny_st_other, max_sequence_length=29)[1]  # other weights, same architecture
    assert load(tiny_st, max_sequence_length=27)[1]  # same weights, another sequence length


def test_a_model_with_a_default_prompt_keeps_its_trace_and_prepare_applies_the_prompt(
    tiny_st: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    prompted = tmp_path / "prompted"
    shutil.copytree(tiny_st, prompted)
    config_file = prompted / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text())
    config.update(prompts={"query": "query: ", "document": ""}, default_prompt_name="query")
    config_file.write_text(json.dumps(config))

    runtime = _st_runtime(version_spec(prompted, "1"), prompted)
    runtime.load()
    runtime.optimize()
    assert runtime.traced is not None  # checked against encode on prompted batches too
    texts = SHAPES[1]
    served = _embedding(runtime.predict("text", runtime.prepare("text", [t.encode() for t in texts])))
    np.testing.assert_allclose(
        served, SentenceTransformer(str(prompted), device="cpu").encode(texts), atol=1e-5
    )
    without_prompt = SentenceTransformer(str(tiny_st), device="cpu").encode(texts)
    assert not np.allclose(served, without_prompt, atol=1e-4)
    runtime.unload()


def test_open_clip_embeds_images_and_texts_in_one_space(tiny_clip: Path) -> None:
    runtime = create_runtime(version_spec(tiny_clip, "1", loader="open-clip"), tiny_clip)
    runtime.load()
    runtime.warmup()
    assert {s.name for s in runtime.signature().inputs} == {"image", "text"}
    images = runtime.predict("image", runtime.prepare("image", [png((255, 0, 0)), png((0, 0, 255))]))
    texts = runtime.predict("text", runtime.prepare("text", [b"a red square"]))
    assert _embedding(images).shape == (2, 16) and _embedding(texts).shape == (1, 16)
    np.testing.assert_allclose(np.linalg.norm(images["embedding"], axis=1), 1.0, atol=1e-5)
    assert not np.allclose(images["embedding"][0], images["embedding"][1])
    with pytest.raises(BadInput, match="not a decodable image"):
        runtime.prepare("image", [b"definitely not a png"])
    runtime.unload()

    quantized = create_runtime(
        version_spec(tiny_clip, "2", loader="open-clip", quantization="int8-dynamic"), tiny_clip
    )
    quantized.load()
    q = _embedding(
        quantized.predict("image", quantized.prepare("image", [png((255, 0, 0)), png((0, 0, 255))]))
    )
    assert q.shape == (2, 16) and not np.allclose(q, images["embedding"], atol=1e-6)
    # The text tower too: open_clip asks its quantized MLP layers for their float dtype.
    q_text = _embedding(quantized.predict("text", quantized.prepare("text", [b"a red square"])))
    assert q_text.shape == (1, 16) and float(np.sum(q_text * _embedding(texts))) > 0.9
    quantized.unload()


@pytest.mark.parametrize("kind", ["vision-encoder-decoder", "blip", "blip-2"])
def test_captioning_returns_one_caption_per_image(tmp_path: Path, kind: str) -> None:
    from modelyard.inference.tiny_models import build_tiny_captioner

    path = build_tiny_captioner(tmp_path / kind, kind=kind)
    runtime = create_runtime(version_spec(path, "1", loader="hf-captioning", max_sequence_length=5), path)
    runtime.load()
    runtime.warmup()
    assert [s.name for s in runtime.signature().outputs] == ["caption"]
    captions = runtime.predict("image", runtime.prepare("image", [png(), png((0, 0, 0)), png()]))["caption"]
    assert len(captions) == 3 and all(isinstance(c, bytes) for c in captions)
    assert captions[0] == captions[2]  # greedy decoding is deterministic per image
    with pytest.raises(BadInput):
        runtime.prepare("text", [b"x"])
    runtime.unload()


def test_a_model_that_cannot_be_traced_is_served_through_encode(
    tiny_st: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from modelyard.inference.loaders import sentence_transformers as st_loader

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("this model cannot be traced")

    monkeypatch.setattr(st_loader, "_TEMPLATES", {})  # no trace to reuse: it must trace afresh
    monkeypatch.setattr(torch.jit, "trace", refuse)
    runtime = _st_runtime(version_spec(tiny_st, "1"), tiny_st)
    runtime.load()
    runtime.optimize()  # does not raise: the version serves anyway
    assert runtime.traced is None
    texts = SHAPES[1]
    np.testing.assert_allclose(_embedding(runtime.predict("text", texts)), runtime._encode(texts), atol=1e-6)
    runtime.unload()


def test_the_onnxruntime_engine_serves_what_encode_gives_fp32_and_int8(tiny_st: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from modelyard.inference.loaders.onnx_engine import INT8_MIN_COSINE

    reference = SentenceTransformer(str(tiny_st), device="cpu")
    fp32 = _st_runtime(version_spec(tiny_st, "1", engine="onnxruntime"), tiny_st)
    fp32.load()
    fp32.optimize()
    assert fp32.engine == "onnxruntime" and fp32.onnx is not None and not fp32.onnx.quantized
    assert fp32.traced is None
    for texts in SHAPES:
        np.testing.assert_allclose(
            _embedding(fp32.predict("text", texts)), reference.encode(texts), atol=1e-4
        )
    fp32.unload()
    assert fp32.onnx is None

    int8 = _st_runtime(
        version_spec(tiny_st, "1-int8", engine="onnxruntime", quantization="int8-dynamic"), tiny_st
    )
    int8.load()
    int8.optimize()
    assert int8.engine == "onnxruntime" and int8.onnx.quantized
    texts = SHAPES[2]
    got, expected = _embedding(int8.predict("text", texts)), reference.encode(texts)
    assert not np.allclose(got, expected, atol=1e-4)  # really int8
    cosines = np.sum(got * expected, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosines.min() >= INT8_MIN_COSINE
    assert int8.signature() == fp32.signature()  # the engine changes neither signature nor artifact
    int8.unload()


def test_the_onnxruntime_engine_falls_back_to_torch_and_says_why(
    tiny_st: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no exporter here")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    runtime = _st_runtime(
        version_spec(tiny_st, "1", engine="onnxruntime", quantization="int8-dynamic"), tiny_st
    )
    runtime.load()
    with caplog.at_level("WARNING", logger="modelyard.inference.loaders"):
        runtime.optimize()
    assert runtime.engine == "torch" and runtime.onnx is None
    assert runtime.engine_note == "export failed: RuntimeError: no exporter here"
    (fallback,) = [r for r in caplog.records if r.getMessage() == "model.engine_fallback"]
    assert fallback.fields["reason"] == runtime.engine_note  # type: ignore[attr-defined]
    # It serves through torch, int8 as asked: torch quantized the model it had kept fp32 for onnxruntime.
    assert any("quantized" in type(m).__module__ for m in runtime.model.modules())
    texts = SHAPES[1]
    assert _embedding(runtime.predict("text", texts)).shape == (len(texts), runtime.dim)
    runtime.unload()
