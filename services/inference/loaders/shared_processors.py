"""One tokenizer (processor) for every loaded sentence-transformers version built from the same
tokenizer files with the same settings.

Building a SentenceTransformer spends about half its time on the tokenizer (MiniLM, idle, one
thread: 65 ms to build the model, 26-31 ms when the tokenizer is reused), most of it parsing
`tokenizer.json` while holding the GIL, which serving threads then wait for. A swap between an
fp32 and an int8 version of one checkpoint, a swap back or a rollback, and a fine-tune that kept
its base model's tokenizer all build the same tokenizer again.

Reuse is exact, not a guess: the key is a digest of every file in the directory the tokenizer is
loaded from (weights aside, which never feed it), the keyword arguments sentence-transformers
passes (`model_max_length`, `trust_remote_code`, ...) and the version's sequence length. Passes
of versions sharing a tokenizer call it with equal truncation and padding, so none of them changes
its settings under another (sentence-transformers sets them per call only when they differ).
Entries are weak: a tokenizer goes when the last version using it unloads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelyard.inference.artifacts import hash_file_into

# Files that hold weights: never read by a tokenizer, and the bulk of an artifact's bytes.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".ckpt", ".gguf")

_SHARED: weakref.WeakValueDictionary[tuple[str, ...], Any] = weakref.WeakValueDictionary()
# Held while a build runs with the shim in place (builds run one at a time on the load thread).
_LOCK = threading.Lock()


def files_digest(directory: Path) -> str:
    """SHA-256 over the names and bytes of `directory`'s files (not its subdirectories), weights aside."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        if path.name.endswith(_WEIGHT_SUFFIXES):
            continue
        digest.update(path.name.encode() + b"\0" + path.stat().st_size.to_bytes(8, "little"))
        hash_file_into(digest, path)
    return digest.hexdigest()


@contextlib.contextmanager
def sharing_processors(root: Path, settings: str) -> Iterator[None]:
    """While a SentenceTransformer is built from the artifact at `root`, its processor comes from
    an earlier build with the same files, keyword arguments and `settings` (the version's own
    tokenizer settings, e.g. its sequence length), when one is still loaded. Loads from anywhere
    else are passed through untouched."""
    try:
        from sentence_transformers.base.modules import transformer
    except ImportError:  # another layout of sentence-transformers: build as usual
        yield
        return
    module: Any = transformer
    real: Any = getattr(module, "AutoProcessor", None)
    if real is None:
        yield
        return
    root = root.resolve()

    class Shared:
        @staticmethod
        def from_pretrained(source: Any, *args: Any, **kwargs: Any) -> Any:
            directory = Path(str(source)).resolve()
            if args or not directory.is_dir() or not directory.is_relative_to(root):
                return real.from_pretrained(source, *args, **kwargs)
            key = (files_digest(directory), json.dumps(kwargs, sort_keys=True, default=repr), settings)
            found = _SHARED.get(key)
            if found is None:
                found = real.from_pretrained(source, **kwargs)
                with contextlib.suppress(TypeError):  # a processor that cannot be weakly referenced
                    _SHARED[key] = found
            return found

    with _LOCK:
        module.AutoProcessor = Shared
        try:
            yield
        finally:
            module.AutoProcessor = real


def shared_count() -> int:
    """How many processors are kept for reuse now."""
    return len(_SHARED)
