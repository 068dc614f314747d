"""Artifact safety in the worker: sources only from the artifact roots, no symlink followed out of
an artifact, cache entries re-verified before they are served, crash leftovers removed, a size
limit that never evicts what is in use, and no code from an artifact unless the worker's operator
and the version both allow it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import grpc
import pytest
from worker_support import version_spec, with_custom_module

from modelyard.common.artifact_roots import ArtifactRoots
from modelyard.inference.artifacts import (
    LOCK_DIR,
    ArtifactCache,
    ArtifactSymlinkError,
    checkpoint_hash,
)
from modelyard.inference.errors import ArtifactRefused, CacheFull, CheckpointMismatch, RemoteCodeRefused
from modelyard.inference.loaders import create_runtime

if TYPE_CHECKING:
    from modelyard.inference.loaders.sentence_transformers import SentenceTransformerRuntime


def _cache(tmp_path: Path, **options: object) -> ArtifactCache:
    """A cache in tmp/cache whose only artifact root is tmp/store."""
    (tmp_path / "store").mkdir(exist_ok=True)
    return ArtifactCache(tmp_path / "cache", ArtifactRoots.parse(str(tmp_path / "store")), **options)  # type: ignore[arg-type]


def _entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if p.name != LOCK_DIR)


def _model(root: Path, size: int = 64 * 1024, seed: int = 0) -> Path:
    """A directory artifact with a weights file of `size` deterministic bytes."""
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"seed": seed}))
    block = hashlib.sha256(str(seed).encode()).digest()
    (root / "model.safetensors").write_bytes((block * (size // len(block) + 1))[:size])
    (root / "sub" / "tokenizer_config.json").write_text("{}")
    return root


# --- where artifacts may come from ----------------------------------------------------------------


def test_sources_outside_the_roots_are_refused_before_anything_is_read(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    passwd = checkpoint_hash("/etc/passwd")  # the hash an attacker would register
    for uri in (
        "file:///etc/passwd",
        "/etc/passwd",
        f"file://{tmp_path}/store/../../../../etc/passwd",
        f"file://{tmp_path}/store/%2e%2e/%2e%2e/etc/passwd",
        "memory://store/x",
    ):
        with pytest.raises(ArtifactRefused) as refused:
            cache.resolve(uri, passwd)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert passwd not in refused.value.message  # nothing about the file is published
    assert _entries(tmp_path / "cache") == []


def test_a_symlink_inside_the_root_that_leads_out_of_it_is_not_followed(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    (tmp_path / "store" / "etc").symlink_to("/etc")
    (tmp_path / "store" / "model").symlink_to("/etc")
    for uri in (f"file://{tmp_path}/store/etc/passwd", f"file://{tmp_path}/store/model"):
        with pytest.raises(ArtifactRefused, match="symlink"):
            cache.resolve(uri, checkpoint_hash("/etc/passwd"))
    assert _entries(tmp_path / "cache") == []


def test_a_symlink_out_of_the_artifact_refuses_it_whole(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any artifact")
    model = _model(tmp_path / "store" / "model")
    (model / "sub" / "leak.txt").symlink_to(secret)
    with pytest.raises(ArtifactSymlinkError, match=r"sub/leak\.txt"):
        checkpoint_hash(model)  # what `models import` hashes with: no hash for it either
    with pytest.raises(ArtifactRefused, match="outside the artifact"):
        cache.resolve(f"file://{model}", "0" * 64)
    assert _entries(tmp_path / "cache") == []  # nothing copied, not even in a staging directory


def test_symlinks_inside_the_artifact_are_copied_as_the_files_they_name(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    model = _model(tmp_path / "store" / "model")
    (model / "alias.json").symlink_to("config.json")
    (model / "sub-link").symlink_to("sub")  # a directory link does not count
    (model / "dangling").symlink_to("missing")
    expected = checkpoint_hash(model)
    local = cache.resolve(f"file://{model}", expected)
    assert (local / "alias.json").is_file() and not (local / "alias.json").is_symlink()
    assert (local / "alias.json").read_bytes() == (model / "config.json").read_bytes()
    assert not (local / "sub-link").exists() and not (local / "dangling").exists()
    assert checkpoint_hash(local) == expected  # the copy hashes as the source did


def test_the_hash_counts_a_linked_file_like_a_copy(tmp_path: Path) -> None:
    linked, copied = _model(tmp_path / "linked"), _model(tmp_path / "copied")
    (linked / "alias.json").symlink_to("config.json")
    shutil.copyfile(copied / "config.json", copied / "alias.json")
    assert checkpoint_hash(linked) == checkpoint_hash(copied)


# --- cache entries re-verified --------------------------------------------------------------------


def _tamper(path: Path, *, restore_mtime: bool) -> None:
    """Overwrite 4 KiB in the middle of `path`, keeping its size (and, if asked, its mtime)."""
    before = path.stat()
    with path.open("r+b") as handle:
        handle.seek(before.st_size // 2)
        handle.write(b"\xa5" * 4096)
    if restore_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert after.st_size == before.st_size
    assert (after.st_mtime_ns == before.st_mtime_ns) is restore_mtime


@pytest.mark.parametrize("restore_mtime", [False, True], ids=["mtime-changed", "mtime-restored"])
def test_a_changed_cached_file_is_never_served(tmp_path: Path, restore_mtime: bool) -> None:
    model = _model(tmp_path / "store" / "model")
    expected, uri = checkpoint_hash(model), f"file://{model}"
    original = (model / "model.safetensors").read_bytes()
    local = _cache(tmp_path).resolve(uri, expected)
    _tamper(local / "model.safetensors", restore_mtime=restore_mtime)

    restarted = _cache(tmp_path)  # a new worker process on the same cache
    served = restarted.resolve(uri, expected)
    assert (served / "model.safetensors").read_bytes() == original  # fetched again from the source
    assert checkpoint_hash(served) == expected

    _tamper(served / "model.safetensors", restore_mtime=restore_mtime)  # also within one process
    assert (restarted.resolve(uri, expected) / "model.safetensors").read_bytes() == original


def test_a_changed_copy_whose_source_changed_too_is_refused(tmp_path: Path) -> None:
    model = _model(tmp_path / "store" / "model")
    expected, uri = checkpoint_hash(model), f"file://{model}"
    local = _cache(tmp_path).resolve(uri, expected)
    _tamper(local / "model.safetensors", restore_mtime=True)
    _tamper(model / "model.safetensors", restore_mtime=False)
    with pytest.raises(CheckpointMismatch):
        _cache(tmp_path).resolve(uri, expected)
    assert _entries(tmp_path / "cache") == []  # the changed copy is gone, not kept for later


def test_an_unchanged_entry_costs_stat_calls_unless_full_verify_is_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _model(tmp_path / "store" / "model")
    expected, uri = checkpoint_hash(model), f"file://{model}"
    _cache(tmp_path).resolve(uri, expected)
    caplog.set_level(logging.INFO, logger="modelyard.inference.artifacts")
    _cache(tmp_path).resolve(uri, expected)
    assert "artifact.reverified" not in caplog.messages
    full = _cache(tmp_path, full_verify=True)
    full.resolve(uri, expected)
    full.resolve(uri, expected)
    assert caplog.messages.count("artifact.reverified") == 1  # the first time this process serves it


# --- crash leftovers ------------------------------------------------------------------------------

_HOLD_LOCK = """
import fcntl, sys
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_crash_leftovers_are_removed_at_start_but_not_a_fill_in_progress(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    _cache(tmp_path)
    hashes = [hashlib.sha256(bytes([i])).hexdigest() for i in range(4)]
    leftover = root / f".{hashes[0]}-k2j4h5g6"
    old_style = root / f".{hashes[1][:12]}-a1b2c3d4"  # staging name of earlier versions
    unverified = root / hashes[2]
    running = root / f".{hashes[3]}-q9w8e7r6"
    for directory in (leftover, old_style, unverified, running):
        (directory / "artifact").mkdir(parents=True)
        (directory / "artifact" / "weights.bin").write_bytes(b"\0" * 4096)
    (root / "applied-deployments.json").write_text("[]")  # what else lives beside the entries
    (root / LOCK_DIR).mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(root / LOCK_DIR / hashes[3])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        _cache(tmp_path).sweep()  # as a worker does at start
        assert not leftover.exists() and not old_style.exists() and not unverified.exists()
        assert running.exists()  # another process holds its hash's lock: its fill is running
        assert (root / "applied-deployments.json").exists()
    finally:
        holder.communicate("", timeout=10)
    _cache(tmp_path).sweep()
    assert not running.exists()


# --- size limit -----------------------------------------------------------------------------------


def test_the_size_limit_evicts_least_recently_used_entries_nothing_uses(tmp_path: Path) -> None:
    models = {name: _model(tmp_path / "store" / name, size=40_000, seed=i) for i, name in enumerate("abcd")}
    hashes = {name: checkpoint_hash(path) for name, path in models.items()}
    in_use: set[str] = set()
    cache = _cache(tmp_path, max_bytes=100_000, in_use=lambda: in_use)

    def resolve(name: str) -> None:
        cache.resolve(f"file://{models[name]}", hashes[name])
        time.sleep(0.02)  # last-used times a coarse filesystem clock can tell apart

    resolve("a")
    resolve("b")
    resolve("a")  # a is now the most recently used
    resolve("c")  # 3 x 40 kB > 100 kB: b goes, the least recently used
    assert _entries(tmp_path / "cache") == sorted([hashes["a"], hashes["c"]])

    in_use.update({hashes["a"], hashes["c"]})  # both routed: neither may go
    with pytest.raises(CacheFull, match="in use on this worker") as full:
        cache.resolve(f"file://{models['d']}", hashes["d"])
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _entries(tmp_path / "cache") == sorted([hashes["a"], hashes["c"]])  # untouched, no staging

    in_use.discard(hashes["a"])
    resolve("d")
    assert _entries(tmp_path / "cache") == sorted([hashes["c"], hashes["d"]])


def test_an_artifact_larger_than_the_cache_is_refused_before_it_is_copied(tmp_path: Path) -> None:
    model = _model(tmp_path / "store" / "big", size=200_000)
    with pytest.raises(CacheFull, match="cache_max_bytes"):
        _cache(tmp_path, max_bytes=100_000).resolve(f"file://{model}", checkpoint_hash(model))
    assert _entries(tmp_path / "cache") == []


# --- remote code ----------------------------------------------------------------------------------


def test_a_version_asking_for_remote_code_is_refused_unless_the_worker_allows_it(
    tiny_st: Path, tmp_path: Path
) -> None:
    custom = with_custom_module(tiny_st, tmp_path / "custom", tmp_path / "ran.txt")
    runtime = create_runtime(version_spec(custom, "1", trust_remote_code=True), custom)
    with pytest.raises(RemoteCodeRefused, match="MODELYARD_WORKER_ALLOW_REMOTE_CODE") as refused:
        runtime.load()
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert not (tmp_path / "ran.txt").exists()  # the artifact's code never ran


@pytest.mark.parametrize("allowed", [False, True], ids=["neither-allows", "only-the-worker-allows"])
def test_module_types_outside_sentence_transformers_are_refused_unless_both_agree(
    tiny_st: Path, tmp_path: Path, allowed: bool
) -> None:
    custom = with_custom_module(tiny_st, tmp_path / "custom", tmp_path / "ran.txt")
    runtime = create_runtime(version_spec(custom, "1"), custom, allow_remote_code=allowed)
    with pytest.raises(RemoteCodeRefused, match=r"modules.json entry 2 names the module type 'custom_norm"):
        runtime.load()
    assert not (tmp_path / "ran.txt").exists()


def test_remote_code_runs_when_the_worker_allows_it_and_the_version_asks(
    tiny_st: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # transformers appends its modules cache
    custom = with_custom_module(tiny_st, tmp_path / "custom", tmp_path / "ran.txt")
    runtime = cast(
        "SentenceTransformerRuntime",
        create_runtime(version_spec(custom, "1", trust_remote_code=True), custom, allow_remote_code=True),
    )
    try:
        runtime.load()
        assert (tmp_path / "ran.txt").read_text() == "ran"
        assert type(runtime.model[2]).__name__ == "CustomNormalize"
    finally:
        runtime.unload()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda d: _set(d / "config.json", auto_map={"AutoModel": "modeling_evil.EvilModel"}),
            "config.json sets `auto_map`",
        ),
        (
            lambda d: _set(d / "tokenizer_config.json", auto_map={"AutoTokenizer": ["x.Tok", None]}),
            "tokenizer_config.json",
        ),
        (
            lambda d: _set(d / "sentence_bert_config.json", model_args={"trust_remote_code": True}),
            "trust_remote_code",
        ),
        (lambda d: _edit_modules(d, 1, path="../../outside"), "outside the artifact"),
    ],
    ids=["config-auto-map", "tokenizer-auto-map", "config-asks-trust", "module-path-outside"],
)
def test_configs_that_name_code_are_refused_without_remote_code(
    tiny_st: Path, tmp_path: Path, change: object, named: str
) -> None:
    model = Path(shutil.copytree(tiny_st, tmp_path / "model"))
    change(model)  # type: ignore[operator]
    with pytest.raises(RemoteCodeRefused, match=named):
        create_runtime(version_spec(model, "1"), model).load()


def _set(path: Path, **values: object) -> None:
    document = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**document, **values}))


def _edit_modules(model: Path, index: int, **values: object) -> None:
    modules = json.loads((model / "modules.json").read_text())
    modules[index].update(values)
    (model / "modules.json").write_text(json.dumps(modules))


def test_captioning_and_open_clip_refuse_code_their_configs_name(tiny_clip: Path, tmp_path: Path) -> None:
    from modelyard.inference.tiny_models import build_tiny_captioner

    captioner = build_tiny_captioner(tmp_path / "captioner")
    _set(captioner / "preprocessor_config.json", auto_map={"AutoImageProcessor": "proc.EvilProcessor"})
    with pytest.raises(RemoteCodeRefused, match=r"preprocessor_config\.json"):
        create_runtime(version_spec(captioner, "1", loader="hf-captioning"), captioner).load()

    clip = Path(shutil.copytree(tiny_clip, tmp_path / "clip"))
    config = json.loads((clip / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_model_name"] = "/srv/someone-elses-model"
    (clip / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(RemoteCodeRefused, match="hf_model_name"):
        create_runtime(version_spec(clip, "1", loader="open-clip"), clip).load()
