"""`modelyard models import` from an MLflow registry and run, from the Hugging Face cache, and from a
local directory in a git work tree, run as a user runs it against a real registry: a real MLflow
file store in tmp_path, a cache laid out as huggingface_hub writes it, real git."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from support import git, single_error_line

from modelyard.api import registry_pb2 as rpb
from modelyard.cli.errors import EXIT_USAGE
from modelyard.client import RegistryClient
from modelyard.inference.artifacts import checkpoint_hash
from modelyard.inference.tiny_models import build_tiny_sentence_transformer

pytestmark = [pytest.mark.timeout(300)]

GIT_COMMIT = "0f3c9a1e5b7d2c4f6a8e0b1d3c5f7a9e2b4d6f80"


async def modelyard(address: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The real CLI in a subprocess (asynchronously: the registry serves from this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelyard.cli.main", "--registry", address, *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    return proc.returncode or 0, out.decode(), err.decode()


async def versions_of(address: str, model_id: str) -> list[rpb.ModelVersion]:
    async with RegistryClient(address) as registry:
        listed = await registry.list_versions(rpb.ListVersionsRequest(model_id=model_id))
        return list(listed.versions)


def _address(registry: object) -> str:
    return str(registry.address)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny") / "encoder", seed=7)


# ---- MLflow ------------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A local MLflow tracking + model-registry file store. MLflow 3 keeps the file store in
    maintenance mode behind MLFLOW_ALLOW_FILE_STORE; mlflow-skinny has no SQL store."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def _log_run(model: Path, tmp_path: Path) -> tuple[str, str]:
    """A run that logs the model twice: as a plain directory (`model`) and in the
    sentence_transformers flavor's layout (`st-model`: MLmodel + model.sentence_transformer/),
    plus the git-commit tag and a training and an evaluation dataset. Returns (experiment, run)."""
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.models import Model

    flavored = tmp_path / "st-model"
    shutil.copytree(model, flavored / "model.sentence_transformer")
    mlmodel = Model()
    mlmodel.add_flavor(
        "python_function", loader_module="mlflow.sentence_transformers", data="model.sentence_transformer"
    )
    mlmodel.add_flavor("sentence_transformers", sentence_transformers_version="6.2.0")
    mlmodel.save(str(flavored / "MLmodel"))

    # The client API, not the fluent one: no active experiment or run is left in this process.
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("reviews")
    run_id = client.create_run(experiment_id).info.run_id
    client.set_tag(run_id, "mlflow.source.git.commit", GIT_COMMIT)
    # What mlflow.log_input(dataset, context=...) records, as the entities MLflow stores.
    client.log_inputs(
        run_id,
        datasets=[
            DatasetInput(
                Dataset("reviews", "d1g3st", "http", '{"url": "https://data.example/reviews.jsonl"}'),
                tags=[InputTag("mlflow.data.context", "train")],
            ),
            DatasetInput(
                Dataset("held-out", "e", "http", '{"url": "https://data.example/eval.jsonl"}'),
                tags=[InputTag("mlflow.data.context", "eval")],
            ),
        ],
    )
    client.log_artifacts(run_id, str(model), "model")
    client.log_artifacts(run_id, str(flavored), "st-model")
    client.set_terminated(run_id)
    client.create_registered_model("reviews-encoder")
    created = client.create_model_version("reviews-encoder", f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("reviews-encoder", "champion", created.version)
    return experiment_id, run_id


@pytest.mark.slow
async def test_mlflow_model_and_run_uris_import_with_their_run_as_lineage(
    registry: object, mlflow_store: str, tiny_model: Path, tmp_path: Path
) -> None:
    address = _address(registry)
    experiment, run_id = _log_run(tiny_model, tmp_path)
    store = ["--store", str(tmp_path / "artifacts")]

    # The first import creates the model; the others then run side by side.
    first = await modelyard(address, "models", "import", "models:/reviews-encoder@champion", "--model", "enc",
                            "--version", "1.0.0", *store, "--json")  # fmt: skip
    imports = [first, *await asyncio.gather(
        modelyard(address, "models", "import", "models:/reviews-encoder/1", "--model", "enc",
                  "--version", "1.0.1", "--git-commit", "given-by-hand", *store, "--json"),
        modelyard(address, "models", "import", f"runs:/{run_id}/model", "--model", "enc",
                  "--version", "1.0.2", *store, "--json"),
        modelyard(address, "models", "import", f"runs:/{run_id}/st-model", "--model", "enc",
                  "--version", "1.0.3", *store, "--json"),
    )]  # fmt: skip
    for code, _, err in imports:
        assert code == 0, err
    registered = [json.loads(out) for _, out, _ in imports]
    expected_hash = checkpoint_hash(tiny_model)
    assert [v["checkpoint_hash"] for v in registered] == [expected_hash] * 4
    assert {v["loader"] for v in registered} == {"sentence-transformers"}

    by_version = {v.version: v for v in await versions_of(address, "enc")}
    assert set(by_version) == {"1.0.0", "1.0.1", "1.0.2", "1.0.3"}
    recorded = rpb.Lineage(
        training_run=f"{experiment}/{run_id}", git_commit=GIT_COMMIT, dataset="reviews@d1g3st"
    )
    assert by_version["1.0.0"].lineage == recorded
    assert by_version["1.0.2"].lineage == recorded
    assert by_version["1.0.3"].lineage == recorded
    # An explicit flag wins over what MLflow recorded; the rest still comes from the run.
    assert by_version["1.0.1"].lineage.git_commit == "given-by-hand"
    assert by_version["1.0.1"].lineage.training_run == f"{experiment}/{run_id}"
    assert by_version["1.0.0"].signature.embedding_dim == 32
    # What is registered is the stored copy, not the deleted download.
    stored = Path(by_version["1.0.0"].source_uri.removeprefix("file://"))
    assert checkpoint_hash(stored) == expected_hash

    code, _, err = await modelyard(
        address, "models", "import", "models:/reviews-encoder@challenger", "--model", "enc",
        "--version", "2.0.0", *store,
    )  # fmt: skip
    assert code == EXIT_USAGE
    line = single_error_line(err)
    assert "registered model 'reviews-encoder' has no alias 'challenger' (its aliases: champion)" in line
    assert len(await versions_of(address, "enc")) == 4


# ---- the Hugging Face cache ------------------------------------------------------------------------------


def _hf_cache(cache: Path, repo_id: str, model: Path, commit: str) -> None:
    """`models--ORG--NAME/{blobs,snapshots/COMMIT,refs/main}` as huggingface_hub writes it: each
    snapshot file a relative symlink to its blob (named by the file's hash)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in model.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.slow
async def test_a_model_in_the_hugging_face_cache_imports_with_its_commit(
    registry: object, tiny_model: Path, tmp_path: Path
) -> None:
    address = _address(registry)
    commit = "a" * 40
    _hf_cache(tmp_path / "hub", "tiny-org/tiny-encoder", tiny_model, commit)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    store = ["--store", str(tmp_path / "artifacts")]

    code, out, err = await modelyard(address, "models", "import", "hf://tiny-org/tiny-encoder", "--model", "hf-enc",
                                     "--version", "1.0.0", *store, "--json", env=env)  # fmt: skip
    pinned_code, pinned_out, pinned_err = await modelyard(
        address, "models", "import", f"hf://tiny-org/tiny-encoder@{commit}", "--model", "hf-enc",
        "--version", "1.0.1", *store, "--json", env=env,
    )  # fmt: skip
    assert code == 0, err
    assert pinned_code == 0, pinned_err
    for registered in (json.loads(out), json.loads(pinned_out)):
        assert registered["checkpoint_hash"] == checkpoint_hash(tiny_model)
        assert registered["lineage"] == {"training_run": f"hf://tiny-org/tiny-encoder@{commit}"}

    code, _, err = await modelyard(
        address, "models", "import", "hf://tiny-org/not-downloaded", "--model", "hf-enc", "--version", "2.0.0",
        *store, env=env,
    )  # fmt: skip
    assert code == EXIT_USAGE
    line = single_error_line(err)
    assert "tiny-org/not-downloaded is not in the Hugging Face cache at" in line and "never downloads" in line
    assert len(await versions_of(address, "hf-enc")) == 2


# ---- a local directory in a git work tree -----------------------------------------------------------------


@pytest.mark.slow
async def test_a_directory_in_a_git_work_tree_records_its_commit(
    registry: object, tiny_model: Path, tmp_path: Path
) -> None:
    address = _address(registry)
    repo = tmp_path / "training"
    shutil.copytree(tiny_model, repo / "export" / "encoder")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "train")
    head = git(repo, "rev-parse", "HEAD")
    source = str(repo / "export" / "encoder")
    store = ["--store", str(tmp_path / "artifacts")]

    code, out, err = await modelyard(address, "models", "import", source, "--model", "git-enc",
                                     "--version", "1.0.0", *store, "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["lineage"] == {"git_commit": head}

    readme = repo / "export" / "encoder" / "README.md"
    readme.write_text(readme.read_text() + "\nretrained by hand\n")
    (code, out, err), (given_code, given_out, given_err) = await asyncio.gather(
        modelyard(address, "models", "import", source, "--model", "git-enc", "--version", "1.0.1", *store, "--json"),
        modelyard(address, "models", "import", source, "--model", "git-enc", "--version", "1.0.2",
                  "--git-commit", "abc1234", *store, "--json"),
    )  # fmt: skip
    assert code == 0, err
    assert given_code == 0, given_err
    dirty: dict[str, Any] = json.loads(out)
    assert dirty["lineage"] == {"git_commit": f"{head}-dirty"}
    assert (
        dirty["checkpoint_hash"]
        == checkpoint_hash(repo / "export" / "encoder")
        != checkpoint_hash(tiny_model)
    )
    assert json.loads(given_out)["lineage"] == {"git_commit": "abc1234"}
