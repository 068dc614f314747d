"""Versions built from the same tokenizer files with the same settings share one tokenizer; any
difference in the files or the settings gets a tokenizer of its own; none outlives its versions."""

from __future__ import annotations

import gc
import json
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from worker_support import version_spec

from modelyard.inference.loaders import create_runtime
from modelyard.inference.loaders.shared_processors import files_digest, shared_count

if TYPE_CHECKING:
    from modelyard.inference.loaders.sentence_transformers import SentenceTransformerRuntime

TEXTS = ["the cat sat on the mat", "hello", "a quick brown fox jumps over the lazy dog " * 8]


def _loaded(path: Path, version: str, **config: Any) -> SentenceTransformerRuntime:
    runtime = cast("SentenceTransformerRuntime", create_runtime(version_spec(path, version, **config), path))
    runtime.load()
    runtime.optimize()
    return runtime


def test_versions_of_the_same_tokenizer_files_and_settings_share_one_tokenizer(
    tiny_st: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    gc.collect()
    before = shared_count()
    fp32 = _loaded(tiny_st, "1")
    int8 = _loaded(tiny_st, "2", quantization="int8-dynamic")
    assert int8.model.tokenizer is fp32.model.tokenizer
    # Another sequence length tokenizes differently: its own tokenizer.
    shorter = _loaded(tiny_st, "3", max_sequence_length=8)
    assert shorter.model.tokenizer is not fp32.model.tokenizer
    # A copy whose tokenizer settings differ on disk (lower model_max_length) gets its own, and
    # truncates as its files say.
    changed = tmp_path / "changed"
    shutil.copytree(tiny_st, changed)
    config_path = changed / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = 6
    config_path.write_text(json.dumps(config))
    assert files_digest(changed) != files_digest(tiny_st)
    other = _loaded(changed, "4")
    assert other.model.tokenizer is not fp32.model.tokenizer
    assert other.model.tokenizer.model_max_length == 6 != fp32.model.tokenizer.model_max_length
    # Each serves what `encode` of a model built on its own gives.
    for runtime, path in ((fp32, tiny_st), (other, changed)):
        alone = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        np.testing.assert_allclose(
            np.asarray(runtime.predict("text", TEXTS)["embedding"]), alone.encode(TEXTS), atol=1e-5
        )
    # The weights differ (int8), the tokens do not.
    assert np.array_equal(
        int8.model.preprocess(TEXTS)["input_ids"].numpy(), fp32.model.preprocess(TEXTS)["input_ids"].numpy()
    )

    for runtime in (fp32, int8, shorter, other):
        runtime.unload()
    del fp32, int8, shorter, other
    gc.collect()
    assert shared_count() == before


def test_two_versions_sharing_a_tokenizer_serve_at_once(tiny_st: Path) -> None:
    """Passes of both versions tokenize on several threads at once, as two lanes each do."""
    fp32 = _loaded(tiny_st, "1")
    int8 = _loaded(tiny_st, "2", quantization="int8-dynamic")
    assert int8.model.tokenizer is fp32.model.tokenizer
    expected = {id(r): np.asarray(r.predict("text", TEXTS)["embedding"]) for r in (fp32, int8)}
    failures: list[BaseException] = []

    def serve(runtime: SentenceTransformerRuntime) -> None:
        try:
            for _ in range(40):
                got = np.asarray(runtime.predict("text", TEXTS)["embedding"])
                np.testing.assert_allclose(got, expected[id(runtime)], atol=1e-6)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=serve, args=(r,)) for r in (fp32, int8, fp32, int8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    fp32.unload()
    int8.unload()
