"""Per-version Prometheus metrics of the worker (names and labels as DESIGN.md requires)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from modelyard.common.latency import LATENCY_BUCKETS_S

VERSION_LABELS = ["deployment", "model", "version"]

REQUEST_DURATION = Histogram(
    "modelyard_request_duration_seconds",
    "ModelInfer duration inside the worker, per served version and outcome.",
    [*VERSION_LABELS, "outcome"],
    buckets=LATENCY_BUCKETS_S,
)
QUEUE_DURATION = Histogram(
    "modelyard_queue_duration_seconds",
    "Time a request waited in its version's batch queue before its forward pass started.",
    VERSION_LABELS,
    buckets=LATENCY_BUCKETS_S,
)
SHADOW_DURATION = Histogram(
    "modelyard_shadow_duration_seconds",
    "Mirrored (shadow) calls to a staged version, per outcome: the primary had already answered.",
    [*VERSION_LABELS, "outcome"],
    buckets=LATENCY_BUCKETS_S,
)
SHADOW_DROPPED = Counter(
    "modelyard_shadow_dropped_total",
    "Requests not mirrored because the worker's shadow calls in flight were at their limit.",
    VERSION_LABELS,
)
BATCH_SIZE = Histogram(
    "modelyard_batch_size",
    "Items per forward pass.",
    VERSION_LABELS,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
MODEL_LOADED = Gauge(
    "modelyard_model_loaded",
    "1 while the version is loaded on this worker, 0 after it was unloaded.",
    [*VERSION_LABELS, "checkpoint"],
)
MODEL_ENGINE = Gauge(
    "modelyard_model_engine",
    "1 for the engine running the loaded version's passes (torch, onnxruntime); gone once unloaded.",
    [*VERSION_LABELS, "engine"],
)
MODEL_LOAD_SECONDS = Histogram(
    "modelyard_model_load_seconds",
    "Fetch, verify, load and warm-up time of a version.",
    VERSION_LABELS,
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
SWAPS = Counter(
    "modelyard_swaps_total",
    "Routing changes applied (outcome=success) or refused because a version failed (outcome=failure).",
    ["deployment", "model", "outcome"],
)
ROUTE_WEIGHT = Gauge(
    "modelyard_route_weight",
    "Traffic weight of each version in this worker's current routing table (0 = staged).",
    VERSION_LABELS,
)
DRIFT_SCORE = Gauge(
    "modelyard_drift_score",
    "Jensen-Shannon distance (0..1) between this version's most recent items and its deployment's "
    "reference on this worker, per signal (output_cosine, input_size, caption_length); see "
    "modelyard.common.drift. Set at every heartbeat once 100 items were seen after the reference.",
    [*VERSION_LABELS, "signal"],
)
APPLIED_REVISION = Gauge(
    "modelyard_worker_applied_revision",
    "Registry revision of the deployment this worker last applied.",
    ["deployment"],
)
FALLBACK = Gauge(
    "modelyard_worker_fallback",
    "1 while the worker serves the deployments it last applied (stored beside its cache) because it "
    "started without reaching the registry; 0 once it follows the registry.",
)
