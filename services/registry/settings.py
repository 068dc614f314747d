"""Registry settings, from MODELYARD_REGISTRY_* (and MODELYARD_DATABASE_URL) and flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from modelyard.common.artifact_roots import ARTIFACT_ROOTS_ENV, ArtifactRootsSetting, default_artifact_roots
from modelyard.common.settings import ServerSettings


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "modelyard" / "registry"


class RegistrySettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_REGISTRY_", extra="ignore", populate_by_name=True)

    port: int = Field(50051, description="gRPC port; 0 picks a free one.")
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("MODELYARD_DATABASE_URL", "MODELYARD_REGISTRY_DATABASE_URL"),
        description="PostgreSQL URL; without it the registry starts a private PostgreSQL in data_dir.",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir, description="Where the embedded PostgreSQL keeps its files."
    )
    pool_max_size: int = Field(10, description="Most database connections this replica opens.")
    poll_interval_s: float = Field(
        1.0, description="Safety-net poll for deployment changes a missed NOTIFY would hide."
    )
    heartbeat_interval_ms: int = Field(1000, description="How often workers are asked to report.")
    rollout_poll_interval_s: float = Field(
        1.0,
        description="A GetRolloutStatus wait wakes on every heartbeat and deployment change reaching this "
        "replica, and re-reads the database at least this often for heartbeats sent to other replicas.",
    )
    heartbeat_ttl_s: float = Field(5.0, description="A worker silent for longer counts as gone.")
    startup_timeout_s: float = Field(60.0, description="How long to wait for the database at start.")
    database_check_interval_s: float = Field(
        1.0,
        description="How often the registry checks that its embedded PostgreSQL still runs (and "
        "restarts it when it died); unused with database_url.",
    )
    lost_worker_window_s: float = Field(
        300.0,
        description="A worker that served a deployment and went silent (longer than heartbeat_ttl_s) "
        "without saying it was stopping shows as lost in rollout status, which keeps the rollout from "
        "converging, for this long after its last heartbeat; then it is dropped.",
    )
    live_window_s: float = Field(
        180.0,
        gt=0,
        description="How far back GetLiveMetrics may look: each worker's row keeps snapshots of its "
        "heartbeat counters for this long (the longest window_s a caller may ask for).",
    )
    live_sample_interval_s: float = Field(
        5.0,
        gt=0,
        description="Spacing of the kept counter snapshots: every heartbeat replaces a worker's newest "
        "counters, and one per interval joins its history, so a window's start is found to within this.",
    )
    rollout_driver_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often the replica driving rollout plans judges each running plan's guards on "
        "the live figures (and how often the others try to take over the driver lock).",
    )
    artifact_roots: ArtifactRootsSetting = Field(
        default_factory=default_artifact_roots,
        validation_alias=AliasChoices(ARTIFACT_ROOTS_ENV),
        description="Comma-separated URL prefixes a version's source_uri must lie in (file:///srv/models/, "
        "s3://bucket/models/), shared with the workers through MODELYARD_ARTIFACT_ROOTS; default: the "
        "artifact store of `modelyard models import`.",
    )
