"""`modelyard models import-registry` / `models export` and `registry serve --json` against a real
registry process, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from registry_support import checkpoint
from support import ServerProcess, free_port, single_error_line

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
                "inference_config": {"max_batch_size": max_batch_size, "max_batch_tokens": 2048},
            }
        ],
    }


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
    assert [v["inference_config"]["max_batch_tokens"] for v in document["versions"]] == [2048]
    shown = modelyard(registry_process.address, "models", "show", "minilm", "1.0.0")
    assert "batch 8 (2048 tokens)" in shown.stdout, shown.stdout
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


def test_an_imported_models_prompts_are_read_at_import_and_shown(
    registry_process: ServerProcess, tmp_path: Path
) -> None:
    """E5-style prompts are part of the signature `models import` reads by loading the model: the
    registry stores them and `models show` lists them."""
    from prompt_support import with_prompts

    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    e5 = with_prompts(build_tiny_sentence_transformer(tmp_path / "st"), tmp_path / "e5", default="query")
    store = str(tmp_path / "store")
    imported = modelyard(
        registry_process.address, "--json", "models", "import", str(e5), "--model", "e5", "--version",
        "1.0.0", "--store", store,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["signature"]["parameters"] == {
        "prompt_name.choice.passage": "passage: ",
        "prompt_name.choice.query": "query: ",
        "prompt_name.default": "query",
    }
    shown = modelyard(registry_process.address, "models", "show", "e5", "1.0.0")
    assert shown.returncode == 0, shown.stderr
    assert "prompt_name: passage='passage: ', query='query: ' (default query)" in shown.stdout, shown.stdout
