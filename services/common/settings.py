"""Settings every server shares; each service subclasses them with its own env prefix."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelyard.common.auth import Role


def _global(name: str) -> AliasChoices:
    # Security and logging settings are the same for every service of one installation, so they
    # are read from MODELYARD_<NAME> whatever the service's own prefix; never from a bare <NAME>
    # (platforms set DATABASE_URL, LOG_LEVEL and the like for their own purposes).
    return AliasChoices(f"MODELYARD_{name.upper()}")


class ServerSettings(BaseSettings):
    """Listening address, TLS, auth, logging and shutdown behaviour of one gRPC server."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_", extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", description="Interface the gRPC server binds to.")
    port: int = Field(0, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        0, description="Prometheus /metrics HTTP port; 0 picks a free one, None disables it."
    )
    grace_period_s: float = Field(
        10.0,
        validation_alias=_global("grace_period_s"),
        description="On SIGTERM, how long in-flight RPCs may run before they are cancelled.",
    )
    tls_cert_file: str | None = Field(
        None, validation_alias=_global("tls_cert_file"), description="PEM certificate; enables TLS."
    )
    tls_key_file: str | None = Field(
        None, validation_alias=_global("tls_key_file"), description="PEM private key for tls_cert_file."
    )
    tls_client_ca_file: str | None = Field(
        None,
        validation_alias=_global("tls_client_ca_file"),
        description="PEM CA bundle; when set, clients must present a certificate it signed.",
    )
    admin_tokens: str = Field(
        "",
        validation_alias=_global("admin_tokens"),
        description="Tokens that may call everything: comma-separated `name:token` or "
        "`name:sha256:HEX` verifiers (see modelyard.common.auth). Any token setting turns auth on.",
    )
    reader_tokens: str = Field(
        "", validation_alias=_global("reader_tokens"), description="Tokens that may read."
    )
    worker_tokens: str = Field(
        "",
        validation_alias=_global("worker_tokens"),
        description="Tokens of inference workers: watch deployments, read, send heartbeats.",
    )
    benchmark_tokens: str = Field(
        "",
        validation_alias=_global("benchmark_tokens"),
        description="Tokens of the benchmark service: read, stage versions at weight 0, record runs.",
    )
    max_message_bytes: int = Field(64 * 1024 * 1024, description="Largest gRPC message accepted or sent.")
    log_level: str = Field("INFO", validation_alias=_global("log_level"))
    log_format: str = Field(
        "text", validation_alias=_global("log_format"), description="`text` (key=value) or `json`."
    )

    def tokens(self) -> dict[Role, str]:
        return {
            Role.ADMIN: self.admin_tokens,
            Role.READER: self.reader_tokens,
            Role.WORKER: self.worker_tokens,
            Role.BENCHMARK: self.benchmark_tokens,
        }
