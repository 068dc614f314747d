"""`hf-captioning` loader: image -> caption with BLIP, BLIP-2 or any VisionEncoderDecoder model."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from modelyard.common.modelspec import Signature, TensorSpec
from modelyard.inference.errors import BadInput
from modelyard.inference.loaders.base import (
    ModelRuntime,
    Outputs,
    apply_precision,
    decode_images,
    register_loader,
    resolve_device,
)
from modelyard.inference.loaders.open_clip import sample_png
from modelyard.inference.loaders.remote_code import refuse_custom_code, trust_remote_code

# config.json `model_type` -> the transformers class that generates captions for it. Chosen by the
# type the checkpoint declares, never by its directory or architecture names.
MODEL_CLASSES = {
    "blip": "BlipForConditionalGeneration",
    "blip-2": "Blip2ForConditionalGeneration",
    "vision-encoder-decoder": "VisionEncoderDecoderModel",
}


@register_loader
class CaptioningRuntime(ModelRuntime):
    loader_name: ClassVar[str] = "hf-captioning"
    model_type: ClassVar[str] = "captioning"
    declared_inputs: ClassVar[tuple[TensorSpec, ...]] = (TensorSpec("image", "BYTES", (-1,)),)
    declared_outputs: ClassVar[tuple[TensorSpec, ...]] = (TensorSpec("caption", "BYTES", (-1,)),)

    image_processor: Any = None
    tokenizer: Any = None
    max_new_tokens = 20
    kind = ""  # config.json model_type: a key of MODEL_CLASSES

    @classmethod
    def preimport(cls) -> None:
        from transformers import (  # noqa: F401
            AutoImageProcessor,
            AutoTokenizer,
            Blip2ForConditionalGeneration,
            BlipForConditionalGeneration,
            VisionEncoderDecoderModel,
        )

    def load(self) -> None:
        import torch
        import transformers
        from transformers import AutoImageProcessor, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        trust = trust_remote_code(self.spec, self.allow_remote_code)
        refuse_custom_code(self.spec, self.path, trusted=trust)
        self.device = resolve_device(self.spec.config.device)
        config = json.loads((self.path / "config.json").read_text())
        kind = config.get("model_type", "")
        if kind not in MODEL_CLASSES:
            raise BadInput(
                "hf-captioning loads BLIP, BLIP-2 or VisionEncoderDecoder checkpoints "
                f"(model_type {', '.join(sorted(MODEL_CLASSES))}); config.json says {kind!r}"
            )
        if kind == "blip-2" and config.get("image_token_index") is None:
            # Without it generate() cannot place the Q-Former's outputs (transformers >= 4.47).
            raise BadInput(
                "this BLIP-2 checkpoint's config.json has no image_token_index (saved before "
                "transformers 4.47); save it again with a current Blip2Processor and model"
            )
        self.kind = kind
        common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust}
        model_class = getattr(transformers, MODEL_CLASSES[kind])
        model: Any = model_class.from_pretrained(self.path, **common)
        self.image_processor = AutoImageProcessor.from_pretrained(self.path, **common)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, **common)
        model.eval().to(self.device)
        with torch.inference_mode():
            self.model = apply_precision(model, self.spec, self.device)
        self.dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        if self.spec.config.max_sequence_length > 0:
            self.max_new_tokens = self.spec.config.max_sequence_length

    def signature(self) -> Signature:
        return Signature(
            inputs=(TensorSpec("image", "BYTES", (-1,)),),
            outputs=(TensorSpec("caption", "BYTES", (-1,)),),
        )

    def prepare(self, input_name: str, items: list[bytes]) -> list[Any]:
        """Decoded and resized here, before batching: what waits in the queue is the model's input
        size (a few hundred pixels a side), not each full-size decoded image."""
        if input_name != "image":
            raise BadInput(f"input {input_name!r} is not accepted; this model takes `image` BYTES [N]")
        images = decode_images(items, input_name)
        return list(self.image_processor(images=images, return_tensors="pt")["pixel_values"])

    def predict(self, input_name: str, items: list[Any]) -> Outputs:
        import torch

        pixels = torch.stack(items)
        with torch.inference_mode():
            tokens = self.model.generate(
                pixel_values=pixels.to(self.device, dtype=self.dtype),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
            )
        captions = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return {"caption": [caption.strip().encode("utf-8") for caption in captions]}

    def warmup_items(self) -> dict[str, list[bytes]]:
        return {"image": [sample_png()]}

    def _release(self) -> None:
        self.model = self.image_processor = self.tokenizer = None
