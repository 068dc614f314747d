"""Settings come only from MODELYARD_-prefixed variables and flags."""

from __future__ import annotations

import pytest

from modelyard.benchmark.settings import BenchmarkSettings
from modelyard.inference.settings import WorkerSettings
from modelyard.registry.settings import RegistrySettings

UNPREFIXED = {
    "DATABASE_URL": "postgresql://platform-db/other",
    "ADMIN_TOKENS": "intruder:letmein",
    "READER_TOKENS": "intruder:letmein",
    "LOG_LEVEL": "DEBUG",
    "TLS_CERT_FILE": "/etc/ssl/other.pem",
    "TLS_KEY_FILE": "/etc/ssl/other.key",
    "GRACE_PERIOD_S": "0",
}


@pytest.mark.parametrize("settings_type", [RegistrySettings, WorkerSettings, BenchmarkSettings])
def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch, settings_type: type) -> None:
    for name, value in UNPREFIXED.items():
        monkeypatch.setenv(name, value)
    settings = settings_type()
    assert settings.admin_tokens == "" and settings.reader_tokens == ""
    assert settings.log_level == "INFO"
    assert settings.tls_cert_file is None and settings.tls_key_file is None
    assert settings.grace_period_s == 10.0
    if isinstance(settings, RegistrySettings):
        assert settings.database_url is None


def test_prefixed_variables_and_arguments_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_DATABASE_URL", "postgresql://ours/modelyard")
    monkeypatch.setenv("MODELYARD_ADMIN_TOKENS", "ops:x")
    monkeypatch.setenv("MODELYARD_WORKER_TOKENS", "w:y")
    monkeypatch.setenv("MODELYARD_REGISTRY_PORT", "6000")
    settings = RegistrySettings()
    assert settings.database_url == "postgresql://ours/modelyard"
    assert settings.admin_tokens == "ops:x" and settings.worker_tokens == "w:y"
    assert settings.port == 6000
    assert (
        RegistrySettings(database_url="postgresql://flag/db", port=1).database_url == "postgresql://flag/db"
    )
