"""Model runtimes, one per model family, registered by loader name."""

from __future__ import annotations

# Before anything imports torchvision through sentence-transformers, open_clip or transformers.
import modelyard.inference.torchvision_compat  # noqa: F401  isort: skip
from modelyard.inference.loaders import hf_captioning as _hf_captioning  # noqa: F401
from modelyard.inference.loaders import open_clip as _open_clip  # noqa: F401
from modelyard.inference.loaders import sentence_transformers as _sentence_transformers  # noqa: F401
from modelyard.inference.loaders.base import (
    ModelRuntime,
    create_runtime,
    load_plugins,
    loader_info,
    loader_names,
    preimport_all,
    register_loader,
)

load_plugins()  # after the built-ins: a plugin cannot take a built-in's name

__all__ = [
    "ModelRuntime",
    "create_runtime",
    "loader_info",
    "loader_names",
    "preimport_all",
    "register_loader",
]
