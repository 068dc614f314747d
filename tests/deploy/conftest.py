"""Fixtures for the external tools the deploy/ tests drive; a missing tool fails the test."""

from __future__ import annotations

import subprocess

import pytest
from deploy_tools import INSTALL_HINT, require_tool


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = require_tool("kubectl", "renders the kustomize overlays")
    probe = subprocess.run([path, "kustomize", "--help"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.fail(f"{path} has no `kustomize` subcommand; {INSTALL_HINT}")
    return path


@pytest.fixture(scope="session")
def hadolint() -> str:
    return require_tool("hadolint", "lints the Dockerfiles")


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool", "checks Prometheus configuration, rules and PromQL")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return require_tool("prometheus", "a real server that scrapes and answers queries")
