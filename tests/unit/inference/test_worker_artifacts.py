"""Artifact hashing (the documented definition) and the hash-keyed, verified local cache."""

from __future__ import annotations

import hashlib
import multiprocessing
from pathlib import Path

import pytest
from worker_support import artifact_cache

from modelyard.inference.artifacts import LOCK_DIR, checkpoint_hash
from modelyard.inference.errors import ArtifactUnavailable, CheckpointMismatch


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    return root


def test_directory_hash_follows_its_documented_definition(tmp_path: Path) -> None:
    root = _tree(tmp_path / "model")
    digest = hashlib.sha256()
    for rel in sorted(["config.json", "sub/weights.bin"], key=str.encode):
        data = (root / rel).read_bytes()
        digest.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    assert checkpoint_hash(root) == digest.hexdigest()
    single = root / "config.json"
    assert checkpoint_hash(single) == hashlib.sha256(single.read_bytes()).hexdigest()


def test_hash_changes_with_content_and_names_but_not_location(tmp_path: Path) -> None:
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert checkpoint_hash(a) == checkpoint_hash(b)
    (b / "sub" / "weights.bin").rename(b / "sub" / "weights2.bin")
    assert checkpoint_hash(a) != checkpoint_hash(b)
    (a / "config.json").write_text('{"a": 2}')
    assert checkpoint_hash(a) != checkpoint_hash(_tree(tmp_path / "c"))


def test_resolve_copies_verifies_and_reuses_by_hash(tmp_path: Path) -> None:
    source = _tree(tmp_path / "model")
    cache = artifact_cache(tmp_path / "cache")
    expected = checkpoint_hash(source)
    local = cache.resolve(f"file://{source}", expected)
    assert checkpoint_hash(local) == expected
    assert local.is_relative_to(tmp_path / "cache" / expected)
    (source / "config.json").write_text("changed after caching")
    assert cache.resolve(str(source), expected) == local  # served from the cache, keyed by hash


def test_mismatched_hash_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    source = _tree(tmp_path / "model")
    cache = artifact_cache(tmp_path / "cache")
    wrong = "f" * 64
    with pytest.raises(CheckpointMismatch, match=f"registered with {wrong}"):
        cache.resolve(str(source), wrong)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name != LOCK_DIR] == []


def test_missing_artifact_and_malformed_hash_are_refused(tmp_path: Path) -> None:
    cache = artifact_cache(tmp_path / "cache")
    with pytest.raises(ArtifactUnavailable):
        cache.resolve(str(tmp_path / "missing"), "a" * 64)
    with pytest.raises(CheckpointMismatch, match="not a sha256"):
        cache.resolve(str(tmp_path), "abc")


def _resolve_and_rehash(root: str, source: str, expected: str) -> str:
    path = artifact_cache(Path(root)).resolve(source, expected)
    return checkpoint_hash(path)  # reads every file, as a loader would, while others may still resolve


def test_workers_sharing_a_cache_directory_do_not_break_each_other(tmp_path: Path) -> None:
    source = tmp_path / "model"
    source.mkdir()
    for i in range(200):
        (source / f"shard-{i:03}.bin").write_bytes(bytes([i % 256]) * 4096)
    expected = checkpoint_hash(source)
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        results = pool.starmap(_resolve_and_rehash, [(str(tmp_path / "cache"), str(source), expected)] * 8)
    assert results == [expected] * 8
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name != LOCK_DIR] == [expected]
