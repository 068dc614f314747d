"""Model artifacts: the checkpoint hash, and a local cache keyed by it, filled through fsspec.

Checkpoint hash (lower-case sha256 hex), shared with the CLI's `models import`:
- a single file: sha256 of its bytes;
- a directory: sha256 over every regular file below it, in order of relative POSIX path
  (sorted by its UTF-8 bytes), each contributing `path (UTF-8) + NUL + size (8-byte little
  endian) + contents`. A symlink to a file inside the directory counts as a regular file holding
  the target's bytes (a copy of the artifact holds exactly that); a symlink whose target lies
  outside the directory makes it no artifact at all (ArtifactSymlinkError, no hash). Directories,
  symlinks to directories, other special files, file modes and times do not count, so the same
  files hash the same on any machine and filesystem.

Cache: `<root>/<hash>/artifact` is a verified copy; beside it a manifest (relative path, size,
mtime_ns, ctime_ns per file) recorded when the copy was verified, and a marker whose mtime says when
it was last used. Every `resolve` compares the manifest with the files (a few stat calls) and
re-hashes the copy when anything differs; a copy that no longer hashes right is deleted and fetched
again. ctime is set by the kernel on every write and cannot be put back with `os.utime`, so bytes
changed through the filesystem are seen even when the mtime was restored; what the stat check
cannot see (writes below the filesystem, a filesystem that keeps no ctime) `full_verify` catches,
by re-hashing every entry the first time a process serves it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from modelyard.common.artifact_roots import ArtifactLocationError, ArtifactRoots, local_path
from modelyard.common.log import event
from modelyard.inference.errors import (
    ArtifactRefused,
    ArtifactUnavailable,
    CacheFull,
    CheckpointMismatch,
)

log = logging.getLogger("modelyard.inference.artifacts")

_CHUNK = 1 << 20
_COMPLETE = ".modelyard-verified"
_MANIFEST = ".modelyard-manifest.json"
_USED = ".modelyard-used"
LOCK_DIR = ".locks"  # one lock file per checkpoint hash, shared by every process using the cache
_HASH = re.compile(r"^[0-9a-f]{64}$")
# `.<hash>-XXXX`: a fill in progress, or left behind by one cut short (older fills used 12 digits).
_STAGING = re.compile(r"^\.([0-9a-f]{12,64})-")


class ArtifactSymlinkError(ArtifactRefused):
    """A symlink in the artifact leads outside it."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def artifact_files(root: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, file to read) for every file of a directory artifact, sorted as the
    hash orders them; raises ArtifactSymlinkError for a symlink that leads outside `root`."""
    real_root = os.path.realpath(root)
    found: list[tuple[str, Path]] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            path = os.path.join(directory, name)
            relative = Path(os.path.relpath(path, root)).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                target = os.path.realpath(path)
                if not _inside(target, real_root):
                    raise ArtifactSymlinkError(
                        f"{relative} in the artifact is a symlink to {target}, outside the artifact; "
                        "symlinks are never followed out of an artifact: replace the link with a copy "
                        "of the file (e.g. `cp -rL SRC DST`) and hash and register the copy"
                    )
                if os.path.isfile(target):
                    found.append((relative, Path(target)))
            elif stat.S_ISREG(mode) and name != _COMPLETE:
                found.append((relative, Path(path)))
    found.sort(key=lambda item: item[0].encode())
    return found


def hash_file_into(digest: hashlib._Hash, path: Path) -> None:
    """Feed `path`'s bytes into `digest`, a chunk at a time."""
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)


def checkpoint_hash(path: str | os.PathLike[str]) -> str:
    """The checkpoint hash of a local file or directory, as defined in this module's docstring."""
    root = Path(path)
    digest = hashlib.sha256()
    if root.is_file():
        hash_file_into(digest, root)
        return digest.hexdigest()
    if not root.is_dir():
        raise FileNotFoundError(f"no artifact at {root}")
    for relative, file in artifact_files(root):
        digest.update(relative.encode() + b"\0")
        digest.update(file.stat().st_size.to_bytes(8, "little"))
        hash_file_into(digest, file)
    return digest.hexdigest()


def _manifest(payload: Path) -> list[list[Any]]:
    """What the stat check compares: [relative path, kind, size, mtime_ns, ctime_ns] per entry
    (lstat, so a symlink planted in a cached copy shows as a difference)."""
    if not payload.is_dir():
        st = os.lstat(payload)
        return [["", stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ctime_ns]]
    rows: list[list[Any]] = []
    for directory, dirnames, filenames in os.walk(payload, followlinks=False):
        for name in (*dirnames, *filenames):
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                continue
            relative = Path(os.path.relpath(path, payload)).as_posix()
            rows.append([relative, stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    rows.sort(key=lambda row: str(row[0]).encode())
    return rows


def _manifest_bytes(rows: list[list[Any]]) -> int:
    return sum(int(row[2]) for row in rows)


@dataclass(frozen=True)
class _Entry:
    checkpoint: str
    path: Path
    size: int
    last_used: float


class ArtifactCache:
    """Local copies of artifacts under `<root>/<checkpoint hash>`, verified before use.

    `roots` are the artifact roots a source must lie in; `max_bytes` (0 = no limit) bounds the
    verified entries, evicting the least recently used ones `in_use` (checkpoint hashes the worker
    routes, drains or is loading) does not name. Blocking: call `resolve` and `sweep` from an
    executor thread.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        roots: ArtifactRoots,
        *,
        max_bytes: int = 0,
        in_use: Callable[[], Collection[str]] | None = None,
        full_verify: bool = False,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.roots = roots
        self.max_bytes = max_bytes
        self._in_use = in_use or (lambda: ())
        self.full_verify = full_verify
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._verified: set[str] = set()  # entries this process hashed itself
        self._swept = False

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    # --- resolving ------------------------------------------------------------------------------
    def resolve(self, source_uri: str, expected_hash: str) -> Path:
        """Return a local directory (or file) holding the artifact whose hash is `expected_hash`.

        Raises ArtifactRefused when the source breaks the artifact rules, CheckpointMismatch when
        the fetched artifact hashes differently (nothing is kept then), CacheFull when it does not
        fit beside the entries in use.
        """
        expected = expected_hash.strip().lower()
        if not _HASH.match(expected):
            raise CheckpointMismatch(
                f"checkpoint_hash {expected_hash!r} is not a sha256 hex digest; register the version "
                "with the hash `modelyard models hash PATH` prints"
            )
        source = self._allowed_source(source_uri)
        if not self._swept:
            self.sweep()
        with self._lock(expected), self._process_lock(expected):
            entry = self.root / expected
            if (entry / _COMPLETE).exists():
                if self._still_verified(entry, expected):
                    (entry / _USED).touch()
                    return self._payload(entry)
                event(log, "artifact.cache_corrupt", level=logging.WARNING, checkpoint=expected,
                      path=str(entry), action="fetching again")  # fmt: skip
                self._discard(entry)
            return self._fill(source, source_uri, expected, entry)

    def _allowed_source(self, source_uri: str) -> str:
        """The normalised source URI, when the artifact rules allow this worker to read it."""
        try:
            source = self.roots.check(source_uri)
        except ArtifactLocationError as exc:
            raise ArtifactRefused(str(exc)) from None
        path = local_path(source)
        if path is not None:
            real = self.roots.outside_local_roots(path)
            if real is not None:
                raise ArtifactRefused(
                    f"source_uri {source_uri} leads through a symlink to {real}, outside the artifact "
                    f"roots ({self.roots.describe()}); symlinks are never followed out of them"
                )
        return source

    def _fill(self, source: str, source_uri: str, expected: str, entry: Path) -> Path:
        self._make_room(self._source_bytes(source), expected)
        staging = Path(tempfile.mkdtemp(prefix=f".{expected}-", dir=self.root))
        try:
            payload = self._fetch(source, staging / "artifact")
            actual = checkpoint_hash(payload)
            if actual != expected:
                event(log, "artifact.hash_mismatch", uri=source_uri, expected=expected, actual=actual)
                raise CheckpointMismatch(
                    f"artifact at {source_uri} has sha256 {actual}, but the version was registered "
                    f"with {expected}; the artifact changed or the registered hash is wrong"
                )
            self._make_room(_manifest_bytes(_manifest(payload)), expected)
            (staging / _COMPLETE).write_text(actual)
            # Only an unverified leftover (a fill cut short) can be here: verified entries returned above.
            shutil.rmtree(entry, ignore_errors=True)
            staging.rename(entry)
            self._record(entry, expected)
            event(log, "artifact.cached", uri=source_uri, checkpoint=expected, path=str(entry))
            return self._payload(entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _record(self, entry: Path, checkpoint: str) -> None:
        """Write the manifest of a copy just verified (after the rename: ctime must be final)."""
        rows = _manifest(self._payload(entry))
        partial = entry / f"{_MANIFEST}.partial"
        partial.write_text(json.dumps({"files": rows, "bytes": _manifest_bytes(rows)}))
        partial.replace(entry / _MANIFEST)
        (entry / _USED).touch()
        self._verified.add(checkpoint)

    def _still_verified(self, entry: Path, checkpoint: str) -> bool:
        """Whether a cached copy still holds what was verified: the stat check, then the full hash
        when the stat check differs (or always on first use, with `full_verify`)."""
        try:
            recorded = json.loads((entry / _MANIFEST).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            recorded = None  # written before manifests existed, or cut short: hash it
        try:
            current = _manifest(self._payload(entry))
        except OSError:
            return False
        if recorded == current and (checkpoint in self._verified or not self.full_verify):
            return True
        started = time.perf_counter()
        try:
            actual = checkpoint_hash(self._payload(entry))
        except (OSError, ArtifactRefused):
            actual = ""
        event(log, "artifact.reverified", checkpoint=checkpoint, ok=actual == checkpoint,
              reason="full_verify" if recorded == current else "files changed since verified",
              seconds=round(time.perf_counter() - started, 3))  # fmt: skip
        if actual != checkpoint:
            return False
        self._record(entry, checkpoint)
        return True

    # --- size limit -----------------------------------------------------------------------------
    def _source_bytes(self, source: str) -> int:
        """The artifact's size before fetching it, when the filesystem says cheaply (else 0)."""
        if self.max_bytes <= 0:
            return 0
        path = local_path(source)
        try:
            if path is not None:
                if os.path.isdir(path):
                    return sum(file.stat().st_size for _, file in artifact_files(Path(path)))
                return os.path.getsize(path)
            fs, remote = fsspec.core.url_to_fs(source)
            return int(fs.du(remote, total=True))
        except ArtifactRefused:
            raise
        except Exception:  # the fetch reports what is wrong with the source
            return 0

    def entries(self) -> list[_Entry]:
        found = []
        for child in self.root.iterdir():
            if not _HASH.match(child.name) or not (child / _COMPLETE).exists():
                continue
            size = 0
            try:
                size = int(json.loads((child / _MANIFEST).read_text())["bytes"])
            except (OSError, ValueError, KeyError, TypeError):
                with contextlib.suppress(OSError):
                    size = _manifest_bytes(_manifest(self._payload(child)))
            used = child / _USED
            last_used = used.stat().st_mtime if used.exists() else (child / _COMPLETE).stat().st_mtime
            found.append(_Entry(child.name, child, size, last_used))
        return found

    def _make_room(self, needed: int, filling: str) -> None:
        """Evict least recently used entries nothing on this worker uses until `needed` more bytes
        fit under `max_bytes`; CacheFull when they cannot."""
        if self.max_bytes <= 0 or needed <= 0:
            return
        limit = self.max_bytes
        if needed > limit:
            raise CacheFull(
                f"the artifact is {needed} bytes, more than the artifact cache may hold "
                f"(cache_max_bytes {limit}); raise MODELYARD_WORKER_CACHE_MAX_BYTES"
            )
        entries = [e for e in self.entries() if e.checkpoint != filling]
        total = sum(e.size for e in entries)
        if total + needed <= limit:
            return
        in_use = {h.strip().lower() for h in self._in_use()}
        for victim in sorted((e for e in entries if e.checkpoint not in in_use), key=lambda e: e.last_used):
            if total + needed <= limit:
                break
            if self._evict(victim):
                total -= victim.size
        if total + needed > limit:
            raise CacheFull(
                f"the artifact cache {self.root} holds {total} bytes of its {limit} (cache_max_bytes) in "
                f"entries in use on this worker, and this artifact needs {needed}; raise "
                "MODELYARD_WORKER_CACHE_MAX_BYTES or stop routing versions this worker no longer needs"
            )

    def _evict(self, victim: _Entry) -> bool:
        """Delete an entry unless another thread or process holds its lock (it is being used)."""
        lock = self._lock(victim.checkpoint)
        if not lock.acquire(blocking=False):
            return False
        try:
            with self._try_process_lock(victim.checkpoint) as held:
                if not held or not (victim.path / _COMPLETE).exists():
                    return False
                self._discard(victim.path)
                self._verified.discard(victim.checkpoint)
        finally:
            lock.release()
        event(log, "artifact.evicted", checkpoint=victim.checkpoint, bytes=victim.size)
        return True

    def _discard(self, entry: Path) -> None:
        """Remove an entry at once (rename) and then its files; a crash midway leaves a staging
        name that `sweep` removes."""
        trash = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=self.root))
        os.replace(entry, trash / "entry")
        shutil.rmtree(trash, ignore_errors=True)

    # --- crash leftovers ------------------------------------------------------------------------
    def sweep(self) -> None:
        """Remove what fills cut short left behind (staging directories, unverified entries),
        except where another process sharing the cache holds the hash's lock: its fill is running."""
        self._swept = True
        for child in list(self.root.iterdir()):
            staging = _STAGING.match(child.name)
            if staging:
                prefix = staging.group(1)
            elif _HASH.match(child.name) and child.is_dir() and not (child / _COMPLETE).exists():
                prefix = child.name
            else:
                continue
            keys = [prefix] if len(prefix) == 64 else self._lock_keys(prefix)
            with contextlib.ExitStack() as stack:
                if not all(stack.enter_context(self._try_process_lock(key)) for key in keys):
                    continue
                shutil.rmtree(child, ignore_errors=True)
            event(log, "artifact.leftover_removed", path=str(child))

    def _lock_keys(self, prefix: str) -> list[str]:
        locks = self.root / LOCK_DIR
        return sorted(p.name for p in locks.glob(f"{prefix}*")) if locks.is_dir() else []

    # --- locks ----------------------------------------------------------------------------------
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

    @contextlib.contextmanager
    def _try_process_lock(self, key: str) -> Iterator[bool]:
        """Like `_process_lock` without waiting: yields False when someone else holds it."""
        locks = self.root / LOCK_DIR
        locks.mkdir(exist_ok=True)
        with (locks / key).open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _payload(entry: Path) -> Path:
        return entry / "artifact"

    # --- fetching -------------------------------------------------------------------------------
    @staticmethod
    def _fetch(source: str, target: Path) -> Path:
        path = local_path(source)
        try:
            if path is not None:
                return _copy_local(path, source, target)
            fs, remote = fsspec.core.url_to_fs(source)
            if not fs.exists(remote):
                raise ArtifactUnavailable(f"artifact {source} does not exist")
            if fs.isdir(remote):
                target.mkdir(parents=True)
                for item in fs.find(remote):
                    relative = os.path.relpath(item, remote)
                    if relative.startswith("..") or os.path.isabs(relative):
                        raise ArtifactRefused(f"artifact {source} lists {item}, which is not below it")
                    local = target / relative
                    local.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(item, str(local))
            else:
                fs.get_file(remote, str(target))
        except (ArtifactUnavailable, ArtifactRefused):
            raise
        except (OSError, ValueError, ImportError) as exc:
            raise ArtifactUnavailable(f"cannot fetch artifact {source}: {exc}") from exc
        return target


def _copy_local(path: str, source: str, target: Path) -> Path:
    """Copy a local artifact: symlinks leading out of it refuse it whole; links inside become files."""
    real = os.path.realpath(path)
    if os.path.isdir(real):
        files = artifact_files(Path(real))  # raises before anything is copied
        target.mkdir(parents=True)
        for relative, file in files:
            local = target / relative
            local.parent.mkdir(parents=True, exist_ok=True)
            _copy_file(file, local)
        return target
    if os.path.isfile(real):
        _copy_file(Path(real), target)
        return target
    if os.path.exists(real):
        raise ArtifactRefused(f"artifact {source} is neither a regular file nor a directory")
    raise ArtifactUnavailable(f"artifact {source} does not exist")


def _copy_file(source: Path, target: Path) -> None:
    # O_NOFOLLOW: a file swapped for a symlink after the tree was checked is refused, not followed.
    try:
        descriptor = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArtifactSymlinkError(f"{source} became a symlink while it was copied; refused") from None
        raise
    with os.fdopen(descriptor, "rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
