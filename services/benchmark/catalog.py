"""Names of the suites the service can run: built-ins shipped with the package and `beir:<path>`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from modelyard.benchmark.beir import RetrievalDataset, load_beir
from modelyard.benchmark.captions import CaptionSuite
from modelyard.benchmark.images import ImageEmbeddingSuite, load_digits_images
from modelyard.benchmark.retrieval import DEFAULT_KS, RetrievalSuite
from modelyard.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

SUITES_DIR = Path(__file__).resolve().parent / "suites"
BEIR_PREFIX = "beir:"
LOAD = "load"

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

QualitySuite: TypeAlias = RetrievalSuite | ImageEmbeddingSuite | CaptionSuite


@dataclass(frozen=True)
class SuiteInfo:
    name: str
    kind: str  # text_retrieval, image_embedding, captioning or load
    description: str


def _builtin_retrieval() -> dict[str, SuiteInfo]:
    found = {}
    for meta_path in sorted(SUITES_DIR.glob("*/suite.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        description = f"{meta['description']} {meta['queries']} queries, {meta['documents']} documents."
        found[meta_path.parent.name] = SuiteInfo(meta_path.parent.name, meta["kind"], description)
    return found


def list_suites() -> list[SuiteInfo]:
    return [
        *_builtin_retrieval().values(),
        SuiteInfo(
            "digits",
            "image_embedding",
            "scikit-learn's 1797 handwritten digits as PNGs: leave-one-out kNN accuracy and recall@k.",
        ),
        SuiteInfo(
            "digits-captions",
            "captioning",
            "scikit-learn's digits with label-derived reference captions: token F1, BLEU, latency.",
        ),
        SuiteInfo(LOAD, "load", "Latency percentiles, throughput and error rate at each concurrency level."),
        SuiteInfo(
            f"{BEIR_PREFIX}<path>",
            "text_retrieval",
            "Any BEIR dataset on disk (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).",
        ),
    ]


def int_option(options: Mapping[str, str], key: str, default: int) -> int:
    raw = options.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"option {key}={raw!r} is not an integer") from None
    if value <= 0:
        raise InvalidArgument(f"option {key} must be > 0, got {value}")
    return value


def _ks_option(options: Mapping[str, str]) -> tuple[int, ...]:
    raw = options.get("k")
    if not raw:
        return DEFAULT_KS
    try:
        ks = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise InvalidArgument(f"option k={raw!r} must be comma-separated integers, e.g. 1,5,10") from None
    if any(k <= 0 for k in ks):
        raise InvalidArgument(f"option k={raw!r}: every cut-off must be > 0")
    return ks


def digits_captions(*, limit: int | None = None, batch_size: int = 16) -> CaptionSuite:
    images, labels = load_digits_images(limit=limit)
    references = [
        [f"a handwritten digit {_DIGIT_WORDS[y]}", f"the number {y} written by hand"] for y in labels
    ]
    return CaptionSuite("digits-captions", images, references, batch_size=batch_size)


def check_dataset_path(path: str, dataset_dirs: Sequence[Path]) -> None:
    """`path` (symlinks resolved) must lie inside one of `dataset_dirs`."""
    if not dataset_dirs:
        raise FailedPrecondition(
            "this benchmark service reads BEIR datasets only from configured directories and has none; "
            "start it with --dataset-dir DIR (MODELYARD_BENCHMARK_DATASET_DIRS) and put the dataset there"
        )
    target = Path(path).resolve()
    if not any(target.is_relative_to(Path(root).resolve()) for root in dataset_dirs):
        allowed = ", ".join(str(d) for d in dataset_dirs)
        raise PermissionDenied(
            f"dataset {path} is outside the benchmark service's dataset directories ({allowed}); "
            "copy it into one of them"
        )


def _limited(dataset: RetrievalDataset, limit: int | None) -> RetrievalDataset:
    return dataset.limited(limit) if limit else dataset


def resolve_suite(
    name: str, options: Mapping[str, str] | None = None, *, dataset_dirs: Sequence[Path] | None = None
) -> QualitySuite:
    """The quality suite called `name`, configured from string options (k, batch_size, split, limit).

    `limit` keeps the first N queries (retrieval: and only their judged documents) or images.
    `dataset_dirs`: where `beir:` paths may point (a service never reads files outside what it was
    configured for); None = anywhere, for library callers."""
    options = options or {}
    batch_size = int_option(options, "batch_size", 64)
    limit = int_option(options, "limit", 0) if options.get("limit") else None
    if name.startswith(BEIR_PREFIX):
        path = name.removeprefix(BEIR_PREFIX)
        if dataset_dirs is not None:
            check_dataset_path(path, dataset_dirs)
        dataset = load_beir(path, split=options.get("split") or "test", name=name)
        return RetrievalSuite(_limited(dataset, limit), ks=_ks_option(options), batch_size=batch_size)
    builtin = _builtin_retrieval()
    if name in builtin:
        dataset = load_beir(SUITES_DIR / name, name=name)
        return RetrievalSuite(_limited(dataset, limit), ks=_ks_option(options), batch_size=batch_size)
    if name == "digits":
        return ImageEmbeddingSuite.digits(
            limit=limit, knn_k=int_option(options, "knn_k", 5), ks=_ks_option(options), batch_size=batch_size
        )
    if name == "digits-captions":
        return digits_captions(limit=limit, batch_size=int_option(options, "batch_size", 16))
    known = ", ".join(s.name for s in list_suites())
    raise NotFound(f"unknown suite {name!r}; known suites: {known}")
