"""Client channels to Modelyard servers: TLS, bearer token and message limits in one place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from modelyard.common.settings import ClientSettings


class _AuthMetadata(
    aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_auth(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        metadata: Any = list(details.metadata or [])
        metadata.append(self._header)
        return aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_auth(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_auth(client_call_details), request)


def open_channel(address: str, settings: ClientSettings | None = None) -> aio.Channel:
    settings = settings or ClientSettings()
    options = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    interceptors: Any = [_AuthMetadata(settings.token)] if settings.token else None
    if not settings.tls:
        return aio.insecure_channel(address, options=options, interceptors=interceptors)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca_file),
        private_key=_read(settings.tls_client_key_file),
        certificate_chain=_read(settings.tls_client_cert_file),
    )
    return aio.secure_channel(address, creds, options=options, interceptors=interceptors)


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None
