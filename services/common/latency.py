"""The one set of latency bucket bounds: the worker's Prometheus request histograms, the cumulative
counters its heartbeats carry, and the registry's percentiles over them all use these."""

from __future__ import annotations

import bisect

# Upper bounds in seconds; a duration equal to a bound falls in that bucket (Prometheus' `le`), and
# one more bucket holds what lies above the largest. Changing them changes what every worker sends
# and what the registry reads: workers and registries of one fleet must agree.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
BUCKET_COUNT = len(LATENCY_BUCKETS_S) + 1


def bucket_index(seconds: float) -> int:
    """Index of the bucket holding `seconds` (len(LATENCY_BUCKETS_S) for one above the largest)."""
    return bisect.bisect_left(LATENCY_BUCKETS_S, seconds)
