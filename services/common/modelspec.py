"""Vocabulary every service shares about a model version: tensor specs and inference settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # OIP v2 datatype: "BYTES", "FP32", ...
    shape: tuple[int, ...] = ()  # -1 marks a variable-size dimension


@dataclass(frozen=True)
class InferenceConfig:
    max_batch_size: int = 32
    max_delay_ms: int = 2
    device: str = "auto"  # "cpu", "cuda", "cuda:N" or "auto"
    dtype: str = "float32"  # or "float16" on CUDA
    max_sequence_length: int = 0
    quantization: str = ""  # "" or "int8-dynamic"
    trust_remote_code: bool = False
