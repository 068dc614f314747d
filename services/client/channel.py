"""The one place that builds channels to Modelyard servers: TLS, message limits, keepalive, and the
retry policy for idempotent calls (gRPC's own, from a service config)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from modelyard.client.settings import ClientSettings


def retry_service_config(methods: Iterable[tuple[str, str]], attempts: int) -> str:
    """A gRPC service config retrying `(service, method)` calls that fail with UNAVAILABLE: only
    calls that change nothing, so a retry after a lost response cannot apply a change twice."""
    names = [{"service": service, "method": method} for service, method in methods]
    if attempts <= 1 or not names:
        return json.dumps({"methodConfig": []})
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": min(attempts, 5),  # gRPC caps it at 5
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def _options(settings: ClientSettings, service_config: str) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if settings.tls and settings.tls_server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    return options


def _credentials(settings: ClientSettings) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca_file),
        private_key=_read(settings.tls_client_key_file),
        certificate_chain=_read(settings.tls_client_cert_file),
    )


def open_aio_channel(address: str, settings: ClientSettings, service_config: str) -> aio.Channel:
    options = _options(settings, service_config)
    if not settings.tls:
        return aio.insecure_channel(address, options=options)
    return aio.secure_channel(address, _credentials(settings), options=options)


def open_sync_channel(address: str, settings: ClientSettings, service_config: str) -> grpc.Channel:
    options = _options(settings, service_config)
    if not settings.tls:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, _credentials(settings), options=options)


def open_channel(address: str, settings: ClientSettings | None = None) -> aio.Channel:
    """A grpc.aio channel for the generated stubs, for an RPC the clients do not wrap or a test of
    raw status codes: TLS, limits and keepalive as the clients have, no retries, and the token
    (if any) on every call through interceptors."""
    settings = settings or ClientSettings()
    options = _options(settings, retry_service_config((), 1))
    interceptors: Any = auth_interceptors(settings.token) if settings.token else None
    if not settings.tls:
        return aio.insecure_channel(address, options=options, interceptors=interceptors)
    return aio.secure_channel(address, _credentials(settings), options=options, interceptors=interceptors)


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
class _UnaryUnaryAuth(_AuthInterceptor, aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _AuthInterceptor._intercept


class _UnaryStreamAuth(_AuthInterceptor, aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _AuthInterceptor._intercept


class _StreamUnaryAuth(_AuthInterceptor, aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _AuthInterceptor._intercept  # type: ignore[assignment]


class _StreamStreamAuth(_AuthInterceptor, aio.StreamStreamClientInterceptor):
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


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None
