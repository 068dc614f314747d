"""A loader plugin for Modelyard: texts -> one label each, and the probability of every label.

The model is a linear layer over hashed character trigrams, in plain PyTorch. Its artifact is a
directory of two files, neither of which holds code: `classifier.json` (labels, number of hash
buckets) and `weights.safetensors` (`weight` [buckets, labels], `bias` [labels]). `build()` writes
one with seeded weights, for tests and for trying the plugin.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.common.modelspec import Signature, TensorSpec
from modelyard.inference.errors import BadInput
from modelyard.inference.loaders import ModelRuntime
from modelyard.inference.loaders.base import Outputs, decode_texts

CONFIG = "classifier.json"
WEIGHTS = "weights.safetensors"


class HashedTextClassifier(ModelRuntime):
    loader_name: ClassVar[str] = "hashed-text-classifier"
    model_type: ClassVar[str] = "generic"
    declared_inputs: ClassVar[tuple[TensorSpec, ...]] = (TensorSpec("text", "BYTES", (-1,)),)
    declared_outputs: ClassVar[tuple[TensorSpec, ...]] = (
        TensorSpec("label", "BYTES", (-1,)),
        TensorSpec("probabilities", "FP32", (-1, -1)),
    )

    labels: list[str]
    buckets: int
    layer: Any = None

    def load(self) -> None:
        import torch
        from safetensors.torch import load_file

        config = json.loads((self.path / CONFIG).read_text())
        self.labels = [str(label) for label in config["labels"]]
        self.buckets = int(config["buckets"])
        tensors = load_file(str(self.path / WEIGHTS))
        weight, bias = tensors["weight"], tensors["bias"]
        if tuple(weight.shape) != (self.buckets, len(self.labels)) or tuple(bias.shape) != (
            len(self.labels),
        ):
            raise ValueError(f"weights of shape {tuple(weight.shape)} do not fit {CONFIG}")
        layer = torch.nn.Linear(self.buckets, len(self.labels))
        with torch.no_grad():
            layer.weight.copy_(weight.T)
            layer.bias.copy_(bias)
        self.layer = layer.eval()

    def signature(self) -> Signature:
        return Signature(
            inputs=(TensorSpec("text", "BYTES", (-1,)),),
            outputs=(
                TensorSpec("label", "BYTES", (-1,)),
                TensorSpec("probabilities", "FP32", (-1, len(self.labels))),
            ),
        )

    def prepare(self, input_name: str, items: list[bytes]) -> list[Any]:
        if input_name != "text":
            raise BadInput(f"input {input_name!r} is not accepted; this model takes `text` BYTES [N]")
        return decode_texts(items, input_name)

    def prepare_is_cheap(self, input_name: str) -> bool:
        return True

    def predict(self, input_name: str, items: list[Any]) -> Outputs:
        import torch

        features = torch.from_numpy(np.stack([trigram_counts(text, self.buckets) for text in items]))
        with torch.inference_mode():
            probabilities = torch.softmax(self.layer(features), dim=1).numpy().astype(np.float32)
        best = probabilities.argmax(axis=1)
        return {"label": [self.labels[i].encode() for i in best], "probabilities": probabilities}

    def warmup_items(self) -> dict[str, list[bytes]]:
        return {"text": [b"warm up"]}

    def _release(self) -> None:
        self.layer = None


def trigram_counts(text: str, buckets: int) -> np.ndarray:
    """Counts of the text's character trigrams, hashed into `buckets`, scaled to unit length."""
    counts = np.zeros(buckets, dtype=np.float32)
    padded = f"  {text.lower()} "
    for i in range(len(padded) - 2):
        counts[zlib.crc32(padded[i : i + 3].encode()) % buckets] += 1.0
    norm = float(np.linalg.norm(counts))
    return counts / norm if norm else counts


def build(directory: Path, labels: list[str], *, buckets: int = 256, seed: int = 0) -> Path:
    """Write an artifact with seeded random weights (no training: a stand-in for yours)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text(json.dumps({"labels": labels, "buckets": buckets}))
    save_file(
        {
            "weight": torch.randn(buckets, len(labels), generator=generator),
            "bias": torch.zeros(len(labels)),
        },
        str(directory / WEIGHTS),
    )
    return directory
