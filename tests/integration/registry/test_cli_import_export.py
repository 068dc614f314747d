"""`modelyard models import-registry` / `models export` and `registry serve --json` against a real
registry process, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_support import checkpoint
from support import ServerProcess, free_port, single_error_line, spawn_registry

from modelyard.cli.errors import EXIT_REFUSED


def _document(max_batch_size: Any = 8) -> dict[str, Any]:
    return {
        "format": "modelyard-registry/1",
        "models": [{"model_id": "minilm", "model_type": "text_embedding"}],
        "versions": [
            {
                "model_id": "minilm",
                "version": "1.0.0",
                "source_uri": "/models/minilm/1.0.0",
                "checkpoint_hash": checkpoint("1.0.0"),
                "loader": "sentence-transformers",
                "inference_config": {"max_batch_size": max_batch_size},
            }
        ],
    }


@pytest.fixture
def registry_process(database_url: str) -> Iterator[ServerProcess]:
    process = spawn_registry(database_url)
    try:
        yield process
    finally:
        process.terminate()


def modelyard(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", "--registry", address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_malformed_export_is_one_line_naming_the_path(
    registry_process: ServerProcess, tmp_path: Path
) -> None:
    source = tmp_path / "export.json"
    source.write_text(json.dumps(_document(max_batch_size="x")))
    result = modelyard(registry_process.address, "models", "import-registry", str(source))
    assert result.returncode == EXIT_REFUSED, result.stderr
    line = single_error_line(result.stderr)
    assert 'versions[0].inference_config.max_batch_size: expected an integer, got "x"' in line
    assert line.endswith("nothing was imported")
    listed = modelyard(registry_process.address, "--json", "models", "list")
    assert json.loads(listed.stdout) == []


def test_import_then_export_to_a_file_with_json(registry_process: ServerProcess, tmp_path: Path) -> None:
    source = tmp_path / "export.json"
    source.write_text(json.dumps(_document()))
    imported = modelyard(registry_process.address, "models", "import-registry", str(source), "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["versions"] == 1

    target = tmp_path / "again.json"
    exported = modelyard(registry_process.address, "models", "export", str(target), "--json")
    assert exported.returncode == 0, exported.stderr
    summary = json.loads(exported.stdout)
    assert summary == {"output": str(target), "bytes": target.stat().st_size}
    document = json.loads(target.read_text())
    assert [v["inference_config"]["max_batch_size"] for v in document["versions"]] == [8]
    # Without a file, the export itself is the JSON on stdout, with or without --json.
    plain = modelyard(registry_process.address, "models", "export", "--json")
    assert json.loads(plain.stdout)["format"] == "modelyard-registry/1"


def test_registry_serve_json_logs_one_object_per_line(database_url: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "modelyard.cli.main", "registry", "serve", "--json", "--port", "0",
         "--metrics-port", str(free_port()), "--database-url", database_url],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if '"server.started"' in line:
                started.set()
        started.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert started.wait(60), "".join(lines)
        events = [json.loads(line) for line in lines]
        ready = next(e for e in events if e["event"] == "server.started")
        assert ready["component"] == "registry" and ready["address"].startswith("127.0.0.1:")
    finally:
        process.terminate()
        process.wait(30)
    assert process.stdout is not None and process.stdout.read() == ""
