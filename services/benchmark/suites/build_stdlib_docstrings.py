"""Builds the `stdlib-docstrings` retrieval suite from the docstrings of Python's standard library.

Each documented public function, class or method becomes a document: its qualified name as the
title and its docstring *after* the summary paragraph as the text. Its summary sentence becomes
a query whose relevant documents are every object documented with that same summary (so
`bytes.find` and `bytearray.find` are both right answers). Documents whose summary repeats
another's but whose body is identical are dropped. The output is deterministic for one CPython
version; the committed files are the suite, this script only says how they were made:

    .venv/bin/python services/benchmark/suites/build_stdlib_docstrings.py
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import platform
import re
import sys
import warnings
from pathlib import Path
from typing import Any

NAME = "stdlib-docstrings"
OUT = Path(__file__).resolve().parent / NAME

# Modules with side effects on import, GUI toolkits, test suites and installers.
SKIP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
    "ensurepip", "venv", "pydoc_data", "msilib", "winreg", "winsound", "nt", "msvcrt",
}  # fmt: skip
MIN_SUMMARY_WORDS, MAX_SUMMARY_WORDS = 5, 40
MIN_BODY_WORDS = 25
MAX_BODY_WORDS = 48  # keeps the suite quick to embed on a CPU
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$|->")


def _paragraphs(doc: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]


def _entry(qualname: str, obj: Any) -> tuple[str, str] | None:
    doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return None
    paragraphs = _paragraphs(doc)
    while paragraphs and _SIGNATURE.search(paragraphs[0]):
        paragraphs.pop(0)  # C functions often start with their signature
    if len(paragraphs) < 2:
        return None
    summary, body = paragraphs[0], " ".join(paragraphs[1:])
    if not MIN_SUMMARY_WORDS <= len(summary.split()) <= MAX_SUMMARY_WORDS:
        return None
    words = body.split()
    if len(words) < MIN_BODY_WORDS:
        return None
    return summary, " ".join(words[:MAX_BODY_WORDS])


def _documented_objects() -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for module_name in sorted(sys.stdlib_module_names):
        if module_name.startswith("_") or module_name in SKIP:
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                module = importlib.import_module(module_name)
        except Exception:  # platform-specific or optional modules missing here
            continue
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != module_name:
                continue
            candidates = [(f"{module_name}.{attr}", obj)]
            if inspect.isclass(obj):
                candidates += [
                    (f"{module_name}.{attr}.{name}", member)
                    for name, member in sorted(vars(obj).items())
                    if not name.startswith("_") and callable(member)
                ]
            for qualname, candidate in candidates:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    entry = _entry(qualname, candidate)
                if entry is not None:
                    found[qualname] = entry
    return found


def build() -> dict[str, int]:
    documents = _documented_objects()
    seen_bodies: set[str] = set()
    groups: dict[str, list[str]] = {}  # normalised summary -> qualified names
    summaries: dict[str, str] = {}
    kept: dict[str, tuple[str, str]] = {}
    for qualname, (summary, body) in sorted(documents.items()):
        if body in seen_bodies:
            continue
        seen_bodies.add(body)
        key = summary.lower()
        groups.setdefault(key, []).append(qualname)
        summaries.setdefault(key, summary)
        kept[qualname] = (summary, body)

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "qrels").mkdir(exist_ok=True)
    with (OUT / "corpus.jsonl").open("w", encoding="utf-8") as corpus:
        for qualname, (_, body) in sorted(kept.items()):
            corpus.write(json.dumps({"_id": qualname, "title": qualname, "text": body}) + "\n")
    queries = sorted((names[0], key) for key, names in groups.items())
    with (
        (OUT / "queries.jsonl").open("w", encoding="utf-8") as out,
        (OUT / "qrels" / "test.tsv").open("w", encoding="utf-8") as qrels,
    ):
        qrels.write("query-id\tcorpus-id\tscore\n")
        for first, key in queries:
            qid = f"q:{first}"
            out.write(json.dumps({"_id": qid, "text": summaries[key]}) + "\n")
            for qualname in groups[key]:
                qrels.write(f"{qid}\t{qualname}\t1\n")
    counts = {"documents": len(kept), "queries": len(queries)}
    meta = {
        "name": NAME,
        "kind": "text_retrieval",
        "description": (
            "Python standard-library docstrings: find the object a one-sentence summary describes "
            "among the bodies of all documented functions, classes and methods."
        ),
        "source": f"CPython {platform.python_version()} standard library docstrings",
        "generated_by": "services/benchmark/suites/build_stdlib_docstrings.py",
        **counts,
    }
    (OUT / "suite.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return counts


if __name__ == "__main__":
    print(build())
