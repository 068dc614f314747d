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
