"""deploy/docker: both images lint clean with hadolint, pin their bases and run as non-root."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from deploy_tools import DEPLOY

DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))


def lint(hadolint: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint, "--no-color", str(path)], capture_output=True, text=True, check=False, timeout=60
    )


def test_both_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.cuda"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(hadolint: str, path: Path) -> None:
    result = lint(hadolint, path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(hadolint: str, tmp_path: Path) -> None:
    # Guards the test above against a linter that accepts everything.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = lint(hadolint, bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest` tag


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_image_is_multi_stage_pinned_and_non_root(path: Path) -> None:
    text = path.read_text()
    bases = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", text, flags=re.M))
    assert bases, "base images are build arguments with pinned defaults"
    for image in bases.values():
        tag = image.rsplit(":", 1)[-1]
        assert ":" in image and tag != "latest" and re.search(r"\d+\.\d+", tag), image
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, flags=re.M)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    final_stage = text.rsplit("\nFROM ", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", final_stage, flags=re.M)
    assert users and not users[-1].startswith(("root", "0")), "the runtime stage must drop root"
    assert "-c constraints.txt" in text, "installs must follow the project's pins"


def _extras(extra: str, table: dict[str, list[str]], seen: frozenset[str] = frozenset()) -> set[str]:
    """The requirement names `extra` pulls in, following `modelyard[...]` self-references."""
    names: set[str] = set()
    for requirement in table[extra]:
        match = re.fullmatch(r"modelyard\[([\w,-]+)\]", requirement)
        if match:
            for inner in match.group(1).split(","):
                if inner not in seen:
                    names |= _extras(inner, table, seen | {extra})
        else:
            names.add(re.split(r"[\[<>=;\s]", requirement, maxsplit=1)[0].lower())
    return names


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_images_carry_the_object_store_filesystems(path: Path) -> None:
    """Workers in a cluster read artifacts from s3:// or gs:// (docs/operations.md): the extras
    each image installs include s3fs and gcsfs, and both are pinned."""
    import tomllib

    root = DEPLOY.parent
    table = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = re.findall(r'"\.\[([\w,-]+)\]"', path.read_text())
    assert installed, "the image installs the project with extras"
    names = set().union(*(_extras(e, table) for group in installed for e in group.split(",")))
    assert {"s3fs", "gcsfs", "torch", "asyncpg"} <= names, sorted(names)
    pins = (root / "constraints.txt").read_text()
    for name in ("s3fs", "gcsfs", "aiobotocore", "botocore", "google-cloud-storage"):
        assert re.search(rf"^{name}==\S+$", pins, flags=re.M | re.I), f"{name} is not pinned"
