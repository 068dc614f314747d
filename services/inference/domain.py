"""Neutral request/response and deployment types; protobuf never goes below the converters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.common.modelspec import InferenceConfig, Signature


@dataclass(frozen=True)
class VersionSpec:
    """One model version as the registry describes it."""

    model_id: str
    version: str
    source_uri: str
    checkpoint_hash: str
    loader: str
    config: InferenceConfig = field(default_factory=InferenceConfig)
    signature: Signature | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        # A version is immutable in the registry; the hash guards against a re-registered name.
        return (self.model_id, self.version, self.checkpoint_hash)


@dataclass(frozen=True)
class DeploymentSpec:
    """What a deployment should serve: versions with weights (0 = staged), and the staged version
    unpinned requests are mirrored to (shadow traffic) with the percent mirrored."""

    name: str
    model_id: str
    routes: tuple[tuple[str, int], ...]
    versions: tuple[VersionSpec, ...]
    revision: int = 0
    mirrors: tuple[tuple[str, int], ...] = ()

    def version(self, name: str) -> VersionSpec | None:
        return next((v for v in self.versions if v.version == name), None)


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    # BYTES -> list[bytes]; numeric -> flat np.ndarray
    data: list[bytes] | np.ndarray


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[bytes] | np.ndarray


@dataclass
class InferenceRequest:
    deployment: str
    version: str
    id: str
    inputs: list[InputTensor]
    requested_outputs: list[str] = field(default_factory=list)
    raw: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferenceResponse:
    deployment: str
    version: str
    id: str
    outputs: list[OutputTensor]
    raw: bool = False
