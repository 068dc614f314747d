"""Code an artifact could make a model library run, and the rule: only when the worker's operator
allowed remote code (`--allow-remote-code`) *and* the version asks for it (`trust_remote_code`).

What an artifact can name, and what is checked here before any library sees it:
- `auto_map` in a Hugging Face config (config.json, tokenizer_config.json, preprocessor_config.json,
  ...): transformers imports the named `.py` files from the artifact. Also a config that sets
  `trust_remote_code` itself.
- sentence-transformers `modules.json` (and a Router's `router_config.json`): each module `type` is
  imported by its dotted name, so anything outside the `sentence_transformers` package is code the
  artifact chose; a module `path` must stay inside the artifact.
- open_clip `hf_model_name` / `hf_tokenizer_name` given as a filesystem path: weights and code from
  outside the artifact.
Pickled weights are not code here: every loader reads safetensors first and any pickle through
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelyard.inference.domain import VersionSpec
from modelyard.inference.errors import RemoteCodeRefused

_ST_CLASS = re.compile(r"^sentence_transformers(\.[A-Za-z_][A-Za-z0-9_]*)+$")
# Data files, not configuration; large, and never read for `auto_map`.
_NOT_CONFIG = frozenset({"tokenizer.json", "vocab.json"})
_ALLOW_HINT = (
    "start the worker with --allow-remote-code (MODELYARD_WORKER_ALLOW_REMOTE_CODE=true) and register "
    "the version with inference_config.trust_remote_code if you trust this artifact's code"
)


def trust_remote_code(spec: VersionSpec, allowed: bool) -> bool:
    """What a loader passes to its library as `trust_remote_code`: True only when the version asks
    and the worker allows; RemoteCodeRefused when the version asks and the worker does not."""
    if not spec.config.trust_remote_code:
        return False
    if not allowed:
        raise RemoteCodeRefused(
            f"version {spec.model_id}:{spec.version} asks for trust_remote_code (Python code from its "
            "artifact would run in this worker), and this worker does not allow remote code; start it "
            "with --allow-remote-code (MODELYARD_WORKER_ALLOW_REMOTE_CODE=true) if you trust the "
            "artifact, or register a version without trust_remote_code"
        )
    return True


def _refuse(spec: VersionSpec, what: str) -> RemoteCodeRefused:
    return RemoteCodeRefused(
        f"version {spec.model_id}:{spec.version}: {what}, which would run code from the artifact; "
        f"refused because remote code is not allowed for it; {_ALLOW_HINT}"
    )


def _config_files(root: Path) -> Iterator[Path]:
    for directory, _dirs, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".json") and name not in _NOT_CONFIG:
                yield Path(directory) / name


def _code_keys(value: Any, path: str = "") -> Iterator[str]:
    """Dotted paths of `auto_map` keys and truthy `trust_remote_code` keys anywhere in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "auto_map" and item:
                yield where
            elif key == "trust_remote_code" and item is True:
                yield where
            else:
                yield from _code_keys(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _code_keys(item, f"{path}[{index}]")


def refuse_custom_code(spec: VersionSpec, root: Path, *, trusted: bool) -> None:
    """Unless trusted: refuse an artifact any of whose JSON configs names custom code."""
    if trusted or not root.is_dir():
        return
    for file in _config_files(root):
        try:
            document = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not JSON the libraries could act on either
        found = next(_code_keys(document), None)
        if found is not None:
            raise _refuse(spec, f"{file.relative_to(root).as_posix()} sets `{found}`")


def _inside(root: Path, relative: str) -> bool:
    if os.path.isabs(relative):
        return False
    target = os.path.normpath(os.path.join(root, relative))
    return target == os.path.normpath(root) or target.startswith(os.path.normpath(root) + os.sep)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _check_module_type(spec: VersionSpec, where: str, class_ref: Any) -> None:
    if not isinstance(class_ref, str) or not _ST_CLASS.match(class_ref):
        raise _refuse(
            spec,
            f"{where} names the module type {class_ref!r}, which is not a class of the "
            "sentence_transformers package",
        )


def _check_router(spec: VersionSpec, root: Path, subfolder: str, depth: int = 0) -> None:
    """A Router module's own config names more module types, each in a subfolder of its own."""
    folder = root / subfolder
    config = _read_json(folder / "router_config.json") or _read_json(folder / "config.json")
    types = config.get("types") if isinstance(config, dict) else None
    if not isinstance(types, dict):
        return
    for module_id, class_ref in types.items():
        where = f"{Path(subfolder, 'router_config.json').as_posix()} types[{module_id!r}]"
        _check_module_type(spec, where, class_ref)
        child = Path(subfolder, str(module_id)).as_posix()
        if not _inside(root, child):
            raise _refuse(spec, f"{where} points outside the artifact")
        if depth < 8 and str(class_ref).endswith(".Router"):
            _check_router(spec, root, child, depth + 1)


def check_sentence_transformer(spec: VersionSpec, root: Path, *, trusted: bool) -> None:
    """Unless trusted: every module in modules.json (and in a Router) is a sentence_transformers
    class, every module path stays inside the artifact, and no config names custom code."""
    if trusted:
        return
    modules = _read_json(root / "modules.json")
    if isinstance(modules, list):
        for index, module in enumerate(modules):
            if not isinstance(module, dict):
                continue
            where = f"modules.json entry {index}"
            _check_module_type(spec, where, module.get("type"))
            subfolder = module.get("path", "")
            if not isinstance(subfolder, str) or not _inside(root, subfolder):
                raise _refuse(spec, f"{where} loads from {subfolder!r}, outside the artifact")
            if str(module.get("type")).endswith(".Router"):
                _check_router(spec, root, subfolder)
    refuse_custom_code(spec, root, trusted=trusted)


def check_open_clip(spec: VersionSpec, root: Path, *, trusted: bool) -> None:
    """Unless trusted: an open_clip config names no text tower or tokenizer by filesystem path
    (those would load from outside the artifact), and no config names custom code."""
    if trusted:
        return
    config = _read_json(root / "open_clip_config.json")
    model_cfg = config.get("model_cfg", config) if isinstance(config, dict) else None
    text_cfg = model_cfg.get("text_cfg") if isinstance(model_cfg, dict) else None
    if isinstance(text_cfg, dict):
        for key in ("hf_model_name", "hf_tokenizer_name"):
            name = text_cfg.get(key)
            if isinstance(name, str) and (name.startswith(("/", ".", "~")) or "\\" in name):
                raise _refuse(spec, f"open_clip_config.json text_cfg.{key} names the local path {name!r}")
    refuse_custom_code(spec, root, trusted=trusted)
