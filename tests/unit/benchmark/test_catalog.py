"""Suite names: built-ins, BEIR paths, options, and an unknown name refused with the known ones listed."""

from __future__ import annotations

import pytest

from modelyard.benchmark.captions import CaptionSuite
from modelyard.benchmark.catalog import list_suites, resolve_suite
from modelyard.benchmark.images import ImageEmbeddingSuite
from modelyard.benchmark.retrieval import RetrievalSuite
from modelyard.common.errors import InvalidArgument, NotFound

from .conftest import WriteDataset


def test_lists_every_kind_of_suite() -> None:
    suites = {s.name: s for s in list_suites()}
    assert suites["stdlib-docstrings"].kind == "text_retrieval"
    assert "600 queries" in suites["stdlib-docstrings"].description
    assert suites["digits"].kind == "image_embedding"
    assert suites["digits-captions"].kind == "captioning"
    assert suites["load"].kind == "load"


def test_resolves_builtins_and_beir_paths_with_options(write_beir: WriteDataset) -> None:
    text = resolve_suite("stdlib-docstrings", {"k": "3,20", "batch_size": "8"})
    assert isinstance(text, RetrievalSuite) and text.ks == (3, 20) and text.batch_size == 8
    beir = resolve_suite(f"beir:{write_beir()}")
    assert isinstance(beir, RetrievalSuite) and len(beir.dataset.corpus) == 4
    digits = resolve_suite("digits", {"limit": "30"})
    assert isinstance(digits, ImageEmbeddingSuite) and len(digits.images) == 30
    assert isinstance(resolve_suite("digits-captions", {"limit": "10"}), CaptionSuite)


def test_unknown_suite_is_not_found_and_lists_the_known_ones() -> None:
    with pytest.raises(NotFound, match="stdlib-docstrings"):
        resolve_suite("imagenet")


def test_missing_beir_path_is_not_found(tmp_path: object) -> None:
    with pytest.raises(NotFound):
        resolve_suite(f"beir:{tmp_path}/absent")


@pytest.mark.parametrize("options", [{"k": "ten"}, {"k": "0,5"}, {"batch_size": "-1"}, {"limit": "x"}])
def test_bad_options_are_invalid(options: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        resolve_suite("digits" if "limit" in options else "stdlib-docstrings", options)


def test_limit_keeps_the_first_queries_with_only_their_judged_documents(write_beir: WriteDataset) -> None:
    full = resolve_suite("stdlib-docstrings")
    small = resolve_suite("stdlib-docstrings", {"limit": "25"})
    assert isinstance(full, RetrievalSuite) and isinstance(small, RetrievalSuite)
    assert small.name == "stdlib-docstrings[limit=25]"  # never mistaken for a run of the whole suite
    assert small.dataset.judged_query_ids == full.dataset.judged_query_ids[:25]
    judged = {d for q in small.dataset.judged_query_ids for d in full.dataset.qrels[q]}
    assert set(small.dataset.corpus) == judged and len(judged) < len(full.dataset.corpus)
    assert small.fingerprint() != full.fingerprint()
    beir = resolve_suite(f"beir:{write_beir()}", {"limit": "1"})
    assert isinstance(beir, RetrievalSuite) and list(beir.dataset.corpus) == ["d1"]
