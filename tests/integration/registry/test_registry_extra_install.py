"""The `registry` extra alone runs a registry: a clean venv with `pip install modelyard[registry]`
serves the registry API on its embedded PostgreSQL, without torch or any model library."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from support import REPO_ROOT, ServerProcess, make_postgres_dir

from modelyard.api import registry_pb2 as rpb
from modelyard.api import registry_pb2_grpc as rpb_grpc

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_a_clean_venv_with_the_registry_extra_serves_the_registry_without_model_libraries(
    tmp_path: Path,
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "-q",
         "-c", str(REPO_ROOT / "constraints.txt"), f"{REPO_ROOT}[registry]"],
        capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    absent = textwrap.dedent(
        """
        import importlib.util
        names = ("torch", "transformers", "sentence_transformers", "onnxruntime", "open_clip", "PIL", "sklearn")
        print([m for m in names if importlib.util.find_spec(m)])
        """
    )
    heavy = subprocess.run([python, "-c", absent], capture_output=True, text=True, check=True)
    assert heavy.stdout.strip() == "[]", heavy.stdout

    data = make_postgres_dir()
    registry = ServerProcess(
        ["-m", "modelyard.registry", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
         "--data-dir", str(data / "registry")],
        timeout=120, python=python,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(registry.address) as channel:
            stub = rpb_grpc.RegistryServiceStub(channel)
            created = stub.CreateModel(
                rpb.CreateModelRequest(model_id="minilm", model_type=rpb.TEXT_EMBEDDING),
                timeout=30,
            )
            assert created.model_id == "minilm"
            listed = stub.ListModels(rpb.ListModelsRequest(), timeout=30)
            assert [m.model_id for m in listed.models] == ["minilm"]
        assert registry.terminate() == 0
    finally:
        registry.kill()
