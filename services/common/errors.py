"""Domain errors, each carrying the gRPC status code it maps to."""

from __future__ import annotations

import grpc


class ModelyardError(Exception):
    """Base of every error a client may see; the message says what was wrong and what to do.

    Servers raise the subclass for the status they mean; `modelyard.client` raises the same
    subclasses for a failed call, with the server's `request_id` (quote it when reporting)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, request_id: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class NotFound(ModelyardError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(ModelyardError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class AlreadyExists(ModelyardError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ModelyardError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ModelyardError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ModelyardError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ModelyardError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ModelyardError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Aborted(ModelyardError):
    code = grpc.StatusCode.ABORTED


class DeadlineExceeded(ModelyardError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ModelyardError):
    code = grpc.StatusCode.CANCELLED


class Unimplemented(ModelyardError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Unknown(ModelyardError):
    code = grpc.StatusCode.UNKNOWN


def error_for_status(code: grpc.StatusCode, message: str, *, request_id: str = "") -> ModelyardError:
    """The ModelyardError subclass for a gRPC status (INTERNAL for one without its own class)."""
    for kind in _BY_CODE:
        if kind.code == code:
            return kind(message, request_id=request_id)
    return ModelyardError(message, request_id=request_id)


_BY_CODE: tuple[type[ModelyardError], ...] = (
    NotFound,
    InvalidArgument,
    AlreadyExists,
    FailedPrecondition,
    Unavailable,
    ResourceExhausted,
    Unauthenticated,
    PermissionDenied,
    Aborted,
    DeadlineExceeded,
    Cancelled,
    Unimplemented,
    Unknown,
)
