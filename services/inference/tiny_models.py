"""Tiny models, built in well under a second, that tests and the demo serve like real ones.

Each builder writes a directory in its loader's format and returns its path. Weights are random
but seeded, so the same call writes byte-identical weights (and thus the same checkpoint hash).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import modelyard.inference.torchvision_compat  # noqa: F401  (before any torchvision import)

_WORDS = (
    "the a an of to and in is on for with at by from cat dog bird fish sat ran runs fast slow red blue "
    "green yellow model serving weights swap route canary version embedding image caption text hello "
    "world photo picture small large tiny quick brown fox jumps over lazy"
).split()
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _vocab() -> dict[str, int]:
    return {word: index for index, word in enumerate([*_SPECIAL, *_WORDS])}


def build_tiny_sentence_transformer(target: str | Path, *, seed: int = 0, hidden: int = 32) -> Path:
    """A 2-layer BERT + mean pooling + normalize, saved as a sentence-transformers directory."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    _quiet()
    target = Path(target)
    staging = target.with_name(target.name + ".hf")
    torch.manual_seed(seed)
    tokenizer = BertTokenizer(vocab=_vocab(), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(_vocab()),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    transformer = Transformer(str(staging), max_seq_length=48)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    model.save(str(target))
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_open_clip(target: str | Path, *, seed: int = 0, embed_dim: int = 16) -> Path:
    """A tiny ViT + text transformer CLIP in open_clip's `local-dir:` format."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    preprocess_cfg = {
        "size": [32, 32],
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    }
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(target / "open_clip_model.safetensors"))
    (target / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2)
    )
    return target


# SigLIP's image side: timm's `test_vit3` is its smallest ViT pooled like SigLIP's (no class token,
# attention-pool "map" head); open_clip's SigLIP configs all name a timm tower, and open_clip passes
# no size arguments to timm, so a tiny tower has to be a named timm architecture. Its width is the
# embedding dimension (SigLIP projects nothing after the timm trunk: `timm_proj: none`).
TINY_SIGLIP_TOWER = "test_vit3"
TINY_SIGLIP_DIM = 96
TINY_SIGLIP_IMAGE = 160  # test_vit3's input size; its position embeddings are fixed to it


def build_tiny_siglip(target: str | Path, *, seed: int = 0, context_length: int = 16) -> Path:
    """A tiny SigLIP in open_clip's `local-dir:` format: the layout of ViT-B-16-SigLIP's
    `open_clip_config.json` (timm tower with a MAP head, custom text tower without causal mask
    pooled at the last token, `init_logit_bias`, SigLIP's mean/std and squash resize), and an HF
    tokenizer built from a small word list and saved beside it: open_clip reads the tokenizer of a
    `local-dir:` model from that directory, so nothing is downloaded."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from transformers import BertTokenizer

    _quiet()
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(vocab=_vocab(), do_lower_case=True)
    model_cfg = {
        "embed_dim": TINY_SIGLIP_DIM,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {
            "image_size": TINY_SIGLIP_IMAGE,
            "timm_model_name": TINY_SIGLIP_TOWER,
            "timm_model_pretrained": False,
            "timm_pool": "map",
            "timm_proj": "none",
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": len(tokenizer),
            # Only a marker: for a `local-dir:` model open_clip loads the tokenizer from the directory.
            "hf_tokenizer_name": "modelyard/tiny-siglip",
            "tokenizer_kwargs": {"clean": "canonicalize"},
            "width": 32,
            "heads": 2,
            "layers": 1,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
        },
    }
    preprocess_cfg = {
        "size": [TINY_SIGLIP_IMAGE, TINY_SIGLIP_IMAGE],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "resize_mode": "squash",
    }
    torch.manual_seed(seed)
    model_args = {k: v for k, v in model_cfg.items() if k != "custom_text"}
    model = open_clip.CustomTextCLIP(**model_args)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(target / "open_clip_model.safetensors"))
    tokenizer.save_pretrained(target)
    (target / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2)
    )
    return target


# The vision tower of the tiny captioners: one 32-wide layer on 32-pixel images in 8-pixel patches.
_TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}


def build_tiny_captioner(target: str | Path, *, seed: int = 0, kind: str = "vision-encoder-decoder") -> Path:
    """A tiny image captioner: `vision-encoder-decoder` (ViT + BERT decoder), `blip` or `blip-2`."""
    import torch
    from transformers import BertTokenizer

    _quiet()
    target = Path(target)
    torch.manual_seed(seed)
    tokenizer = BertTokenizer(vocab=_vocab(), do_lower_case=True)
    if kind == "blip-2":
        return _save_tiny_blip2(target, tokenizer)
    if kind == "blip":
        from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

        blip_config = BlipConfig(
            vision_config=dict(_TINY_VISION),  # a copy: the config classes may change what they get
            text_config={
                "vocab_size": len(_vocab()),
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "encoder_hidden_size": 32,
                "max_position_embeddings": 32,
                "bos_token_id": 2,
                "sep_token_id": 3,
                "pad_token_id": 0,
            },
            projection_dim=16,
        )
        blip = BlipForConditionalGeneration(blip_config)
        blip.config.decoder_start_token_id = 2
        blip.generation_config.decoder_start_token_id = 2
        blip.save_pretrained(target)
        processor = BlipProcessor(
            image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
        )
        processor.save_pretrained(target)
        return target
    from transformers import (
        BertConfig,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    encoder = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    decoder = BertConfig(
        vocab_size=len(_vocab()),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        is_decoder=True,
        add_cross_attention=True,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = tokenizer.cls_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.sep_token_id
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = tokenizer.cls_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.sep_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(target)
    return target


BLIP2_QUERY_TOKENS = 4


def _save_tiny_blip2(target: Path, tokenizer: Any) -> Path:
    """BLIP-2: a 1-layer ViT, a 1-layer Q-Former with 4 queries, a 1-layer OPT, and a Blip2Processor.

    Since transformers 4.47 BLIP-2 marks where the queries go with image tokens: the processor adds
    `<image>` to the tokenizer, and the model's `image_token_index` names it, so `generate` on
    pixels alone starts from `num_query_tokens` image tokens and BOS, the processor's layout.
    """
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )

    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        num_query_tokens=BLIP2_QUERY_TOKENS,
    )
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    ids = {"bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = Blip2Config(
        # BLIP-2's default initializer range (1e-10) leaves random patch embeddings ~0: every image
        # would look alike.
        vision_config={**_TINY_VISION, "initializer_range": 0.02},
        qformer_config={
            "vocab_size": len(processor.tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "cross_attention_frequency": 1,
        },
        text_config={
            "model_type": "opt",
            "vocab_size": len(processor.tokenizer),
            "hidden_size": 32,
            "word_embed_proj_dim": 32,
            "ffn_dim": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 128,
            **ids,
        },
        num_query_tokens=BLIP2_QUERY_TOKENS,
        image_token_index=image_token,
    )
    model = Blip2ForConditionalGeneration(config)
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target
