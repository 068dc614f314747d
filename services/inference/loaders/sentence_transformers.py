"""`sentence-transformers` loader: text -> L2-normalized (when the model says so) embeddings."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from modelyard.inference.domain import ModelSignature, TensorSpec
from modelyard.inference.errors import BadInput
from modelyard.inference.loaders.base import (
    ModelRuntime,
    Outputs,
    apply_precision,
    decode_texts,
    register_loader,
    resolve_device,
)


@register_loader
class SentenceTransformerRuntime(ModelRuntime):
    loader_name: ClassVar[str] = "sentence-transformers"

    model: Any = None

    @classmethod
    def preimport(cls) -> None:
        import sentence_transformers  # noqa: F401

    def load(self) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.device = resolve_device(self.spec.config.device)
        model = SentenceTransformer(
            str(self.path),
            device=self.device,
            local_files_only=True,
            trust_remote_code=self.spec.config.trust_remote_code,
        )
        if self.spec.config.max_sequence_length > 0:
            model.max_seq_length = self.spec.config.max_sequence_length
        model.eval()
        with torch.inference_mode():
            self.model = apply_precision(model, self.spec, self.device)
        self.dim = int(self.model.get_embedding_dimension() or 0)

    def signature(self) -> ModelSignature:
        return ModelSignature(
            inputs=(TensorSpec("text", "BYTES", (-1,)),),
            outputs=(TensorSpec("embedding", "FP32", (-1, self.dim)),),
            embedding_dim=self.dim,
        )

    def prepare(self, input_name: str, items: list[bytes]) -> list[Any]:
        if input_name != "text":
            raise BadInput(f"input {input_name!r} is not accepted; this model takes `text` BYTES [N]")
        return decode_texts(items, input_name)

    def prepare_is_cheap(self, input_name: str) -> bool:
        return input_name == "text"

    def predict(self, input_name: str, items: list[Any]) -> Outputs:
        import torch

        with torch.inference_mode():
            vectors = self.model.encode(
                items, batch_size=max(1, len(items)), convert_to_numpy=True, show_progress_bar=False
            )
        return {"embedding": np.asarray(vectors, dtype=np.float32)}

    def warmup_items(self) -> dict[str, list[bytes]]:
        return {"text": [b"warm up", b"a slightly longer warm up sentence for the model"]}

    def _release(self) -> None:
        self.model = None
