"""How a client reaches a Modelyard server: the one place for address-independent connection settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    """How a process reaches another Modelyard server."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_", extra="ignore", populate_by_name=True)

    token: str | None = Field(None, description="Bearer token sent as `authorization` metadata.")
    tls: bool = Field(False, description="Use TLS towards the server.")
    tls_ca_file: str | None = Field(None, description="PEM CA bundle to verify the server with.")
    tls_server_name: str | None = Field(
        None,
        description="Name to verify the server's certificate against instead of the address's host: "
        "for servers reached by IP (workers advertise pod IPs) that share one certificate.",
    )
    tls_client_cert_file: str | None = Field(None, description="PEM certificate for mutual TLS.")
    tls_client_key_file: str | None = Field(None, description="PEM key of tls_client_cert_file.")
    timeout_s: float = Field(10.0, gt=0, description="Default deadline of each unary call, seconds.")
    max_message_bytes: int = Field(64 * 1024 * 1024, description="Largest message sent or received.")
    retry_attempts: int = Field(
        4, ge=1, description="Attempts of an idempotent call that fails with UNAVAILABLE (1 = no retry)."
    )
