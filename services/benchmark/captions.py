"""Captioning: reference-based scores (token F1, sentence BLEU-4) when references exist; speed always."""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from modelyard.benchmark.results import MetricResult, SuiteResult
from modelyard.benchmark.retrieval import Progress
from modelyard.common.errors import InvalidArgument

Captioner = Callable[[list[bytes]], list[str]]
"""Maps N encoded images to N captions."""

_TOKEN = re.compile(r"[a-z0-9]+")


def _no_progress(fraction: float, message: str) -> None:
    return None


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers; punctuation does not count."""
    return _TOKEN.findall(text.lower())


def token_f1(candidate: str, references: Sequence[str]) -> float:
    """SQuAD-style bag-of-tokens F1 against the best-matching reference."""
    predicted = Counter(tokenize(candidate))
    best = 0.0
    for reference in references:
        wanted = Counter(tokenize(reference))
        overlap = sum((predicted & wanted).values())
        if overlap == 0:
            continue
        precision = overlap / sum(predicted.values())
        recall = overlap / sum(wanted.values())
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(candidate: str, references: Sequence[str], *, max_n: int = 4) -> float:
    """BLEU with clipped n-gram precisions up to max_n, add-one smoothing for n > 1 (Lin & Och 2004),
    and the brevity penalty against the reference closest in length."""
    tokens = tokenize(candidate)
    refs = [tokenize(r) for r in references]
    if not tokens or not any(refs):
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        counts = _ngrams(tokens, n)
        max_ref: Counter[tuple[str, ...]] = Counter()
        for ref in refs:
            max_ref |= _ngrams(ref, n)
        clipped = sum(min(c, max_ref[g]) for g, c in counts.items())
        total = max(len(tokens) - n + 1, 0)
        if n == 1:
            if clipped == 0:
                return 0.0
            log_precision += math.log(clipped / total)
        else:
            log_precision += math.log((clipped + 1) / (total + 1))
    closest = min((abs(len(r) - len(tokens)), len(r)) for r in refs)[1]
    brevity = 1.0 if len(tokens) >= closest else math.exp(1 - closest / len(tokens))
    return brevity * math.exp(log_precision / max_n)


class CaptionSuite:
    """Captions every image in batches; scores against references when given, times every batch."""

    kind = "captioning"

    def __init__(
        self,
        name: str,
        images: Sequence[bytes],
        references: Sequence[Sequence[str]] | None = None,
        *,
        batch_size: int = 16,
    ) -> None:
        if not images:
            raise InvalidArgument("a caption suite needs at least one image")
        if references is not None and len(references) != len(images):
            raise InvalidArgument(f"{len(images)} images but {len(references)} reference lists")
        if batch_size <= 0:
            raise InvalidArgument(f"batch_size must be > 0, got {batch_size}")
        self.name = name
        self.images = list(images)
        self.references = [list(r) for r in references] if references is not None else None
        self.batch_size = batch_size

    def run(self, caption: Captioner, progress: Progress = _no_progress) -> SuiteResult:
        captions: list[str] = []
        batch_ms: list[float] = []
        started = time.perf_counter()
        for offset in range(0, len(self.images), self.batch_size):
            batch = self.images[offset : offset + self.batch_size]
            t0 = time.perf_counter()
            produced = list(caption(batch))
            batch_ms.append((time.perf_counter() - t0) * 1000)
            if len(produced) != len(batch):
                raise InvalidArgument(f"captioner returned {len(produced)} captions for {len(batch)} images")
            captions.extend(str(c) for c in produced)
            done = offset + len(batch)
            progress(0.95 * done / len(self.images), f"captioned {done}/{len(self.images)} images")
        elapsed = time.perf_counter() - started
        metrics = [
            MetricResult("latency_ms", float(np.mean(batch_ms)), "ms", tuple(batch_ms)),
            MetricResult("throughput_images_per_s", len(self.images) / elapsed, "images/s"),
        ]
        if self.references is not None:
            f1 = [token_f1(c, r) for c, r in zip(captions, self.references, strict=True)]
            bleu = [sentence_bleu(c, r) for c, r in zip(captions, self.references, strict=True)]
            metrics.append(MetricResult("token_f1", float(np.mean(f1)), "", tuple(f1)))
            metrics.append(MetricResult("bleu", float(np.mean(bleu)), "", tuple(bleu)))
        progress(1.0, "scored")
        conditions = {"images": str(len(self.images)), "batch_size": str(self.batch_size)}
        return SuiteResult(self.name, tuple(metrics), conditions)
