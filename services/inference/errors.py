"""Domain errors of the inference worker, each carrying its gRPC status code."""

from __future__ import annotations

from modelyard.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)


class CheckpointMismatch(FailedPrecondition):
    """The artifact's sha256 differs from the hash registered for the version."""


class ArtifactUnavailable(FailedPrecondition):
    """The artifact could not be fetched from its source URI."""


class ArtifactRefused(FailedPrecondition):
    """The artifact breaks the artifact rules: outside the configured roots, or a symlink out of it."""


class RemoteCodeRefused(FailedPrecondition):
    """Loading the version would run code from its artifact, and this worker's operator has not allowed it."""


class CacheFull(ResourceExhausted):
    """The artifact cache is at its size limit and every entry left is in use on this worker."""


class UnknownLoader(FailedPrecondition):
    """The version names a loader this worker does not have."""


class UnsupportedConfig(FailedPrecondition):
    """The version's inference config asks for what this worker cannot do: a CUDA device it lacks,
    a quantization it does not know, int8 on a GPU. Permanent until the version or worker changes."""


class ModelNotFound(NotFound):
    """The deployment or pinned version is not loaded on this worker."""


class BadInput(InvalidArgument):
    """The request does not match the version's signature."""


class NotReady(Unavailable):
    """The deployment exists but has no routable version right now."""


class WorkerAtCapacity(ResourceExhausted):
    """The worker holds as many items in flight as it admits; the caller should retry with backoff."""
