"""The Register page's rule for which directories the console reads: only under its import roots,
judged after symlinks and `..` are resolved; and the form's own checks, before anything slow runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from modelyard.common.artifact_roots import ArtifactRoots
from modelyard.console.import_roots import ImportRefused, ImportRoots
from modelyard.console.register import FIELDS, Choices, FormErrors, read_form
from modelyard.console.registration import ArtifactPlaces
from modelyard.console.settings import ConsoleSettings


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """roots/imports/model (a model dir), roots/imports-evil (a sibling sharing the prefix),
    outside/secret, and symlinks in the root: one to the model, one out to the secret."""
    imports = tmp_path / "imports"
    model = imports / "model"
    model.mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"w")
    evil = tmp_path / "imports-evil"
    evil.mkdir()
    secret = tmp_path / "outside" / "secret"
    secret.mkdir(parents=True)
    (imports / "to-model").symlink_to(model)
    (imports / "to-secret").symlink_to(secret)
    (imports / "file.txt").write_text("not a dir")
    return {"imports": imports, "model": model, "evil": evil, "secret": secret, "tmp": tmp_path}


def test_a_directory_under_a_root_resolves_to_its_real_path(tree: dict[str, Path]) -> None:
    roots = ImportRoots.parse(f"{tree['imports']}, /nonexistent-root")
    assert roots.paths == (str(tree["imports"]), "/nonexistent-root")
    assert roots.resolve(str(tree["model"])) == tree["model"].resolve()
    assert roots.resolve(str(tree["imports"] / "to-model")) == tree["model"].resolve()
    assert roots.resolve(f"{tree['imports']}/model/../model") == tree["model"].resolve()


@pytest.mark.parametrize(
    ("entered", "expected"),
    [
        ("{secret}", "lies outside the import roots"),
        ("{imports}/../outside/secret", "lies outside the import roots"),
        ("{imports}/to-secret", "(it leads to {secret})"),
        ("{evil}", "lies outside the import roots"),  # `/x/imports-evil` is not under `/x/imports`
        ("/etc", "lies outside the import roots"),
        ("imports/model", "is a relative path"),
        ("{imports}/missing", "does not exist"),
        ("{imports}/file.txt", "is not a directory"),
        ("{imports}/model\n", "control characters"),
        ("", "give the absolute path"),
    ],
)
def test_what_is_refused_and_why(tree: dict[str, Path], entered: str, expected: str) -> None:
    roots = ImportRoots.parse(str(tree["imports"]))
    names = {k: str(v) for k, v in tree.items()}
    with pytest.raises(ImportRefused) as refused:
        roots.resolve(entered.format(**names))
    assert expected.format(**names) in str(refused.value)


def test_outside_the_roots_is_said_before_whether_it_exists(tree: dict[str, Path]) -> None:
    roots = ImportRoots.parse(str(tree["imports"]))
    for probe in (tree["secret"], tree["tmp"] / "no-such-dir"):
        with pytest.raises(ImportRefused, match="outside the import roots"):
            roots.resolve(str(probe))


_RESOLVE = (
    "import sys\n"
    "from modelyard.console.import_roots import ImportRefused, ImportRoots\n"
    "try:\n"
    "    ImportRoots.parse(sys.argv[1]).resolve(sys.argv[2])\n"
    "except ImportRefused as refused:\n"
    "    print(refused)\n"
)


def test_an_unreadable_directory_is_refused(tree: dict[str, Path]) -> None:
    tree["model"].chmod(0)
    try:
        if os.geteuid() != 0:
            with pytest.raises(ImportRefused, match="not readable"):
                ImportRoots.parse(str(tree["imports"])).resolve(str(tree["model"]))
            return
        # Root reads every directory: check in a child that keeps uid 0 but loses the capabilities
        # that bypass file permissions (util-linux's setpriv), as a console run by root in a
        # hardened container would.
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root's permission bypass"
        done = subprocess.run(
            [setpriv, "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-c", _RESOLVE,
             str(tree["imports"]), str(tree["model"])],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert "not readable" in done.stdout, done.stdout + done.stderr
    finally:
        tree["model"].chmod(0o755)


def test_no_roots_means_directory_import_is_off(tree: dict[str, Path]) -> None:
    roots = ImportRoots.parse(" , ")
    assert not roots.enabled
    with pytest.raises(ImportRefused, match="MODELYARD_CONSOLE_IMPORT_ROOTS"):
        roots.resolve(str(tree["model"]))


def test_the_setting_refuses_a_relative_root_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_CONSOLE_IMPORT_ROOTS", "/srv/imports,models")
    with pytest.raises(pydantic.ValidationError, match="'models' is a relative path"):
        ConsoleSettings()
    monkeypatch.setenv("MODELYARD_CONSOLE_IMPORT_ROOTS", "/srv/imports")
    assert ImportRoots.parse(ConsoleSettings().import_roots).paths == ("/srv/imports",)


def _choices(tree: dict[str, Path]) -> Choices:
    store = tree["tmp"] / "store"
    (store / "abc").mkdir(parents=True)
    roots = ArtifactRoots.parse(f"file://{store}/")
    return Choices(
        ("sentence-transformers",), ImportRoots.parse(str(tree["imports"])), ArtifactPlaces(str(store), roots)
    )


def _form(**values: str) -> dict[str, str]:
    return {**dict.fromkeys(FIELDS, ""), **values}


def test_the_form_reports_every_wrong_field_at_once(tree: dict[str, Path]) -> None:
    with pytest.raises(FormErrors) as invalid:
        read_form(
            _form(
                version="1.0", parent_version="x", loader="pickle", tags="=oops", source=str(tree["secret"])
            ),
            _choices(tree),
        )
    errors = invalid.value.errors
    assert set(errors) == {"model_id", "version", "parent_version", "loader", "tags", "source"}
    assert "give the model id" in errors["model_id"]
    assert "invalid version '1.0'" in errors["version"]
    assert "unknown loader 'pickle'" in errors["loader"]
    assert "outside the import roots" in errors["source"]


def test_the_form_takes_one_source_and_checks_a_stored_one_against_the_artifact_roots(
    tree: dict[str, Path],
) -> None:
    choices = _choices(tree)
    base = {"model_id": "tiny", "version": "1.0.0"}
    with pytest.raises(FormErrors) as neither:
        read_form(_form(**base), choices)
    assert "give the model directory to import" in neither.value.errors["source"]
    with pytest.raises(FormErrors) as both:
        read_form(_form(**base, source=str(tree["model"]), artifact_uri="file:///x"), choices)
    assert "not both" in both.value.errors["artifact_uri"]
    with pytest.raises(FormErrors) as outside:
        read_form(_form(**base, artifact_uri=f"file://{tree['model']}"), choices)
    assert "outside the artifact roots" in outside.value.errors["artifact_uri"]
    with pytest.raises(FormErrors) as remote:
        read_form(_form(**base, artifact_uri="s3://bucket/model"), choices)
    assert "scheme s3://" in remote.value.errors["artifact_uri"]

    stored = tree["tmp"] / "store" / "abc"
    wanted = read_form(_form(**base, artifact_uri=str(stored), tags="team=search\n\ndemo"), choices)
    assert (wanted.stored_uri, wanted.path, wanted.where) == (f"file://{stored}", stored, "artifact_uri")
    assert wanted.tags == {"team": "search", "demo": ""}
    imported = read_form(
        _form(**base, source=str(tree["imports"] / "to-model"), model_type="captioning"), choices
    )
    assert (imported.path, imported.stored_uri, imported.where) == (tree["model"].resolve(), "", "source")
    assert imported.model_type != 0


def test_the_flag_reaches_the_setting(tmp_path: Path) -> None:
    from modelyard.cli.serve import build_settings, console_serve

    with console_serve.make_context("test", ["--import-roots", f"{tmp_path},/srv/models"]) as ctx:
        settings = build_settings(ConsoleSettings, ctx.params)
    assert ImportRoots.parse(settings.import_roots).paths == (str(tmp_path), "/srv/models")
