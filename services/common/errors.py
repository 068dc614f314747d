"""Domain errors, each carrying the gRPC status code it maps to."""

from __future__ import annotations

import grpc


class ModelyardError(Exception):
    """Base of every error a client may see; the message says what was wrong and what to do."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
