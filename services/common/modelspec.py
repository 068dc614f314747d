"""Vocabulary every service shares about a model version: tensor specs, its signature and inference
settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # OIP v2 datatype: "BYTES", "FP32", ...
    shape: tuple[int, ...] = ()  # -1 marks a variable-size dimension


# The OIP request parameter that picks one of a version's named prompts (sentence-transformers
# `prompt_name`, e.g. E5's `query` and `passage`).
PROMPT_NAME = "prompt_name"
# Request parameters Modelyard defines for models, with what a version defines for each. A request
# that names one its version does not read is refused: served without it, it would get other
# vectors than it asked for. Other request parameters are ignored, as OIP lets a server do.
MODEL_PARAMETERS = {PROMPT_NAME: "prompts"}


@dataclass(frozen=True)
class RequestParameter:
    """A string request parameter (OIP `parameters`) a version reads: the values it accepts, each
    with what it means (a prompt name and the prompt's text), and the value that applies when a
    request sends none ("": none does)."""

    name: str
    choices: tuple[tuple[str, str], ...] = ()
    default: str = ""

    def values(self) -> tuple[str, ...]:
        return tuple(value for value, _ in self.choices)

    def meaning(self, value: str) -> str | None:
        return dict(self.choices).get(value)


@dataclass(frozen=True)
class Signature:
    """The tensors a version takes and returns, and the request parameters it reads (a model's
    prompts); what its consumers depend on."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    embedding_dim: int = 0
    parameters: tuple[RequestParameter, ...] = ()

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def parameter(self, name: str) -> RequestParameter | None:
        return next((spec for spec in self.parameters if spec.name == name), None)

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
        for parameter in self.parameters:
            kept = other.parameter(parameter.name)
            if kept is None:
                diffs.append(f"request parameter {parameter.name!r} no longer read")
                continue
            for value in parameter.values():
                if kept.meaning(value) is None:
                    diffs.append(f"{parameter.name} {value!r} no longer accepted")
        return diffs


# How request parameters appear in OIP model metadata (its `parameters` map, an extension MLServer
# also makes): every value is a string, so each parameter flattens to one entry per choice,
# `NAME.choice.VALUE` = its meaning, and `NAME.default` = the default when there is one. E5:
# {"prompt_name.choice.passage": "passage: ", "prompt_name.choice.query": "query: "}.
_CHOICE = ".choice."
_DEFAULT = ".default"


def parameters_to_metadata(parameters: tuple[RequestParameter, ...]) -> dict[str, str]:
    entries: dict[str, str] = {}
    for parameter in parameters:
        for value, meaning in parameter.choices:
            entries[f"{parameter.name}{_CHOICE}{value}"] = meaning
        if parameter.default:
            entries[f"{parameter.name}{_DEFAULT}"] = parameter.default
    return entries


def parameters_from_metadata(entries: dict[str, str]) -> tuple[RequestParameter, ...]:
    """The inverse of `parameters_to_metadata`; entries of any other form are left out."""
    choices: dict[str, list[tuple[str, str]]] = {}
    defaults: dict[str, str] = {}
    for key, meaning in sorted(entries.items()):
        name, found, value = key.partition(_CHOICE)
        if found and name and value:
            choices.setdefault(name, []).append((value, meaning))
        elif key.endswith(_DEFAULT) and len(key) > len(_DEFAULT):
            defaults[key[: -len(_DEFAULT)]] = meaning
    return tuple(
        RequestParameter(name, tuple(values), defaults.get(name, ""))
        for name, values in sorted(choices.items())
    )


# On CPU a pass costs about its padded tokens, whatever their number (MiniLM, one thread, batches
# sorted by length: 76-78 texts/s from 8 to 21 texts a pass), so small passes of similar length
# beat large mixed ones: 64 clients of 5-120-word texts got 116 texts/s at 1024 against 78 at 16384
# (docs/benchmarks.md). A GPU wants large passes: text-embeddings-inference's default.
CPU_BATCH_TOKENS = 1024
# What may run a version's passes (InferenceConfig.engine).
ENGINES = ("torch", "onnxruntime")
CUDA_BATCH_TOKENS = 16384


@dataclass(frozen=True)
class InferenceConfig:
    max_batch_size: int = 32
    max_delay_ms: int = 2
    device: str = "auto"  # "cpu", "cuda", "cuda:N" or "auto"
    dtype: str = "float32"  # or "float16" on CUDA
    max_sequence_length: int = 0
    quantization: str = ""  # "" or "int8-dynamic"
    trust_remote_code: bool = False
    # Padded tokens (items x the longest) per batch, for inputs of varying length; 0 = by device:
    # CPU_BATCH_TOKENS or CUDA_BATCH_TOKENS.
    max_batch_tokens: int = 0
    engine: str = "torch"  # or "onnxruntime" (sentence-transformers versions)

    def batch_tokens(self, device: str) -> int:
        """`max_batch_tokens`, or the default for `device` when it is 0."""
        if self.max_batch_tokens:
            return self.max_batch_tokens
        return CUDA_BATCH_TOKENS if device.startswith("cuda") else CPU_BATCH_TOKENS
