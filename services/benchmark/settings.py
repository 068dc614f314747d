"""Settings of the benchmark service (env prefix MODELYARD_BENCHMARK_, or command-line flags)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modelyard.common.settings import ServerSettings


class BenchmarkSettings(ServerSettings):
    """Where runs are stored and how workers are called."""

    model_config = SettingsConfigDict(
        env_prefix="MODELYARD_BENCHMARK_", extra="ignore", populate_by_name=True
    )

    registry: str = Field(
        "", description="Registry address HOST:PORT whose performance store keeps runs; empty = in memory."
    )
    worker_timeout_s: float = Field(60.0, description="Deadline of each inference call to a worker.")
    registry_timeout_s: float = Field(10.0, description="Deadline of each call to the registry.")
    dataset_dirs: list[str] = Field(
        default_factory=list,
        description="Directories `beir:PATH` suites may read from (JSON list in the environment); "
        "a path outside them is refused, and with none configured BEIR suites are refused.",
    )
    stage_timeout_s: float = Field(
        300.0,
        description="How long a staged (weight-0) version may take to load on every live worker "
        "before the run fails (and the version is unstaged).",
    )
