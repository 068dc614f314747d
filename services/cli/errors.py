"""CLI failures: one line on stderr and an exit code that says whose fault it was."""

from __future__ import annotations

import grpc

from modelyard.common.errors import ModelyardError

EXIT_OK = 0
# The command ran but its outcome is a failure (rollout did not converge, a benchmark run failed,
# the server hit an internal error).
EXIT_FAILED = 1
# The command line itself is wrong: unknown option, malformed value, missing file.
EXIT_USAGE = 2
# The server understood and refused: unknown deployment, version exists, gate failed, no permission.
EXIT_REFUSED = 3
# Nothing answered at the address, or not in time.
EXIT_UNREACHABLE = 4

_REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
# Substrings of grpc-core's own UNAVAILABLE details when no connection could be made at all.
_NO_CONNECTION = (
    "failed to connect",
    "connection refused",
    "dns resolution failed",
    "connect failed",
    "failed with unavailable",
)


class CliError(Exception):
    """A failure to report as one line, with the process exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())
        self.exit_code = exit_code


class UsageError(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


def from_client_error(error: ModelyardError, *, service: str, address: str, timeout_s: float) -> CliError:
    """Translate a failed call into what the user should read and the exit code."""
    code = error.code
    details = error.message
    if code == grpc.StatusCode.UNAVAILABLE:
        if not details or any(marker in details.lower() for marker in _NO_CONNECTION):
            return CliError(
                f"{service} at {address} is not reachable: is `modelyard up` running? "
                f"(set --{'benchmark' if service.startswith('benchmark') else 'registry'} to its address)",
                EXIT_UNREACHABLE,
            )
        return CliError(f"{service} at {address} is unavailable: {details}", EXIT_UNREACHABLE)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(
            f"{service} at {address} did not answer within {timeout_s:g} s; raise --timeout or check the server",
            EXIT_UNREACHABLE,
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return CliError(f"{details} (pass --token or set MODELYARD_TOKEN)", EXIT_REFUSED)
    if code in _REFUSED:
        return CliError(details or f"{service} refused the request ({code.name})", EXIT_REFUSED)
    if code == grpc.StatusCode.CANCELLED:
        return CliError("cancelled", EXIT_FAILED)
    return CliError(f"{service} at {address} failed: {code.name}: {details}", EXIT_FAILED)
