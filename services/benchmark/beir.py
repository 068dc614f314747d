"""Loads text retrieval datasets in BEIR format: corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from modelyard.common.errors import InvalidArgument, NotFound


class MalformedDataset(InvalidArgument):
    """A dataset file breaks the BEIR format; the message names the file and the line."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str

    @property
    def passage(self) -> str:
        """What gets embedded: BEIR joins the title and the text."""
        return f"{self.title}. {self.text}" if self.title else self.text


@dataclass(frozen=True)
class RetrievalDataset:
    """Corpus, queries and graded relevance judgements (qrels[query_id][doc_id] = grade)."""

    name: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @property
    def judged_query_ids(self) -> list[str]:
        """Queries with at least one relevant document, in a stable order; only these are scored."""
        return sorted(qid for qid, rels in self.qrels.items() if any(g > 0 for g in rels.values()))

    def limited(self, queries: int) -> RetrievalDataset:
        """The first `queries` judged queries, searching only the documents judged for them.

        A quick, smaller (so easier) variant: its name says so (`name[limit=N]`), so its runs are
        never compared with, or gated as, runs of the whole dataset."""
        kept = self.judged_query_ids[:queries]
        docs = {d for qid in kept for d in self.qrels[qid]}
        return RetrievalDataset(
            name=f"{self.name}[limit={queries}]",
            corpus={d: doc for d, doc in self.corpus.items() if d in docs},
            queries={qid: self.queries[qid] for qid in kept},
            qrels={qid: self.qrels[qid] for qid in kept},
        )


def load_beir(root: str | Path, *, split: str = "test", name: str | None = None) -> RetrievalDataset:
    """Read a BEIR dataset directory; any malformed line raises MalformedDataset naming file and line."""
    root = Path(root)
    if not root.is_dir():
        raise NotFound(f"BEIR dataset directory {root} does not exist")
    corpus_path, queries_path = root / "corpus.jsonl", root / "queries.jsonl"
    for required in (corpus_path, queries_path):
        if not required.is_file():
            raise MalformedDataset(required, None, f"file missing; a BEIR dataset needs {required.name}")
    qrels_path = _qrels_file(root, split)
    corpus = {
        doc_id: Document(doc_id, fields.get("title", ""), fields["text"])
        for doc_id, fields in _read_jsonl(corpus_path, required=("text",), optional=("title",)).items()
    }
    queries = {qid: fields["text"] for qid, fields in _read_jsonl(queries_path, required=("text",)).items()}
    qrels = _read_qrels(qrels_path, queries, corpus)
    return RetrievalDataset(name or root.name, corpus, queries, qrels)


def _qrels_file(root: Path, split: str) -> Path:
    qrels_dir = root / "qrels"
    wanted = qrels_dir / f"{split}.tsv"
    if wanted.is_file():
        return wanted
    available = sorted(qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if len(available) == 1:
        return available[0]
    if not available:
        raise MalformedDataset(qrels_dir, None, "no qrels/*.tsv file; a BEIR dataset needs relevance labels")
    names = ", ".join(p.stem for p in available)
    raise InvalidArgument(f"{root}: no qrels split {split!r}; choose one of: {names}")


def _read_jsonl(
    path: Path, *, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MalformedDataset(path, number, f"invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise MalformedDataset(path, number, "each line must be a JSON object")
            raw_id = record.get("_id")
            if raw_id is None or raw_id == "" or isinstance(raw_id, bool | float | list | dict):
                raise MalformedDataset(path, number, "missing or invalid `_id` (a string)")
            doc_id = str(raw_id)
            if doc_id in rows:
                raise MalformedDataset(path, number, f"duplicate `_id` {doc_id!r}")
            fields: dict[str, str] = {}
            for key in (*required, *optional):
                value = record.get(key)
                if value is None:
                    if key in required:
                        raise MalformedDataset(path, number, f"missing `{key}` for `_id` {doc_id!r}")
                    value = ""
                if not isinstance(value, str):
                    raise MalformedDataset(path, number, f"`{key}` must be a string")
                fields[key] = value
            rows[doc_id] = fields
    if not rows:
        raise MalformedDataset(path, None, "file has no records")
    return rows


def _read_qrels(
    path: Path, queries: dict[str, str], corpus: dict[str, Document]
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            columns = line.rstrip("\r\n").split("\t")
            if number == 1 and columns[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            if len(columns) != 3:
                raise MalformedDataset(
                    path,
                    number,
                    f"expected 3 tab-separated columns (query-id corpus-id score), got {len(columns)}",
                )
            qid, doc_id, raw_score = (c.strip() for c in columns)
            try:
                score = int(raw_score)
            except ValueError:
                raise MalformedDataset(path, number, f"score {raw_score!r} is not an integer") from None
            if qid not in queries:
                raise MalformedDataset(path, number, f"query-id {qid!r} is not in queries.jsonl")
            if doc_id not in corpus:
                raise MalformedDataset(path, number, f"corpus-id {doc_id!r} is not in corpus.jsonl")
            qrels.setdefault(qid, {})[doc_id] = score
    if not any(g > 0 for rels in qrels.values() for g in rels.values()):
        raise MalformedDataset(path, None, "no relevant (score > 0) judgements")
    return qrels
