"""Where deploy/ is, and finding the external tools its tests drive (kubectl, hadolint, promtool,
prometheus)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTALL_HINT = "`make test` installs it (or run `make tools`, i.e. deploy/tools/install-ci-tools.sh)"


def find_tool(name: str) -> str | None:
    """The tool from the project's virtual environment first, then from PATH."""
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.is_file() and os.access(venv_bin, os.X_OK):
        return str(venv_bin)
    return shutil.which(name)


def require_tool(name: str, why: str) -> str:
    """Path of `name`; a missing tool fails the test (never skips it): `make test` installs every
    tool these tests need, so a missing one means the set-up is incomplete, not the test optional."""
    path = find_tool(name)
    if path is None:
        pytest.fail(f"{name} is not installed ({why}); {INSTALL_HINT}")
    return path
