"""Model artifacts: the checkpoint hash, and a local cache keyed by it, filled through fsspec.

Checkpoint hash (lower-case sha256 hex), shared with the CLI's `models import`:
- a single file: sha256 of its bytes;
- a directory: sha256 over every regular file below it, in order of relative POSIX path
  (sorted by its UTF-8 bytes), each contributing `path (UTF-8) + NUL + size (8-byte little
  endian) + contents`. Directories themselves, symlink targets outside the tree, file modes and
  times do not count, so the same files hash the same on any machine and filesystem.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import fsspec

from modelyard.common.log import event
from modelyard.inference.errors import ArtifactUnavailable, CheckpointMismatch

log = logging.getLogger("modelyard.inference.artifacts")

_CHUNK = 1 << 20
_COMPLETE = ".modelyard-verified"
LOCK_DIR = ".locks"  # one lock file per checkpoint hash, shared by every process using the cache


def _hash_file_into(digest: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)


def checkpoint_hash(path: str | os.PathLike[str]) -> str:
    """The checkpoint hash of a local file or directory, as defined in this module's docstring."""
    root = Path(path)
    digest = hashlib.sha256()
    if root.is_file():
        _hash_file_into(digest, root)
        return digest.hexdigest()
    if not root.is_dir():
        raise FileNotFoundError(f"no artifact at {root}")
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.name != _COMPLETE),
        key=lambda p: p.relative_to(root).as_posix().encode(),
    )
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file.stat().st_size.to_bytes(8, "little"))
        _hash_file_into(digest, file)
    return digest.hexdigest()


class ArtifactCache:
    """Local copies of artifacts under `<root>/<checkpoint hash>`, verified before first use.

    Blocking: call `resolve` from an executor thread.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def resolve(self, source_uri: str, expected_hash: str) -> Path:
        """Return a local directory (or file) holding the artifact whose hash is `expected_hash`.

        Raises CheckpointMismatch when the fetched artifact hashes differently; nothing is kept then.
        """
        expected = expected_hash.strip().lower()
        if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
            raise CheckpointMismatch(
                f"checkpoint_hash {expected_hash!r} is not a sha256 hex digest; register the version "
                "with the hash `modelyard models hash PATH` prints"
            )
        with self._lock(expected), self._process_lock(expected):
            entry = self.root / expected
            if (entry / _COMPLETE).exists():
                return self._payload(entry)
            staging = Path(tempfile.mkdtemp(prefix=f".{expected[:12]}-", dir=self.root))
            try:
                payload = self._fetch(source_uri, staging / "artifact")
                actual = checkpoint_hash(payload)
                if actual != expected:
                    event(log, "artifact.hash_mismatch", uri=source_uri, expected=expected, actual=actual)
                    raise CheckpointMismatch(
                        f"artifact at {source_uri} has sha256 {actual}, but the version was registered "
                        f"with {expected}; the artifact changed or the registered hash is wrong"
                    )
                (staging / _COMPLETE).write_text(actual)
                # Only an unverified leftover (a fill cut short) can be here: verified entries returned above.
                shutil.rmtree(entry, ignore_errors=True)
                staging.rename(entry)
                event(log, "artifact.cached", uri=source_uri, checkpoint=expected, path=str(entry))
                return self._payload(entry)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    @contextlib.contextmanager
    def _process_lock(self, key: str) -> Iterator[None]:
        """Exclusive across processes sharing this cache directory (several workers on one host)."""
        locks = self.root / LOCK_DIR
        locks.mkdir(exist_ok=True)
        with (locks / key).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _payload(entry: Path) -> Path:
        return entry / "artifact"

    @staticmethod
    def _fetch(source_uri: str, target: Path) -> Path:
        try:
            fs, path = fsspec.core.url_to_fs(source_uri)
            if not fs.exists(path):
                raise ArtifactUnavailable(f"artifact {source_uri} does not exist")
            if fs.isdir(path):
                target.mkdir(parents=True)
                for remote in fs.find(path):
                    relative = os.path.relpath(remote, path)
                    local = target / relative
                    local.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(remote, str(local))
            else:
                fs.get_file(path, str(target))
        except ArtifactUnavailable:
            raise
        except (OSError, ValueError, ImportError) as exc:
            raise ArtifactUnavailable(f"cannot fetch artifact {source_uri}: {exc}") from exc
        return target
