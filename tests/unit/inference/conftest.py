"""Tiny model artifacts built once per session for the worker's unit tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import modelyard.inference.torchvision_compat  # noqa: F401  (before any torchvision import)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_st(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st", seed=0)


@pytest.fixture(scope="session")
def tiny_st_other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st-1", seed=1)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelyard.inference.tiny_models import build_tiny_open_clip

    return build_tiny_open_clip(tmp_path_factory.mktemp("models") / "tiny-clip")
