"""Settings of the console (env prefix MODELYARD_CONSOLE_, or command-line flags)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelyard.common.auth import Role
from modelyard.console.import_roots import validated_import_roots


def _global(name: str) -> AliasChoices:
    # Like every server's (modelyard.common.settings): TLS, tokens and logging are one
    # installation's, read from MODELYARD_<NAME> whatever this service's prefix.
    return AliasChoices(f"MODELYARD_{name.upper()}")


class ConsoleSettings(BaseSettings):
    """Where the console listens, which services it shows, and who may log in.

    The console holds no token of its own: it forwards the one each user logged in with, so the
    registry checks (and audits) the user. The token lists here only tell it which role a login
    token has (verifiers `name:sha256:HEX` are enough, and safer: the console cannot use them)."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_CONSOLE_", extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", description="Interface the HTTP server binds to.")
    port: int = Field(8090, ge=0, le=65535, description="HTTP port; 0 picks a free one.")
    registry: str = Field("127.0.0.1:50051", description="Registry address HOST:PORT.")
    benchmark: str = Field("127.0.0.1:50061", description="Benchmark service address HOST:PORT.")
    call_timeout_s: float = Field(
        5.0, gt=0, description="Deadline of each call to the registry or the benchmark service, seconds."
    )
    live_interval_s: float = Field(
        0.5,
        gt=0,
        description="How often a live page re-reads worker state (heartbeats); deployment changes "
        "arrive at once through WatchDeployments.",
    )
    page_size: int = Field(24, ge=1, le=200, description="Versions or audit events on one page.")
    import_roots: Annotated[str, AfterValidator(validated_import_roots)] = Field(
        "",
        description="Directories on the console's host (comma-separated absolute paths) under which "
        "admins may import model directories from the Register page; a path leading outside them "
        "(symlinks and `..` resolved) is refused. Empty: directory import is off (registering an "
        "artifact already in the store still works).",
    )
    session_secret: str = Field(
        "",
        description="Key that signs and encrypts session cookies; replicas behind one address need the "
        "same. Empty: a random key per process (everyone logs in again after a restart).",
    )
    session_max_age_s: int = Field(8 * 3600, gt=0, description="How long a login lasts, seconds.")
    tls_cert_file: str | None = Field(
        None, validation_alias=_global("tls_cert_file"), description="PEM certificate; serves HTTPS."
    )
    tls_key_file: str | None = Field(
        None, validation_alias=_global("tls_key_file"), description="PEM private key for tls_cert_file."
    )
    admin_tokens: str = Field(
        "",
        validation_alias=_global("admin_tokens"),
        description="Tokens (or `name:sha256:HEX` verifiers) whose holders may log in and change things; "
        "any token setting makes the console ask for a token.",
    )
    reader_tokens: str = Field(
        "",
        validation_alias=_global("reader_tokens"),
        description="Tokens (or verifiers) whose holders may log in and read.",
    )
    grace_period_s: float = Field(
        5.0,
        validation_alias=_global("grace_period_s"),
        description="On SIGTERM, how long open requests may run before they are closed.",
    )
    log_level: str = Field("INFO", validation_alias=_global("log_level"))
    log_format: str = Field(
        "text", validation_alias=_global("log_format"), description="`text` (key=value) or `json`."
    )

    def tokens(self) -> dict[Role, str]:
        return {Role.ADMIN: self.admin_tokens, Role.READER: self.reader_tokens}

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file else "http"
