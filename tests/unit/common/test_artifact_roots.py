"""The artifact-roots rule shared by the registry and the workers: normalisation, what is refused
whatever the roots, and the roots themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.common.artifact_roots import (
    ArtifactLocationError,
    ArtifactRoots,
    default_artifact_roots,
    roots_with_store,
)

ROOTS = ArtifactRoots.parse("/srv/models, s3://Bucket/models")


def test_roots_are_normalised_url_prefixes() -> None:
    assert ROOTS.prefixes == ("file:///srv/models/", "s3://Bucket/models/")
    assert ArtifactRoots.parse("file:///a/b/,FILE:///a/b").prefixes == ("file:///a/b/",)
    assert ArtifactRoots.parse("/").prefixes == ("file:///",)


@pytest.mark.parametrize("bad", ["relative/dir", "file://host/dir", "/srv/../etc", "", " , "])
def test_bad_roots_are_refused_when_settings_load(bad: str) -> None:
    with pytest.raises(ArtifactLocationError):
        ArtifactRoots.parse(bad)


def test_a_plain_absolute_path_becomes_its_file_uri() -> None:
    assert ROOTS.check("/srv/models/minilm") == "file:///srv/models/minilm"
    assert ROOTS.check("file:///srv/models//minilm/./v1/") == "file:///srv/models/minilm/v1"
    assert ROOTS.check("s3://Bucket/models/minilm/1") == "s3://Bucket/models/minilm/1"


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("file:///etc/passwd", "outside the artifact roots"),
        ("/etc/passwd", "outside the artifact roots"),
        ("/srv/models-evil/x", "outside the artifact roots"),  # a prefix of the name is not the root
        ("/srv/models", "outside the artifact roots"),  # the root itself is no artifact
        ("/srv/models/../../etc/passwd", "`..`"),
        ("file:///srv/models/a/%2e%2e/%2E%2E/etc/passwd", "`..`"),
        ("file:///srv/models/%252e%252e/etc", "`..`"),  # encoded twice
        ("file:///srv/models/..%2fetc", "`..`"),  # an encoded slash
        ("/srv/models/a\\..\\..\\etc", "`..`"),
        ("models/minilm", "relative"),
        ("~/models/minilm", "relative"),
        ("file://srv/models/minilm", "three slashes"),
        ("gs://bucket/models/x", "scheme gs://"),
        ("s3://bucket/models/x", "outside the artifact roots"),  # another bucket (case matters in S3)
        ("simplecache::s3://Bucket/models/x", "chained"),
        ("/srv/models/x\x00", "control characters"),
        (" /srv/models/x", "spaces"),
    ],
)
def test_what_the_rule_refuses_and_why(uri: str, why: str) -> None:
    with pytest.raises(ArtifactLocationError, match="(?s)" + why.replace("\\", "\\\\")) as refused:
        ROOTS.check(uri)
    if "roots" in why or "scheme" in why:
        message = str(refused.value)
        assert "file:///srv/models/, s3://Bucket/models/" in message  # which roots are configured
        assert "MODELYARD_ARTIFACT_ROOTS" in message  # and how to add one


def test_symlinks_are_resolved_against_local_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "model").mkdir(parents=True)
    (root / "escape").symlink_to("/etc")
    roots = ArtifactRoots.parse(str(root))
    assert roots.outside_local_roots(str(root / "model")) is None
    assert roots.outside_local_roots(str(root / "escape" / "passwd")) == "/etc/passwd"


def test_default_roots_are_the_default_artifact_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MODELYARD_ARTIFACT_STORE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_artifact_roots() == f"file://{tmp_path}/.local/share/modelyard/artifacts/"
    monkeypatch.setenv("MODELYARD_ARTIFACT_STORE", "s3://bucket/store")
    assert default_artifact_roots() == "s3://bucket/store/"


def test_settings_read_the_shared_variable_and_refuse_bad_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from modelyard.inference.settings import WorkerSettings
    from modelyard.registry.settings import RegistrySettings

    monkeypatch.setenv("MODELYARD_ARTIFACT_ROOTS", "/srv/a,s3://b/")
    monkeypatch.setenv("ARTIFACT_ROOTS", "/never")  # never a bare, unprefixed name
    assert WorkerSettings().artifact_roots == RegistrySettings().artifact_roots == "/srv/a,s3://b/"
    monkeypatch.setenv("MODELYARD_ARTIFACT_ROOTS", "relative/dir")
    with pytest.raises(ValidationError, match="relative"):
        WorkerSettings()


def test_the_stack_adds_its_store_to_configured_roots(tmp_path: Path) -> None:
    assert roots_with_store("", str(tmp_path / "artifacts")) == f"file://{tmp_path}/artifacts/"
    assert roots_with_store("s3://b/", "s3://b/") == "s3://b/"
    assert roots_with_store("/srv/a", "s3://b/x") == "/srv/a,s3://b/x/"
