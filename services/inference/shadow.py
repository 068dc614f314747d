"""Shadow traffic: a share of unpinned requests is also sent to a staged version after the primary
answered, so a candidate is judged on live inputs before it takes any traffic.

A shadow never delays or fails a primary request:
- its call starts only once the primary's rows are there, in a task of its own, and any error is
  counted, never raised;
- its passes run in their own batcher on the worker's shadow lane, one thread under SCHED_IDLE (or
  nice 19), so on a busy machine the scheduler gives the primary's lanes the cores first;
- at most `SHADOW_ITEMS_IN_FLIGHT` items are being mirrored at once per worker; beyond that a
  request is not mirrored (`modelyard_shadow_dropped_total`), so a slow shadow cannot pile up work.

What it measures goes into the staged version's live series (requests, errors, latency, drift, as
for any traffic, plus `shadow_requests`) and its agreement with the primary: per item, the cosine
between the two embeddings, or 1 for an equal caption and 0 for another; embeddings of different
dimensions have no agreement.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from modelyard.inference.loaders.base import use_intra_op_threads

SHADOW_ITEMS_IN_FLIGHT = 64
SHADOW_CALLER = "shadow"


def use_shadow_thread() -> None:
    """Executor initializer: one intra-op thread under SCHED_IDLE, Linux's policy for work that may
    only use a core nobody else wants (weaker than nice 19, which still takes a share of a busy
    core); nice 19 where that policy is refused. Both apply to this thread alone."""
    use_intra_op_threads(1)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread
        return
    except (OSError, AttributeError):  # not Linux, or not allowed: try the nice value
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):  # the bounds on work in flight still hold
        pass


def agreement(primary: dict[str, Any], shadow: dict[str, Any]) -> tuple[float, int]:
    """(sum of per-item agreement, items compared) between the primary's and the shadow's rows."""
    a, b = primary.get("embedding"), shadow.get("embedding")
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if a.ndim != 2 or a.shape != b.shape:
            return 0.0, 0
        dots = np.einsum("ij,ij->i", a, b, dtype=np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosine = np.clip(np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0), -1.0, 1.0)
        return float(cosine.sum()), int(a.shape[0])
    ca, cb = primary.get("caption"), shadow.get("caption")
    if isinstance(ca, list) and isinstance(cb, list) and len(ca) == len(cb):
        return float(sum(x == y for x, y in zip(ca, cb, strict=True))), len(ca)
    return 0.0, 0
