"""Client channels to Modelyard servers: TLS, bearer token and message limits in one place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from modelyard.common.settings import ClientSettings


def _with_auth(details: aio.ClientCallDetails, header: tuple[str, str]) -> aio.ClientCallDetails:
    metadata: Any = [*(details.metadata or ()), header]
    return aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _AuthInterceptor:
    """Adds `header` to a call's metadata; the same for every call kind."""

    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def _intercept(
        self, continuation: Callable[..., Any], client_call_details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_auth(client_call_details, self._header), request)


# grpc.aio files each interceptor under the first call kind it implements (an if/elif chain), so
# one class implementing several kinds would only ever see unary-unary calls: streams then went out
# without their token. One class per call kind.
class _UnaryUnaryAuth(_AuthInterceptor, aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    intercept_unary_unary = _AuthInterceptor._intercept


class _UnaryStreamAuth(_AuthInterceptor, aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    intercept_unary_stream = _AuthInterceptor._intercept


class _StreamUnaryAuth(_AuthInterceptor, aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    intercept_stream_unary = _AuthInterceptor._intercept  # type: ignore[assignment]


class _StreamStreamAuth(_AuthInterceptor, aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    intercept_stream_stream = _AuthInterceptor._intercept  # type: ignore[assignment]


def auth_interceptors(token: str) -> list[Any]:
    """Interceptors that put `authorization: Bearer <token>` on every call, whatever its kind."""
    header = ("authorization", f"Bearer {token}")
    return [
        _UnaryUnaryAuth(header),
        _UnaryStreamAuth(header),
        _StreamUnaryAuth(header),
        _StreamStreamAuth(header),
    ]


def open_channel(address: str, settings: ClientSettings | None = None) -> aio.Channel:
    settings = settings or ClientSettings()
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    interceptors: Any = auth_interceptors(settings.token) if settings.token else None
    if not settings.tls:
        return aio.insecure_channel(address, options=options, interceptors=interceptors)
    if settings.tls_server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca_file),
        private_key=_read(settings.tls_client_key_file),
        certificate_chain=_read(settings.tls_client_cert_file),
    )
    return aio.secure_channel(address, creds, options=options, interceptors=interceptors)


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None
