"""Drift: how far what a version serves now lies from what its deployment served when a reference was
taken, per signal, as the Jensen-Shannon distance between two histograms on fixed bins.

Shared by the worker (which bins every request and keeps a reference per deployment) and the
registry (which scores any window from the cumulative bin counts heartbeats carry), so that both
read the same numbers the same way.

Signals (each DRIFT_BINS bins):
- `output_cosine`: cosine of each output embedding to the reference's mean embedding, bins of 0.1
  over [-1, 1]. Outputs of another language or of random strings sit elsewhere around the mean; a
  version whose vectors live in another space (another model, same dimension) is near 0.
- `input_size`: UTF-8 bytes of each text (half-octave bins: 1, 1.4, 2, 2.8, ... up to 1 KiB and
  above), encoded bytes of each image (octave bins from 256 B).
- `caption_length`: words of each caption (0..18, then 19 and more).

The Jensen-Shannon distance (square root of the base-2 JS divergence) is in [0, 1], symmetric, and
defined with empty bins (unlike PSI or KL). It compares the histograms as distributions, so neither
the order of requests nor how many a window holds enters it, except through sampling noise: two
samples of one distribution score about sqrt((B-1) / (8 n ln 2)) apart for n items each over B
occupied bins (about 0.1 for n = 200 over 10 bins), which is why a window needs MIN_DRIFT_ITEMS
before it is scored and thresholds sit well above it (0.2 by default in the alert).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DRIFT_BINS = 20
OUTPUT_COSINE = "output_cosine"
INPUT_SIZE = "input_size"
CAPTION_LENGTH = "caption_length"
SIGNALS = (OUTPUT_COSINE, INPUT_SIZE, CAPTION_LENGTH)
# Fewer items in a window than this are not scored (their sampling noise alone is near 0.15).
MIN_DRIFT_ITEMS = 100


def cosine_bins(cosines: np.ndarray) -> np.ndarray:
    return np.clip(np.floor((cosines + 1.0) * (DRIFT_BINS / 2)), 0, DRIFT_BINS - 1).astype(np.int64)


def text_size_bin(nbytes: int) -> int:
    return min(DRIFT_BINS - 1, int(2 * math.log2(max(1, nbytes))))


def image_size_bin(nbytes: int) -> int:
    return min(DRIFT_BINS - 1, max(0, int(math.log2(max(1, nbytes))) - 8))


def caption_length_bin(words: int) -> int:
    return min(DRIFT_BINS - 1, words)


def js_distance(p: Sequence[int], q: Sequence[int]) -> float:
    """Jensen-Shannon distance of two histograms on the same bins; NaN when either is empty."""
    a = np.asarray(p, dtype=np.float64)
    b = np.asarray(q, dtype=np.float64)
    if a.sum() <= 0 or b.sum() <= 0:
        return math.nan
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return math.sqrt(max(0.0, (kl(a) + kl(b)) / 2))
