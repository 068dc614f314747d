"""Vocabulary every service shares about a model version: tensor specs, its signature and inference
settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # OIP v2 datatype: "BYTES", "FP32", ...
    shape: tuple[int, ...] = ()  # -1 marks a variable-size dimension


@dataclass(frozen=True)
class Signature:
    """The tensors a version takes and returns; what its consumers depend on."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    embedding_dim: int = 0

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def differences(self, other: Signature) -> list[str]:
        """What a consumer of `self` would notice when served `other`."""
        diffs = []
        if self.embedding_dim != other.embedding_dim:
            diffs.append(f"embedding dimension {other.embedding_dim} instead of {self.embedding_dim}")
        mine = {t.name: t for t in self.outputs}
        theirs = {t.name: t for t in other.outputs}
        for name in sorted(mine.keys() - theirs.keys()):
            diffs.append(f"output {name!r} missing")
        for name in sorted(mine.keys() & theirs.keys()):
            if mine[name].datatype != theirs[name].datatype:
                diffs.append(f"output {name!r} is {theirs[name].datatype} instead of {mine[name].datatype}")
        consumed = {t.name for t in self.inputs}
        offered = {t.name for t in other.inputs}
        for name in sorted(consumed - offered):
            diffs.append(f"input {name!r} no longer accepted")
        return diffs


@dataclass(frozen=True)
class InferenceConfig:
    max_batch_size: int = 32
    max_delay_ms: int = 2
    device: str = "auto"  # "cpu", "cuda", "cuda:N" or "auto"
    dtype: str = "float32"  # or "float16" on CUDA
    max_sequence_length: int = 0
    quantization: str = ""  # "" or "int8-dynamic"
    trust_remote_code: bool = False
