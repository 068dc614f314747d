"""`open-clip` loader: images and texts -> embeddings in one shared space (open_clip `local-dir:`),
for CLIP and SigLIP checkpoints alike."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.common.log import event
from modelyard.common.modelspec import Signature, TensorSpec
from modelyard.inference.errors import ArtifactRefused, BadInput
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

log = logging.getLogger("modelyard.inference.loaders")

# What open_clip reads as a `local-dir:` model's weights (`factory._find_checkpoint_in_dir`).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")


@register_loader
class OpenClipRuntime(ModelRuntime):
    loader_name: ClassVar[str] = "open-clip"
    model_type: ClassVar[str] = "image_embedding"
    declared_inputs: ClassVar[tuple[TensorSpec, ...]] = (
        TensorSpec("image", "BYTES", (-1,)),
        TensorSpec("text", "BYTES", (-1,)),
    )
    declared_outputs: ClassVar[tuple[TensorSpec, ...]] = (TensorSpec("embedding", "FP32", (-1, -1)),)

    preprocess: Any = None
    tokenizer: Any = None
    # Read from the loaded model: "sigmoid" for SigLIP (it has a logit bias), "softmax" for CLIP.
    scores: str = ""
    logit_scale: float = 0.0
    logit_bias: float | None = None
    preprocess_cfg: dict[str, Any]  # open_clip's, as the model was built with it

    @classmethod
    def preimport(cls) -> None:
        import open_clip  # noqa: F401

    def load(self) -> None:
        import open_clip

        # open_clip takes no trust_remote_code: an HF text tower's config never gets to run code.
        check_open_clip(self.spec, self.path, trusted=trust_remote_code(self.spec, self.allow_remote_code))
        _require_weights(self.path)
        self.device = resolve_device(self.spec.config.device)
        source = f"local-dir:{self.path}"
        # The transforms come from the artifact's preprocess_cfg (size, mean/std, resize mode):
        # SigLIP's 0.5/0.5 and squash resize, not CLIP's, when its config says so.
        model, _, preprocess = open_clip.create_model_and_transforms(
            source, device=self.device, weights_only=True
        )
        model.eval()
        self.model = self._with_precision(model)
        self.preprocess = preprocess
        self.preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        self.tokenizer = open_clip.get_tokenizer(source)
        self.dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        self.dim = self._embedding_dim()
        # SigLIP is trained with a sigmoid loss and carries a learned logit bias: a consumer turns
        # cosine similarities into scores with sigmoid(scale * cos + bias), each pair on its own,
        # where CLIP's softmax(scale * cos) compares the candidates with one another.
        bias = getattr(model, "logit_bias", None)
        self.scores = "sigmoid" if bias is not None else "softmax"
        self.logit_scale = float(model.logit_scale.detach().float().exp().mean())
        self.logit_bias = float(bias.detach().float().mean()) if bias is not None else None
        event(log, "model.open_clip", model=self.spec.model_id, version=self.spec.version,
              family="siglip" if bias is not None else "clip", scores=self.scores,
              logit_scale=round(self.logit_scale, 4), logit_bias=self.logit_bias,
              embedding_dim=self.dim, image_size=self.preprocess_cfg.get("size"))  # fmt: skip

    def _with_precision(self, model: Any) -> Any:
        """`apply_precision`, keeping what open_clip cannot run quantized working."""
        import torch

        # open_clip calls a text projection only when it *is* an nn.Linear (SigLIP's, with a bias),
        # else multiplies by it: a quantized one would be neither. One small layer stays float.
        text_tower: Any = getattr(model, "text", None)
        projection = getattr(text_tower, "text_projection", None)
        keep_float = bool(self.spec.config.quantization) and isinstance(projection, torch.nn.Linear)
        if keep_float:
            text_tower.text_projection = None
        try:
            with torch.inference_mode():
                model = apply_precision(model, self.spec, self.device)
        finally:
            if keep_float:
                text_tower.text_projection = projection
        _mark_quantized_dtype(model)
        return model

    def _embedding_dim(self) -> int:
        """What both towers return, measured on one text and one blank image: where the dimension
        lives differs by tower (CLIP's `text_projection`, a SigLIP timm trunk's width, an HF text
        tower's projection), and a model whose towers disagree has no shared space to serve."""
        import torch

        size = self.preprocess_cfg.get("size", 224)
        height, width = (size, size) if isinstance(size, int) else size
        with torch.inference_mode():
            text = self.model.encode_text(self.tokenizer(["a"]).to(self.device))
            blank = torch.zeros(1, 3, height, width, device=self.device, dtype=self.dtype)
            image = self.model.encode_image(blank)
        text_dim, image_dim = int(text.shape[-1]), int(image.shape[-1])
        if text_dim != image_dim:
            raise BadInput(
                f"open_clip model at {self.path.name} embeds texts in {text_dim} and images in "
                f"{image_dim} dimensions; the open-clip loader serves one shared space"
            )
        return text_dim

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


def _require_weights(root: Path) -> None:
    """Without a weights file in the artifact open_clip builds the model anyway: random weights, or
    a timm / HF tower's pretrained weights fetched from the Hub, outside the checkpoint hash."""
    if not root.is_dir():
        return  # not a `local-dir:` model at all: open_clip says so
    if not any(p.is_file() and p.suffix in _WEIGHT_SUFFIXES for p in root.iterdir()):
        raise ArtifactRefused(
            f"open_clip artifact {root.name} has no weights file (*.safetensors, *.bin or *.pth "
            "beside open_clip_config.json); open_clip would serve random or downloaded weights"
        )


def sample_png(size: int = 32, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small encoded PNG, for warm-up."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _mark_quantized_dtype(model: Any) -> None:
    """open_clip's text blocks take their compute dtype from their first MLP layer's `weight.dtype`;
    after dynamic int8 quantization `weight` is a method and text encoding raises. open_clip reads
    `int8_original_dtype` first (what its own int8 conversion sets): the float dtype quantized from,
    float32 on CPU, the only device int8-dynamic runs on."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            module.int8_original_dtype = torch.float32  # type: ignore[assignment]
