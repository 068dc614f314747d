"""The SOURCE forms of `modelyard models import` without a registry: every MLflow and Hugging Face
mistake is one line and exit 2 (or 4 when the tracking server does not answer) before the registry
is contacted, the servable directory inside an MLflow model, and the git commit of a local path.
A real MLflow file store, real MLflow layouts, real git; the registry address answers nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from support import free_port, git, single_error_line

from modelyard.api import registry_pb2 as rpb
from modelyard.cli import import_sources
from modelyard.cli.errors import EXIT_UNREACHABLE, EXIT_USAGE, UsageError
from modelyard.cli.importer import read_signature, recognised_loader
from modelyard.cli.main import main
from modelyard.inference.artifacts import checkpoint_hash


def run_import(capsys: pytest.CaptureFixture[str], source: str, *args: str) -> tuple[int, str]:
    """`models import SOURCE` in this process against a registry address where nothing listens:
    an exit other than 4 proves the mistake was found before the registry was asked."""
    with pytest.raises(SystemExit) as exited:
        main(["--registry", f"127.0.0.1:{free_port()}", "models", "import", source,
              "--model", "m", "--version", "1.0.0", *args])  # fmt: skip
    return int(exited.value.code or 0), capsys.readouterr().err


# ---- MLflow ------------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A local MLflow file store holding registered model `reviews` version 1 (alias `champion`)
    from one run; returns the run id."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"w")
    client = mlflow.MlflowClient()  # not the fluent API: no active run or experiment stays behind
    run_id = str(client.create_run(client.create_experiment("reviews")).info.run_id)
    client.log_artifacts(run_id, str(tmp_path / "model"), "model")
    client.create_registered_model("reviews")
    client.create_model_version("reviews", f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("reviews", "champion", "1")
    return run_id


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("models:/nope/1", "no registered model 'nope' in the MLflow registry at file://"),
        ("models:/reviews/9", "registered model 'reviews' has no version 9 (its versions: 1)"),
        (
            "models:/reviews@staging",
            "registered model 'reviews' has no alias 'staging' (its aliases: champion)",
        ),
        ("models:/reviews/latest", "the version must be a number (models:/NAME/3) or an alias"),
        ("models:/reviews", "give a version (models:/reviews/3) or an alias (models:/reviews@champion)"),
        ("runs:/0123456789abcdef0123456789abcdef/model", "no MLflow run '0123456789abcdef0123456789abcdef'"),
        ("models:/m-0123456789abcdef", "no logged model m-0123456789abcdef in the tracking store at file://"),
    ],
)
def test_what_mlflow_does_not_hold_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], mlflow_run: str, source: str, expected: str
) -> None:
    code, err = run_import(capsys, source)
    assert code == EXIT_USAGE, err
    line = single_error_line(err)
    assert expected in line and line.startswith(f"error: {source}: ")


def test_an_mlflow_3_logged_model_is_located_with_its_run_and_fetched(
    mlflow_run: str, tmp_path: Path
) -> None:
    """`mlflow.<flavor>.log_model` in MLflow 3 answers `models:/m-ID`, a logged model of a run."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment_id = client.get_run(mlflow_run).info.experiment_id
    logged = client.create_logged_model(experiment_id, name="encoder", source_run_id=mlflow_run)
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "modules.json").write_text("[]")
    client.log_model_artifacts(logged.model_id, str(tmp_path / "encoder"))

    located = import_sources.locate(f"models:/{logged.model_id}")
    assert located.lineage == rpb.Lineage(training_run=f"{experiment_id}/{mlflow_run}")
    assert f"logged model {logged.model_id}, run {mlflow_run}" in located.description
    with located.fetch() as fetched:
        assert checkpoint_hash(fetched) == checkpoint_hash(tmp_path / "encoder")
        scratch = fetched
    assert not scratch.exists()  # the download is removed after the import


def test_an_unreachable_tracking_server_fails_in_seconds_with_exit_4(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    started = time.monotonic()
    code, err = run_import(capsys, "models:/reviews@champion")
    assert code == EXIT_UNREACHABLE
    line = single_error_line(err)
    assert f"the MLflow tracking server at {server} is not reachable (connection refused)" in line
    assert "MLFLOW_TRACKING_URI" in line and "nothing was imported" in line
    # MLflow alone retries for about four minutes.
    assert time.monotonic() - started < 30
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the CLI's default did not leak


def test_without_mlflow_installed_the_error_names_the_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    code, err = run_import(capsys, "models:/reviews/1")
    assert code == EXIT_USAGE
    assert "pip install 'modelyard[mlflow]'" in single_error_line(err)


def test_a_file_store_mlflow_keeps_in_maintenance_mode_says_how_to_opt_in(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    code, err = run_import(capsys, "models:/reviews/1")
    assert code == EXIT_USAGE
    assert "MLFLOW_ALLOW_FILE_STORE=true" in single_error_line(err)


def test_an_unknown_scheme_lists_the_forms(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_import(capsys, "s3://bucket/model")
    assert code == EXIT_USAGE
    assert "models:/NAME/VERSION" in single_error_line(err) and "hf://ORG/NAME" in err


def _mlmodel(directory: Path, flavors: dict[str, dict[str, object]]) -> None:
    from mlflow.models import Model

    model = Model()
    for name, conf in flavors.items():
        model.add_flavor(name, **conf)
    directory.mkdir(parents=True, exist_ok=True)
    model.save(str(directory / "MLmodel"))


def test_a_transformers_flavor_directory_serves_its_weights_with_its_components(tmp_path: Path) -> None:
    """mlflow.transformers keeps the weights in `model/` and the tokenizer and image processor in
    `components/NAME/`: the captioning loader finds them together and the model loads."""
    from modelyard.inference.tiny_models import build_tiny_captioner

    built = build_tiny_captioner(tmp_path / "built", kind="vision-encoder-decoder")
    root = tmp_path / "download"
    _mlmodel(
        root, {"transformers": {"model_binary": "model", "components": ["tokenizer", "image_processor"]}}
    )
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (root / "model").mkdir(exist_ok=True)
        shutil.copy(built / name, root / "model" / name)
    for component, names in (("tokenizer", ["tokenizer.json", "tokenizer_config.json"]),
                             ("image_processor", ["preprocessor_config.json"])):  # fmt: skip
        (root / "components" / component).mkdir(parents=True)
        for name in names:
            shutil.copy(built / name, root / "components" / component / name)

    found = import_sources.mlflow_model_directory(root, "models:/captioner/1", None)
    assert found == root / "model"
    assert recognised_loader(found) == "hf-captioning"
    assert checkpoint_hash(found) == checkpoint_hash(built)
    signature = read_signature(found, "hf-captioning", rpb.InferenceConfig())
    assert [t.name for t in signature.outputs] == ["caption"]


def test_a_transformers_model_logged_without_weights_points_at_the_hugging_face_cache(tmp_path: Path) -> None:
    _mlmodel(
        tmp_path, {"transformers": {"source_model_name": "org/captioner", "source_model_revision": "c0ffee"}}
    )
    with pytest.raises(
        UsageError, match=r"import hf://org/captioner@c0ffee from the local Hugging Face cache"
    ):
        import_sources.mlflow_model_directory(tmp_path, "models:/captioner/2", None)


def test_an_mlflow_model_nothing_can_serve_names_its_flavors_and_files(tmp_path: Path) -> None:
    _mlmodel(
        tmp_path,
        {"python_function": {"loader_module": "mlflow.sklearn"}, "sklearn": {"pickled_model": "model.pkl"}},
    )
    (tmp_path / "model.pkl").write_bytes(b"\x80")
    with pytest.raises(UsageError) as refused:
        import_sources.mlflow_model_directory(tmp_path, "models:/churn/3", None)
    message = refused.value.message
    assert message.startswith("models:/churn/3 holds no model directory Modelyard can serve")
    assert "flavors: python_function, sklearn; files: MLmodel, model.pkl" in message and "--loader" in message
    # With --loader the user takes responsibility: the model directory itself is imported.
    assert (
        import_sources.mlflow_model_directory(tmp_path, "models:/churn/3", "sentence-transformers")
        == tmp_path
    )


def test_a_directory_logged_with_log_artifacts_is_found_one_level_down(tmp_path: Path) -> None:
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "modules.json").write_text(json.dumps([]))
    (tmp_path / "notes.txt").write_text("n")
    assert import_sources.mlflow_model_directory(tmp_path, "runs:/r", None) == tmp_path / "encoder"


# ---- the Hugging Face cache ----------------------------------------------------------------------------


def test_a_repository_not_in_the_cache_is_one_line_and_never_downloaded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = run_import(capsys, "hf://modelyard-tests/never-downloaded@v2")
    assert code == EXIT_USAGE
    line = single_error_line(err)
    assert "modelyard-tests/never-downloaded@v2 is not in the Hugging Face cache at" in line
    assert "`hf download modelyard-tests/never-downloaded --revision v2`" in line


def test_a_malformed_repository_id_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_import(capsys, "hf://not a repo")
    assert code == EXIT_USAGE
    assert "is not hf://ORG/NAME[@REVISION]" in single_error_line(err)


def test_a_snapshot_link_out_of_the_cache_is_refused(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--o--n" / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "elsewhere.json").write_text("{}")
    (snapshot / "config.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(UsageError, match="links outside the cache"):
        import_sources._materialize_snapshot(snapshot, tmp_path / "out", "hf://o/n")


def test_a_snapshot_becomes_plain_files_with_the_same_hash(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "vocab.txt").write_text("a\nb\n")
    repo = tmp_path / "hub" / "models--o--n"
    snapshot = repo / "snapshots" / ("d" * 40)
    (repo / "blobs").mkdir(parents=True)
    for file in (model / "config.json", model / "sub" / "vocab.txt"):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, blob)
        link = snapshot / file.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    import_sources._materialize_snapshot(snapshot, tmp_path / "out", "hf://o/n")
    assert not any(p.is_symlink() for p in (tmp_path / "out").rglob("*"))
    assert checkpoint_hash(tmp_path / "out") == checkpoint_hash(model)


# ---- git -----------------------------------------------------------------------------------------------


@pytest.fixture
def work_tree(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "model").mkdir(parents=True)
    (repo / "model" / "config.json").write_text("{}")
    (repo / "train.py").write_text("print()\n")
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "init", "-q")
    return repo


def test_git_commit_is_head_and_dirty_only_for_changes_under_the_source(work_tree: Path) -> None:
    model = work_tree / "model"
    assert import_sources.git_commit(model) == ""  # a repository without commits
    git(work_tree, "add", ".")
    git(work_tree, "commit", "-q", "-m", "c")
    head = git(work_tree, "rev-parse", "HEAD")
    assert import_sources.git_commit(model) == head
    assert import_sources.git_commit(model / "config.json") == head

    (work_tree / "train.py").write_text("changed\n")  # outside SOURCE
    (model / "training.log").write_text("ignored\n")  # ignored by .gitignore
    assert import_sources.git_commit(model) == head
    (model / "extra.bin").write_bytes(b"untracked")
    assert import_sources.git_commit(model) == f"{head}-dirty"
    assert import_sources.git_commit(model / "config.json") == head  # a file SOURCE: only that file
    (model / "config.json").write_text('{"changed": true}')
    assert import_sources.git_commit(model / "config.json") == f"{head}-dirty"


def test_no_git_commit_for_a_path_the_work_tree_ignores(work_tree: Path) -> None:
    """A model in an ignored directory (a virtualenv's site-packages inside a project, a build or
    output directory) was not made by the tree's commit: nothing is recorded for it."""
    (work_tree / ".gitignore").write_text("*.log\n.venv/\n")
    installed = work_tree / ".venv" / "lib" / "site-packages" / "some_model"
    installed.mkdir(parents=True)
    (installed / "config.json").write_text("{}")
    git(work_tree, "add", ".")
    git(work_tree, "commit", "-q", "-m", "c")
    assert import_sources.git_commit(installed) == ""
    assert import_sources.git_commit(installed / "config.json") == ""
    assert import_sources.git_commit(work_tree / "model") == git(work_tree, "rev-parse", "HEAD")


def test_no_git_commit_outside_a_work_tree_or_withoutgit(
    tmp_path: Path, work_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "plain"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never find a repository above tmp
    assert import_sources.git_commit(outside) == ""
    git(work_tree, "add", ".")
    git(work_tree, "commit", "-q", "-m", "c")
    monkeypatch.setenv("PATH", str(tmp_path / "no-binaries-here"))
    assert import_sources.git_commit(work_tree / "model") == ""


def test_flags_win_over_the_recorded_lineage() -> None:
    recorded = rpb.Lineage(git_commit="from-run", training_run="1/abc", dataset="d@1")
    given = rpb.Lineage(git_commit="by-hand", parent_version="1.0.0")
    assert import_sources.fill_lineage(given, recorded) == rpb.Lineage(
        git_commit="by-hand", training_run="1/abc", dataset="d@1", parent_version="1.0.0"
    )


def test_a_mistyped_file_store_is_named_and_not_created(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "mlrnus"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", missing.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    code, err = run_import(capsys, "runs:/abc/model")
    assert code == EXIT_USAGE
    assert f"no MLflow store at {missing}" in single_error_line(err)
    assert not missing.exists()  # MLflow itself would have created an empty store there
