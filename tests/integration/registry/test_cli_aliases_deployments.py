"""`modelyard models aliases|delete-alias` and `deployments check|delete` against a real registry
process, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from registry_support import checkpoint, text_signature
from support import ServerProcess, single_error_line, spawn_registry

from modelyard.api import registry_pb2 as pb
from modelyard.cli.errors import EXIT_REFUSED
from modelyard.client import RegistryClient


@pytest.fixture
def registry_process(database_url: str) -> Iterator[ServerProcess]:
    process = spawn_registry(database_url)
    try:
        asyncio.run(_seed(process.address))
        yield process
    finally:
        process.terminate()


async def _seed(address: str) -> None:
    """minilm 1.0.0 (384-dim) and 2.0.0 (768-dim); `production` -> 1.0.0; `text` follows it."""
    async with RegistryClient(address) as registry:
        for version, dim in (("1.0.0", 384), ("2.0.0", 768)):
            await registry.register_version(
                pb.RegisterVersionRequest(
                    version=pb.ModelVersion(
                        model_id="minilm",
                        version=version,
                        source_uri=f"/models/minilm/{version}",
                        checkpoint_hash=checkpoint(version),
                        loader="sentence-transformers",
                        signature=text_signature(dim),
                    ),
                    create_model=True,
                    model_type=pb.TEXT_EMBEDDING,
                )
            )
        await registry.set_alias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.0.0"))
        await registry.create_deployment(
            pb.CreateDeploymentRequest(name="text", model_id="minilm", follow_alias="production")
        )


def modelyard(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", "--registry", address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_aliases_are_listed_and_a_followed_one_is_not_deleted(registry_process: ServerProcess) -> None:
    address = registry_process.address
    listed = modelyard(address, "--json", "models", "aliases", "minilm")
    assert listed.returncode == 0, listed.stderr
    assert [(a["alias"], a["version"]) for a in json.loads(listed.stdout)] == [("production", "1.0.0")]

    refused = modelyard(address, "models", "delete-alias", "minilm", "production")
    assert refused.returncode == EXIT_REFUSED
    assert "followed by deployment(s) text" in single_error_line(refused.stderr)

    assert modelyard(address, "deployments", "delete", "text").returncode == 0
    deleted = modelyard(address, "models", "delete-alias", "minilm", "production", "--reason", "retired")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(modelyard(address, "--json", "models", "aliases", "minilm").stdout) == []


def test_check_says_whether_a_version_keeps_the_deployments_signature(
    registry_process: ServerProcess,
) -> None:
    address = registry_process.address
    same = modelyard(address, "--json", "deployments", "check", "text", "1.0.0")
    assert same.returncode == 0 and json.loads(same.stdout)["compatible"] is True

    other = modelyard(address, "deployments", "check", "text", "2.0.0")
    assert other.returncode == EXIT_REFUSED
    line = single_error_line(other.stderr)
    assert "embedding dimension 768 instead of 384" in line and "--acknowledge-incompatible" in line


def test_delete_removes_the_deployment_and_is_audited(registry_process: ServerProcess) -> None:
    address = registry_process.address
    done = modelyard(address, "--json", "deployments", "delete", "text", "--reason", "decommissioned")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"] is True
    gone = modelyard(address, "deployments", "status", "text")
    assert gone.returncode == EXIT_REFUSED and "unknown deployment 'text'" in single_error_line(gone.stderr)
    history = json.loads(modelyard(address, "--json", "deployments", "history", "text").stdout)
    assert history[0]["action"] == "deployment.delete" and history[0]["reason"] == "decommissioned"
