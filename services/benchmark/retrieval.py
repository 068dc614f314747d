"""Text retrieval quality: exact cosine search over a BEIR dataset, recall@k, MRR@10 and nDCG@10."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from modelyard.benchmark.beir import RetrievalDataset
from modelyard.benchmark.results import MetricResult, SuiteResult
from modelyard.common.errors import InvalidArgument
from modelyard.common.modelspec import PROMPT_NAME, RequestParameter

TextEmbedder = Callable[[list[str]], np.ndarray]
"""Maps N texts to an [N, D] array; the service plugs in an OIP client, tests a local model."""

Progress = Callable[[float, str], None]

DEFAULT_KS = (1, 5, 10)
RANK_CUTOFF = 10  # MRR and nDCG are reported at 10, as BEIR does


def _no_progress(fraction: float, message: str) -> None:
    return None


def embed_in_batches(
    embed: Callable[[list[Any]], np.ndarray],
    items: Sequence[str] | Sequence[bytes],
    *,
    batch_size: int,
    what: str,
    progress: Progress,
    start: float,
    span: float,
) -> np.ndarray:
    """Embed `items` in batches, checking shapes, reporting progress in [start, start + span].

    Texts go in order of length, as `SentenceTransformer.encode` orders its input: a batch then
    pads only to its own longest text (with the docstring corpus, a fifth less compute for mpnet
    than batches in corpus order). The rows come back in the order of `items`."""
    order = (
        sorted(range(len(items)), key=lambda i: len(items[i]))
        if items and isinstance(items[0], str)
        else None
    )
    ordered = [items[i] for i in order] if order is not None else list(items)
    parts: list[np.ndarray] = []
    for offset in range(0, len(ordered), batch_size):
        batch = ordered[offset : offset + batch_size]
        vectors = np.asarray(embed(batch), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(batch):
            raise InvalidArgument(
                f"embedder returned shape {vectors.shape} for {len(batch)} {what}; expected [{len(batch)}, D]"
            )
        parts.append(vectors)
        done = min(offset + batch_size, len(ordered))
        progress(start + span * done / len(ordered), f"embedded {done}/{len(ordered)} {what}")
    joined = np.concatenate(parts, axis=0)
    if order is None:
        return joined
    restored = np.empty_like(joined)
    restored[order] = joined
    return restored


# The prompts `SentenceTransformer.encode_query` and `encode_document` pick, in their order.
QUERY_PROMPTS = ("query",)
DOCUMENT_PROMPTS = ("document", "passage", "corpus")


def retrieval_prompts(parameters: Sequence[RequestParameter]) -> tuple[str, str]:
    """The prompt names a run sends with queries and with documents (E5: `query`, `passage`),
    among those the version defines; "" sends none (then its default prompt, if any, applies)."""
    prompt = next((p for p in parameters if p.name == PROMPT_NAME), None)
    names = prompt.values() if prompt is not None else ()
    query = next((name for name in QUERY_PROMPTS if name in names), "")
    document = next((name for name in DOCUMENT_PROMPTS if name in names), "")
    return query, document


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def top_k_cosine(queries: np.ndarray, corpus: np.ndarray, k: int, *, batch_size: int = 256) -> np.ndarray:
    """Indices of the k most cosine-similar corpus rows per query, best first; exact, batched."""
    if queries.shape[1] != corpus.shape[1]:
        raise InvalidArgument(
            f"query embeddings have dimension {queries.shape[1]}, corpus embeddings {corpus.shape[1]}"
        )
    k = min(k, corpus.shape[0])
    q, c = normalize_rows(queries), normalize_rows(corpus)
    result = np.empty((q.shape[0], k), dtype=np.int64)
    for offset in range(0, q.shape[0], batch_size):
        scores = q[offset : offset + batch_size] @ c.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        # Sort by score, then by index so ties rank the same way on every run.
        order = np.lexsort((part, -part_scores), axis=1)
        result[offset : offset + batch_size] = np.take_along_axis(part, order, axis=1)
    return result


def recall_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    wanted = {d for d, g in relevant.items() if g > 0}
    return len(wanted.intersection(ranked[:k])) / len(wanted)


def reciprocal_rank(ranked: Sequence[str], relevant: dict[str, int], k: int = RANK_CUTOFF) -> float:
    for position, doc_id in enumerate(ranked[:k], start=1):
        if relevant.get(doc_id, 0) > 0:
            return 1.0 / position
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int = RANK_CUTOFF) -> float:
    """nDCG with linear gains, as trec_eval and BEIR compute it."""
    dcg = sum(max(relevant.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


class RetrievalSuite:
    """Scores a text embedder on one BEIR dataset; every metric keeps one sample per judged query."""

    kind = "text_retrieval"

    def __init__(
        self, dataset: RetrievalDataset, *, ks: Sequence[int] = DEFAULT_KS, batch_size: int = 64
    ) -> None:
        if not ks or any(k <= 0 for k in ks):
            raise InvalidArgument(f"recall cut-offs must be positive integers, got {list(ks)}")
        if batch_size <= 0:
            raise InvalidArgument(f"batch_size must be > 0, got {batch_size}")
        self.dataset = dataset
        self.ks = tuple(sorted(set(ks)))
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        return self.dataset.name

    def fingerprint(self) -> str:
        """Identifies the scored queries and labels: per-query samples pair up only when it matches."""
        digest = hashlib.sha256()
        for qid in self.dataset.judged_query_ids:
            digest.update(f"{qid}\t{sorted(self.dataset.qrels[qid].items())}\n".encode())
        return digest.hexdigest()[:16]

    def embed(
        self,
        embed_texts: TextEmbedder,
        progress: Progress = _no_progress,
        *,
        embed_queries: TextEmbedder | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the judged queries and of the whole corpus, in dataset order; queries
        through `embed_queries` when given (a model's query prompt), else like documents."""
        doc_ids = list(self.dataset.corpus)
        query_ids = self.dataset.judged_query_ids
        corpus = embed_in_batches(
            embed_texts,
            [self.dataset.corpus[d].passage for d in doc_ids],
            batch_size=self.batch_size,
            what="documents",
            progress=progress,
            start=0.0,
            span=0.8,
        )
        queries = embed_in_batches(
            embed_queries or embed_texts,
            [self.dataset.queries[q] for q in query_ids],
            batch_size=self.batch_size,
            what="queries",
            progress=progress,
            start=0.8,
            span=0.15,
        )
        return queries, corpus

    def score(self, query_vectors: np.ndarray, corpus_vectors: np.ndarray) -> tuple[MetricResult, ...]:
        """Metrics from precomputed embeddings (rows ordered like `embed` returns them)."""
        doc_ids = list(self.dataset.corpus)
        query_ids = self.dataset.judged_query_ids
        depth = max(max(self.ks), RANK_CUTOFF)
        top = top_k_cosine(query_vectors, corpus_vectors, depth)
        samples: dict[str, list[float]] = {f"recall@{k}": [] for k in self.ks}
        samples[f"mrr@{RANK_CUTOFF}"] = []
        samples[f"ndcg@{RANK_CUTOFF}"] = []
        for row, qid in enumerate(query_ids):
            ranked = [doc_ids[i] for i in top[row]]
            relevant = self.dataset.qrels[qid]
            for k in self.ks:
                samples[f"recall@{k}"].append(recall_at_k(ranked, relevant, k))
            samples[f"mrr@{RANK_CUTOFF}"].append(reciprocal_rank(ranked, relevant))
            samples[f"ndcg@{RANK_CUTOFF}"].append(ndcg_at_k(ranked, relevant))
        return tuple(
            MetricResult(name, float(np.mean(values)), "", tuple(values)) for name, values in samples.items()
        )

    def run(
        self,
        embed_texts: TextEmbedder,
        progress: Progress = _no_progress,
        *,
        embed_queries: TextEmbedder | None = None,
    ) -> SuiteResult:
        started = time.perf_counter()
        queries, corpus = self.embed(embed_texts, progress, embed_queries=embed_queries)
        metrics = self.score(queries, corpus)
        progress(1.0, "scored")
        conditions = {
            "dataset_fingerprint": self.fingerprint(),
            "queries": str(len(queries)),
            "documents": str(len(corpus)),
            "embedding_dim": str(corpus.shape[1]),
            "batch_size": str(self.batch_size),
            "text_order": "length",
            "seconds": f"{time.perf_counter() - started:.3f}",
        }
        return SuiteResult(self.name, metrics, conditions)
