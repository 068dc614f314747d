"""Where `models import` reads a model from: a local path (and the git commit it sits at), an MLflow
model URI (`models:/`, `runs:/`), or a snapshot in the local Hugging Face cache (`hf://`).

Each source is located first (cheap: metadata, what lineage it recorded) and fetched afterwards (a
download into a temporary directory), so `models import` can refuse a taken version before any
slow work. What comes out is a local file or directory the existing import path runs on unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.api import registry_pb2 as rpb
from modelyard.cli.errors import EXIT_FAILED, EXIT_UNREACHABLE, CliError, UsageError
from modelyard.cli.importer import recognised_loader

MLFLOW_SCHEMES = ("models:/", "runs:/")
HF_SCHEME = "hf://"
FORMS = (
    "a local path, models:/NAME/VERSION, models:/NAME@ALIAS, models:/m-ID, runs:/RUN_ID/PATH "
    "or hf://ORG/NAME[@REVISION]"
)
# MLflow's run tag for the commit of the code that ran (set by `mlflow run` and by autologging).
GIT_COMMIT_TAG = "mlflow.source.git.commit"
DATASET_CONTEXT_TAG = "mlflow.data.context"
# MLflow retries an unreachable server for about four minutes by default (it waits out rate
# limits); an import a person is watching should fail in seconds. A user's own setting wins.
_MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    # Its tqdm bar would interleave with ours on stderr.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_CONNECTION_MARKERS = ("Max retries exceeded", "Failed to establish", "Connection refused", "timed out")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


@dataclass
class LocatedSource:
    """A source found where SOURCE says, with what it recorded, not yet fetched."""

    source: str
    # For the user: where the model comes from, e.g. `models:/reviews/3 (registered model ...)`.
    description: str
    # Yields the local file or directory to import; a temporary copy is removed on exit.
    fetch: Callable[[], AbstractContextManager[Path]]
    # What the source recorded; the import's own flags win over every field set here.
    lineage: rpb.Lineage = field(default_factory=rpb.Lineage)
    # Whether fetching is a download worth a spinner (a local path is not).
    remote: bool = False


def locate(source: str, *, loader: str | None = None) -> LocatedSource:
    """Parse SOURCE and find what it names; a UsageError (or CliError) says why not."""
    if source.startswith(MLFLOW_SCHEMES):
        return _locate_mlflow(source, loader)
    if source.startswith(HF_SCHEME):
        return _locate_hf_cache(source)
    if _SCHEME.match(source) and not Path(source).exists():
        raise UsageError(f"SOURCE {source!r} has a scheme models import does not read; give {FORMS}")
    return _locate_local(Path(source))


def fill_lineage(given: rpb.Lineage, recorded: rpb.Lineage) -> rpb.Lineage:
    """Flags given explicitly win; the source's record fills the rest."""
    merged = rpb.Lineage()
    merged.CopyFrom(recorded)
    for descriptor, value in given.ListFields():
        setattr(merged, descriptor.name, value)
    return merged


# ---- a local path ----------------------------------------------------------------------------------


def _locate_local(path: Path) -> LocatedSource:
    if not path.exists():
        raise UsageError(f"no model at {path}: the path does not exist")
    commit = git_commit(path)
    return LocatedSource(
        source=str(path),
        description=f"{path}" + (f" (git {commit})" if commit else ""),
        lineage=rpb.Lineage(git_commit=commit),
        fetch=lambda: contextlib.nullcontext(path),
    )


def git_commit(path: Path) -> str:
    """`git rev-parse HEAD` of the work tree `path` is in, with `-dirty` when `git status` shows
    changes (untracked files included, ignored ones not) under `path`; "" outside a work tree, for
    a path the work tree ignores, in a repository without commits, or without git."""
    directory, pathspec = (path, ".") if path.is_dir() else (path.parent, path.name)
    # A status probe must not take the index lock (another git command may be running there).
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(directory), *args],
                capture_output=True,
                text=True,
                timeout=15,
                env=env,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if not head:
        return ""
    if git("check-ignore", "-q", "--", pathspec) is not None:
        # Ignored by the work tree (a virtualenv's site-packages, a build or output directory):
        # the tree's commit did not make it, or says nothing about it; --git-commit can.
        return ""
    status = git("status", "--porcelain", "--", pathspec)
    return f"{head}-dirty" if status else head


# ---- MLflow ------------------------------------------------------------------------------------------


def _import_mlflow(source: str) -> Any:
    try:
        import mlflow
    except ImportError:
        raise UsageError(
            f"{source} is an MLflow model URI and MLflow is not installed: pip install 'modelyard[mlflow]'"
        ) from None
    return mlflow


@contextmanager
def _mlflow_env() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in _MLFLOW_ENV_DEFAULTS}
    for name, value in _MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, before in saved.items():
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before


def _mlflow_error(error: Exception, source: str, store: str) -> CliError:
    """One line for what MLflow raised, with the exit code of whose fault it was."""
    message = " ".join(str(error).split())
    if "API request to" in message and any(marker in message for marker in _CONNECTION_MARKERS):
        reason = "timed out" if "timed out" in message else "connection refused"
        return CliError(
            f"the MLflow tracking server at {store} is not reachable ({reason}); check MLFLOW_TRACKING_URI; "
            "nothing was imported",
            EXIT_UNREACHABLE,
        )
    if type(error).__name__ == "UnsupportedModelRegistryStoreURIException" or "unsupported URI" in message:
        hint = (
            "MLFLOW_TRACKING_URI is not set, so MLflow used its default store, "
            if "MLFLOW_TRACKING_URI" not in os.environ
            else ""
        )
        return UsageError(
            f"{source}: {hint}{store} is not a store mlflow-skinny reads (SQL stores need SQLAlchemy and "
            "alembic, or the full mlflow package); set MLFLOW_TRACKING_URI to your tracking server "
            "(http://...) or store"
        )
    code = getattr(error, "error_code", "")
    if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "BAD_REQUEST") or (
        "MLFLOW_ALLOW_FILE_STORE" in message
    ):
        return UsageError(f"{source}: {message}")
    return CliError(f"{source}: MLflow failed: {message[:300]}", EXIT_FAILED)


def _check_local_store(source: str, store: str) -> None:
    """MLflow creates a file store that is not there; an import of a mistyped path should say so."""
    parsed = urllib.parse.urlparse(store)
    if parsed.scheme not in ("", "file"):
        return
    path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme else store)
    if not path.is_dir():
        raise UsageError(
            f"{source}: no MLflow store at {path} (MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI is {store})"
        )


def _not_found(error: Exception) -> bool:
    return getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


@contextmanager
def _missing(message: str, *codes: str) -> Iterator[None]:
    """An MLflow lookup that says its object is not there (RESOURCE_DOES_NOT_EXIST, or one of
    `codes`) raises UsageError(`message`); any other MLflow error goes on."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        if _not_found(error) or getattr(error, "error_code", "") in codes:
            raise UsageError(message) from None
        raise


@dataclass
class _MlflowTarget:
    download_uri: str
    run_id: str
    description: str


def _locate_mlflow(source: str, loader: str | None) -> LocatedSource:
    mlflow = _import_mlflow(source)
    from mlflow.exceptions import MlflowException

    with _mlflow_env():
        store = mlflow.get_registry_uri() if source.startswith("models:/") else mlflow.get_tracking_uri()
        _check_local_store(source, store)
        try:
            client = mlflow.MlflowClient()
            if source.startswith("models:/"):
                target = _locate_registered(client, source, store)
            else:
                target = _locate_run_artifacts(client, source, store)
            lineage = _run_lineage(client, target.run_id, store) if target.run_id else rpb.Lineage()
        except MlflowException as error:
            raise _mlflow_error(error, source, store) from None
    described = target.description + (f", run {target.run_id}" if target.run_id else "")
    if lineage.git_commit:
        described += f", git {lineage.git_commit[:12]}"

    @contextmanager
    def fetch() -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="modelyard-mlflow-") as scratch, _mlflow_env():
            try:
                downloaded = Path(
                    mlflow.artifacts.download_artifacts(artifact_uri=target.download_uri, dst_path=scratch)
                )
            except MlflowException as error:
                raise _mlflow_error(error, source, store) from None
            yield mlflow_model_directory(downloaded, source, loader)

    return LocatedSource(
        source=source, description=f"{source} ({described})", lineage=lineage, fetch=fetch, remote=True
    )


def _locate_registered(client: Any, source: str, store: str) -> _MlflowTarget:
    """`models:/NAME/VERSION`, `models:/NAME@ALIAS`, or MLflow 3's logged model `models:/m-ID`."""
    from mlflow.exceptions import MlflowException

    rest = source.removeprefix("models:/").strip("/")
    name, at, alias = rest.rpartition("@")
    if not at:
        name, slash, number = rest.rpartition("/")
        if not slash:
            return _locate_logged_model(client, source, rest, store)
        if not number.isdigit():
            raise UsageError(
                f"{source}: the version must be a number (models:/NAME/3) or an alias (models:/NAME@champion)"
            )
    if not name:
        raise UsageError(f"{source} names no registered model; give {FORMS}")
    with _missing(f"{source}: no registered model {name!r} in the MLflow registry at {store}"):
        registered = client.get_registered_model(name)
    try:
        if at:
            found = client.get_model_version_by_alias(name, alias)
        else:
            found = client.get_model_version(name, number)
    except MlflowException as error:
        if not _not_found(error) and getattr(error, "error_code", "") != "INVALID_PARAMETER_VALUE":
            raise
        if at:
            aliases = sorted(dict(registered.aliases or {}))
            known = f"its aliases: {', '.join(aliases)}" if aliases else "it has no aliases"
            raise UsageError(
                f"{source}: registered model {name!r} has no alias {alias!r} ({known})"
            ) from None
        versions = _version_numbers(client, name)
        known = f"its versions: {', '.join(versions)}" if versions else "it has no versions"
        raise UsageError(f"{source}: registered model {name!r} has no version {number} ({known})") from None
    run_id = found.run_id or ""
    if not run_id and getattr(found, "model_id", None):
        run_id = _logged_model_run(client, found.model_id)
    return _MlflowTarget(
        download_uri=f"models:/{name}/{found.version}",
        run_id=run_id,
        description=f"registered model {name} version {found.version}",
    )


def _version_numbers(client: Any, name: str) -> list[str]:
    try:
        found = client.search_model_versions(f"name = '{name}'")
    except Exception:  # only for the message; the lookup itself already failed clearly
        return []
    return [str(v) for v in sorted(int(mv.version) for mv in found)]


def _logged_model_run(client: Any, model_id: str) -> str:
    with contextlib.suppress(Exception):
        return str(client.get_logged_model(model_id).source_run_id or "")
    return ""


def _locate_logged_model(client: Any, source: str, model_id: str, store: str) -> _MlflowTarget:
    if not model_id.startswith("m-"):
        raise UsageError(
            f"{source}: give a version (models:/{model_id}/3) or an alias (models:/{model_id}@champion)"
        )
    with _missing(f"{source}: no logged model {model_id} in the tracking store at {store}"):
        logged = client.get_logged_model(model_id)
    return _MlflowTarget(
        download_uri=source, run_id=str(logged.source_run_id or ""), description=f"logged model {model_id}"
    )


def _locate_run_artifacts(client: Any, source: str, store: str) -> _MlflowTarget:
    run_id, _, path = source.removeprefix("runs:/").strip("/").partition("/")
    if not run_id:
        raise UsageError(f"{source} names no run; give runs:/RUN_ID/PATH")
    with _missing(
        f"{source}: no MLflow run {run_id!r} in the tracking store at {store}", "INVALID_PARAMETER_VALUE"
    ):
        client.get_run(run_id)
    return _MlflowTarget(
        download_uri=source,
        run_id=run_id,
        description=f"artifacts {path or '(all)'} of the run",
    )


def _run_lineage(client: Any, run_id: str, store: str) -> rpb.Lineage:
    """training_run `EXPERIMENT_ID/RUN_ID`, the run's git commit tag, and its training datasets."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        if _not_found(error):  # a version whose run was deleted still imports, without lineage
            return rpb.Lineage(training_run=run_id)
        raise
    return rpb.Lineage(
        training_run=f"{run.info.experiment_id}/{run_id}",
        git_commit=str(run.data.tags.get(GIT_COMMIT_TAG, "")),
        dataset=_training_datasets(run),
    )


def _training_datasets(run: Any) -> str:
    """`NAME@DIGEST` of the datasets logged with context `train` (or with no context when none is
    marked train); evaluation datasets are no lineage."""
    inputs = getattr(getattr(run, "inputs", None), "dataset_inputs", None) or []
    by_context: dict[str, list[str]] = {}
    for item in inputs:
        context = next((t.value for t in item.tags if t.key == DATASET_CONTEXT_TAG), "")
        dataset = item.dataset
        by_context.setdefault(context, []).append(
            f"{dataset.name}@{dataset.digest}" if dataset.digest else dataset.name
        )
    return ", ".join(by_context.get("train") or by_context.get("") or [])


def mlflow_model_directory(root: Path, source: str, loader: str | None) -> Path:
    """The directory inside a downloaded MLflow artifact that a loader serves.

    An MLflow model directory (an `MLmodel` file) names its files by flavor: sentence_transformers
    keeps the model under the python_function flavor's data path, transformers under
    `model_binary` with tokenizer and processors in `components/`. A directory logged with
    `log_artifacts` is the model itself or holds it one level down. The first candidate the loader
    detection recognises wins; with --loader, the flavor's own directory (or the root).
    """
    if root.is_file():
        return root
    flavors = _mlmodel_flavors(root, source)
    candidates: list[Path] = []
    if "sentence_transformers" in flavors:
        data = str(flavors.get("python_function", {}).get("data") or "model.sentence_transformer")
        candidates.append(root / data)
    if "transformers" in flavors:
        binary = flavors["transformers"].get("model_binary")
        if not binary:
            name = flavors["transformers"].get("source_model_name", "?")
            revision = flavors["transformers"].get("source_model_revision")
            raise UsageError(
                f"{source} is a transformers model logged without its weights (save_pretrained=False): "
                f"it refers to the Hugging Face repository {name}; import hf://{name}"
                + (f"@{revision}" if revision else "")
                + " from the local Hugging Face cache instead"
            )
        candidates.append(_with_components(root, str(binary)))
    pyfunc_data = flavors.get("python_function", {}).get("data")
    if pyfunc_data:
        candidates.append(root / str(pyfunc_data))
    candidates.append(root)
    candidates.extend(sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    for candidate in candidates:
        if candidate.is_dir() and recognised_loader(candidate):
            return candidate
    if loader:
        return next((c for c in candidates if c.is_dir()), root)
    found = ", ".join(sorted(flavors)) if flavors else "no MLmodel file"
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
    raise UsageError(
        f"{source} holds no model directory Modelyard can serve (flavors: {found}; files: {shown or 'none'}); "
        "expected a sentence-transformers, open-clip or Hugging Face captioning directory, logged with "
        "the sentence_transformers or transformers flavor or with log_artifacts; or pass --loader"
    )


def _mlmodel_flavors(root: Path, source: str) -> dict[str, dict[str, Any]]:
    """The `flavors` of an MLmodel file (YAML). Read as YAML rather than with `mlflow.models.Model`,
    which needs pandas (not part of mlflow-skinny) to parse signatures we do not use."""
    mlmodel = root / "MLmodel"
    if not mlmodel.is_file():
        return {}
    import yaml

    try:
        document = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
        flavors = document.get("flavors") or {}
        return {str(name): dict(conf or {}) for name, conf in flavors.items()}
    except (yaml.YAMLError, AttributeError, TypeError, ValueError) as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise UsageError(f"{source}: its MLmodel file is not an MLflow model description: {first}") from None


def _with_components(root: Path, binary: str) -> Path:
    """transformers keeps the tokenizer and processors beside the weights, in `components/NAME/`;
    a loader wants them in one directory. The download is a scratch copy, so they join it there
    (never replacing a file of the model's own)."""
    model = root / binary
    components = root / "components"
    if model.is_dir() and components.is_dir():
        for file in sorted(components.rglob("*")):
            if not file.is_file():
                continue
            # components/tokenizer/vocab.txt -> model/vocab.txt
            target = model.joinpath(*file.relative_to(components).parts[1:])
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target)
    return model


# ---- the Hugging Face cache ---------------------------------------------------------------------------


def _locate_hf_cache(source: str) -> LocatedSource:
    repo_id, _, revision = source.removeprefix(HF_SCHEME).strip("/").partition("@")
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        raise UsageError(
            f"{source} is read from the Hugging Face cache and huggingface_hub is not installed: "
            "pip install 'modelyard[worker]'"
        ) from None
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UsageError(f"{source} is not hf://ORG/NAME[@REVISION]") from None
    wanted = f"{repo_id}@{revision}" if revision else repo_id
    try:
        snapshot = Path(
            snapshot_download(repo_id, revision=revision or None, repo_type="model", local_files_only=True)
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        raise UsageError(
            f"{HF_SCHEME}{wanted} is not in the Hugging Face cache at {constants.HF_HUB_CACHE} (HF_HUB_CACHE / HF_HOME); "
            f"models import never downloads: fetch it first (e.g. `hf download {repo_id}"
            + (f" --revision {revision}" if revision else "")
            + "`) or point HF_HUB_CACHE at the cache that holds it"
        ) from None
    commit = snapshot.name

    @contextmanager
    def fetch() -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="modelyard-hf-") as scratch:
            target = Path(scratch) / repo_id.replace("/", "--")
            _materialize_snapshot(snapshot, target, source)
            yield target

    return LocatedSource(
        source=source,
        description=f"{source} (Hugging Face cache, commit {commit})",
        lineage=rpb.Lineage(training_run=f"{HF_SCHEME}{repo_id}@{commit}"),
        fetch=fetch,
        remote=True,
    )


def _materialize_snapshot(snapshot: Path, target: Path, source: str) -> None:
    """A snapshot is symlinks into the repository's `blobs/`; an artifact holds no link out of itself,
    so the files are linked (or copied across filesystems) into a directory of their own. Only
    links that stay inside the repository's cache folder are followed."""
    repo_folder = snapshot.parent.parent.resolve()
    for directory, _, filenames in os.walk(snapshot):
        for name in filenames:
            path = Path(directory, name)
            real = path.resolve()
            relative = path.relative_to(snapshot)
            if not real.is_relative_to(repo_folder):
                raise UsageError(
                    f"{source}: {relative} in the cached snapshot links outside the cache ({real})"
                )
            if not real.is_file():
                raise UsageError(
                    f"{source}: {relative} is missing from the cached snapshot (an interrupted download); "
                    "download the repository again"
                )
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(real, destination)
            except OSError:
                shutil.copyfile(real, destination)
