"""Settings of one inference worker (env prefix MODELYARD_WORKER_, or command-line flags)."""

from __future__ import annotations

from pydantic import AliasChoices, ByteSize, Field
from pydantic_settings import SettingsConfigDict

from modelyard.common.artifact_roots import ARTIFACT_ROOTS_ENV, ArtifactRootsSetting, default_artifact_roots
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
    http_port: int | None = Field(
        None,
        ge=0,
        description="Also serve OIP v2 over HTTP/REST (JSON and the binary tensor data extension) on this "
        "port, with the gRPC side's TLS, tokens and limits; 0 picks a free one, None (default) = off.",
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
    drift_reference_items: int = Field(
        200,
        ge=1,
        description="Drift: the first this many items a deployment serves give its reference mean "
        "embedding, the next this many its reference histograms (see modelyard.inference.drift).",
    )
    drift_window_items: int = Field(
        500,
        ge=100,
        description="Drift: how many of a version's most recent items modelyard_drift_score scores.",
    )
    reconnect_initial_s: float = Field(0.2, description="First wait before reconnecting to the registry.")
    reconnect_max_s: float = Field(5.0, description="Longest wait between reconnection attempts.")
    applied_state_file: str = Field(
        "applied-deployments.json",
        description="Where the worker keeps the deployments it last applied (a path relative to "
        "cache_dir, or absolute); served when it starts without reaching the registry. Empty = keep "
        "none: such a worker then serves nothing until the registry answers.",
    )
    fallback_after_s: float = Field(
        3.0,
        ge=0,
        description="How long the first connection to the registry may take before the worker serves "
        "the deployments it last applied; a first attempt that fails sooner falls back at once.",
    )
    retry_initial_s: float = Field(
        1.0, gt=0, description="Wait before retrying a version whose load failed for a transient reason."
    )
    retry_max_s: float = Field(
        60.0, gt=0, description="Longest wait between retries of a failed load (the wait doubles up to it)."
    )
    # Limits (see `limits.py`): what one request may cost, checked before the work it bounds.
    max_message_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="Per-request byte budget: the largest gRPC message the worker receives (or sends); gRPC "
        "refuses a larger one with RESOURCE_EXHAUSTED before parsing it.",
    )
    text_bytes_per_token: int = Field(
        64,
        gt=0,
        description="A text element may hold at most the version's max sequence length (its config's, "
        "else the model's) times this many bytes; longer ones are refused before tokenizing.",
    )
    max_image_pixels: int = Field(
        2048 * 2048,
        gt=0,
        description="Largest image decoded (width x height, read from its header before decoding); image "
        "models read 224-384 pixels a side, so larger ones only cost decode time and memory.",
    )
    max_image_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest encoded image accepted.")
    max_request_pixels: int = Field(
        4 * 2048 * 2048, gt=0, description="Pixels decoded for one request, over all its images."
    )
    max_items_in_flight: int = Field(
        0,
        ge=0,
        description="Items admitted and not yet answered, over all versions; beyond it a request is refused "
        "with RESOURCE_EXHAUSTED unless its caller holds less than a fair share. "
        "0 = auto: 8 x the largest max_batch_size served.",
    )
    # Artifact safety (see artifacts.py and loaders/remote_code.py).
    artifact_roots: ArtifactRootsSetting = Field(
        default_factory=default_artifact_roots,
        validation_alias=AliasChoices(ARTIFACT_ROOTS_ENV),
        description="Comma-separated URL prefixes artifacts may be fetched from (file:///srv/models/, "
        "s3://bucket/models/; a plain absolute path means its file:// URI), shared with the registry "
        "through MODELYARD_ARTIFACT_ROOTS; default: the artifact store of `modelyard models import`.",
    )
    allow_remote_code: bool = Field(
        False,
        description="Let versions that ask for trust_remote_code run Python code from their artifact "
        "(custom modules, auto_map) in this worker. Off: such versions are refused at load.",
    )
    cache_max_bytes: ByteSize = Field(
        ByteSize(20 * 1024**3),
        ge=0,
        description="Most bytes the artifact cache keeps (e.g. 20GiB); a new entry evicts the least "
        "recently used ones no deployment on this worker routes. 0 = no limit.",
    )
    cache_full_verify: bool = Field(
        False,
        description="Re-hash every cached artifact fully the first time this process serves it, instead "
        "of trusting an unchanged size/mtime/ctime: a slower start that also catches changes below the "
        "filesystem.",
    )
