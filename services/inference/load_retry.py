"""Which failed version loads are worth retrying, and when (exponential backoff with jitter).

A version's artifact is fixed by its checkpoint hash, so a failure that comes from what the artifact
or the version *is* repeats on every attempt: retrying it only burns a fetch and a load. A failure
that comes from the worker's surroundings (the source not reachable yet, a full disk, memory) may
clear on its own, and is retried while the version is still routed.

- Transient, while fetching into the cache: `ArtifactUnavailable` (the source is missing, unreadable
  or its filesystem failed), any `OSError` (ENOSPC while copying or hashing, EIO...) and `CacheFull`
  (every entry is in use; one frees when a drained version unloads).
- Transient, while loading: memory exhaustion (`MemoryError`, torch's `OutOfMemoryError`) and an
  `OSError` carrying a resource errno (ENOSPC, EDQUOT, ENOMEM, EMFILE, ENFILE, EIO, EAGAIN).
- Permanent: `CheckpointMismatch` (the bytes at the source are not the registered ones; publish the
  artifact atomically, or any route change tries again), `ArtifactRefused` (outside the artifact
  roots, a symlink out of it), `RemoteCodeRefused` (the operator did not allow its code),
  `UnknownLoader`, `UnsupportedConfig` (an unknown quantization, a CUDA device this worker lacks), invalid input
  (`InvalidArgument`), `PermissionDenied`, and every other loader error: the loader choked on the
  artifact's contents, which will be the same next time.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass

from modelyard.common.errors import InvalidArgument, PermissionDenied
from modelyard.inference.errors import (
    ArtifactRefused,
    ArtifactUnavailable,
    CacheFull,
    CheckpointMismatch,
    RemoteCodeRefused,
    UnknownLoader,
    UnsupportedConfig,
)

_RESOURCE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EIO, errno.EAGAIN}
)
_PERMANENT = (
    CheckpointMismatch,
    ArtifactRefused,
    RemoteCodeRefused,
    UnknownLoader,
    UnsupportedConfig,
    InvalidArgument,
    PermissionDenied,
)


def _out_of_memory(exc: BaseException) -> bool:
    # torch.OutOfMemoryError (a RuntimeError) named without importing torch here.
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def is_transient(exc: BaseException, *, fetching: bool) -> bool:
    """Whether a load that failed with `exc` may succeed later unchanged (see the module docstring).

    `fetching`: the failure happened while resolving the artifact into the cache, not while the
    loader read it.
    """
    if isinstance(exc, _PERMANENT):
        return False
    if fetching and isinstance(exc, ArtifactUnavailable | CacheFull | OSError):
        return True
    if _out_of_memory(exc):
        return True
    return isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS


class LoadFailure(Exception):
    """A version failed to load; `transient` says whether a retry may succeed."""

    def __init__(self, cause: Exception, *, transient: bool) -> None:
        self.message = getattr(cause, "message", None) or f"{type(cause).__name__}: {cause}"
        super().__init__(self.message)
        self.cause = cause
        self.transient = transient


@dataclass(frozen=True)
class RetryPolicy:
    """Wait before the next attempt: `initial_s` after the first failure, doubling to `max_s`.

    Each wait is spread by +-`jitter` (a fraction) so that a fleet whose loads failed together
    (an object store down) does not come back to it in lockstep; never beyond `max_s`.
    """

    initial_s: float = 1.0
    max_s: float = 60.0
    jitter: float = 0.2

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failures`-th failed attempt in a row (1 = the first)."""
        base = min(self.max_s, self.initial_s * 2 ** max(0, failures - 1))
        spread = (rng or random).uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else 1.0
        return min(self.max_s, base * spread)
