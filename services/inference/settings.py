"""Settings of one inference worker (env prefix MODELYARD_WORKER_, or command-line flags)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modelyard.common.settings import ServerSettings


class WorkerSettings(ServerSettings):
    """What the worker serves, where it caches artifacts and how it talks to the registry."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_WORKER_", extra="ignore", populate_by_name=True)

    registry: str = Field(
        "", description="Registry address HOST:PORT; empty = serve --static-deployments only."
    )
    deployments: list[str] = Field(
        default_factory=list, description="Deployments to serve; empty = every deployment the registry has."
    )
    static_deployments: str = Field(
        "",
        description="JSON file with a list of registry Deployment messages (protobuf JSON) to serve "
        "without a registry.",
    )
    cache_dir: str = Field(
        "~/.cache/modelyard/artifacts", description="Local artifact cache, one folder per checkpoint hash."
    )
    worker_id: str = Field("", description="Name reported to the registry; default host:pid.")
    advertise_address: str = Field("", description="Address reported to the registry; default host:port.")
    instances: int = Field(
        0,
        ge=0,
        description="Forward passes of one version that run at once, each in its own thread with "
        "cores/instances intra-op threads; 0 = auto (2 on a CPU with 2 or more cores, else 1).",
    )
    decode_threads: int = Field(2, description="Threads decoding inputs (images) before batching.")
    preimport: bool = Field(
        True,
        description="Import every model family's libraries at start and freeze them out of the cyclic GC, "
        "so unloading a model never stalls serving in a long collection.",
    )
    heartbeat_interval_s: float = Field(
        2.0, description="Heartbeat period until the registry answers with its own."
    )
    reconnect_initial_s: float = Field(0.2, description="First wait before reconnecting to the registry.")
    reconnect_max_s: float = Field(5.0, description="Longest wait between reconnection attempts.")
