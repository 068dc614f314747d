"""Domain errors of the inference worker, each carrying its gRPC status code."""

from __future__ import annotations

from modelyard.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable


class CheckpointMismatch(FailedPrecondition):
    """The artifact's sha256 differs from the hash registered for the version."""


class ArtifactUnavailable(FailedPrecondition):
    """The artifact could not be fetched from its source URI."""


class UnknownLoader(FailedPrecondition):
    """The version names a loader this worker does not have."""


class ModelNotFound(NotFound):
    """The deployment or pinned version is not loaded on this worker."""


class BadInput(InvalidArgument):
    """The request does not match the version's signature."""


class NotReady(Unavailable):
    """The deployment exists but has no routable version right now."""
