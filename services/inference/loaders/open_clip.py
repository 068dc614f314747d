"""`open-clip` loader: images and texts -> embeddings in one shared space (open_clip `local-dir:`)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from modelyard.common.modelspec import Signature, TensorSpec
from modelyard.inference.errors import BadInput
from modelyard.inference.loaders.base import (
    ModelRuntime,
    Outputs,
    apply_precision,
    decode_images,
    decode_texts,
    register_loader,
    resolve_device,
)
from modelyard.inference.loaders.remote_code import check_open_clip, trust_remote_code


@register_loader
class OpenClipRuntime(ModelRuntime):
    loader_name: ClassVar[str] = "open-clip"

    model: Any = None
    preprocess: Any = None
    tokenizer: Any = None

    @classmethod
    def preimport(cls) -> None:
        import open_clip  # noqa: F401

    def load(self) -> None:
        import open_clip
        import torch

        # open_clip takes no trust_remote_code: an HF text tower's config never gets to run code.
        check_open_clip(self.spec, self.path, trusted=trust_remote_code(self.spec, self.allow_remote_code))
        self.device = resolve_device(self.spec.config.device)
        source = f"local-dir:{self.path}"
        model, _, preprocess = open_clip.create_model_and_transforms(
            source, device=self.device, weights_only=True
        )
        model.eval()
        with torch.inference_mode():
            self.model = apply_precision(model, self.spec, self.device)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(source)
        self.dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        self.dim = int(getattr(model, "embed_dim", 0) or self.model.text_projection.shape[-1])

    def signature(self) -> Signature:
        return Signature(
            inputs=(TensorSpec("image", "BYTES", (-1,)), TensorSpec("text", "BYTES", (-1,))),
            outputs=(TensorSpec("embedding", "FP32", (-1, self.dim)),),
            embedding_dim=self.dim,
        )

    def prepare(self, input_name: str, items: list[bytes]) -> list[Any]:
        if input_name == "text":
            return decode_texts(items, input_name)
        if input_name == "image":
            return [self.preprocess(image) for image in decode_images(items, input_name)]
        raise BadInput(f"input {input_name!r} is not accepted; this model takes `image` or `text` BYTES [N]")

    def prepare_is_cheap(self, input_name: str) -> bool:
        return input_name == "text"

    def predict(self, input_name: str, items: list[Any]) -> Outputs:
        import torch

        with torch.inference_mode():
            if input_name == "text":
                features = self.model.encode_text(self.tokenizer(items).to(self.device), normalize=True)
            else:
                pixels = torch.stack(items).to(self.device, dtype=self.dtype)
                features = self.model.encode_image(pixels, normalize=True)
        return {"embedding": np.asarray(features.float().cpu().numpy(), dtype=np.float32)}

    def warmup_items(self) -> dict[str, list[bytes]]:
        return {"text": [b"a photo of a cat"], "image": [sample_png()]}

    def _release(self) -> None:
        self.model = self.preprocess = self.tokenizer = None


def sample_png(size: int = 32, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small encoded PNG, for warm-up."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()
