"""`make test` is complete on a fresh machine: it installs the tools tests/deploy drive, a missing
tool fails its tests instead of skipping them, and the installer says what to do when it cannot."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from deploy_tools import REPO, require_tool

SCRIPT = REPO / "deploy" / "tools" / "install-ci-tools.sh"


def test_a_missing_tool_fails_rather_than_skips() -> None:
    try:
        require_tool("modelyard-no-such-tool", "nothing")
    except pytest.skip.Exception:
        pytest.fail("a missing tool skips the tests that need it")
    except pytest.fail.Exception as failure:
        assert "make tools" in str(failure)
    else:
        pytest.fail("require_tool found a tool that does not exist")


def test_make_test_installs_the_deploy_tools_and_prints_skip_reasons() -> None:
    # -W: as if the script had changed, so the step shows even where the tools are installed.
    dry = subprocess.run(
        ["make", "-n", "-W", str(SCRIPT.relative_to(REPO)), "test"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    commands = dry.stdout.splitlines()
    install = next(i for i, c in enumerate(commands) if "deploy/tools/install-ci-tools.sh" in c)
    tests = next(i for i, c in enumerate(commands) if "pytest" in c)
    assert install < tests, dry.stdout
    assert " -rs" in commands[tests], "make test must print why a test skipped"


def test_installer_without_root_says_what_to_do() -> None:
    # A PATH without prometheus, promtool and sudo, and a user who is not root (pytest's tmp tree
    # is private to root, so the directory is made where that user can reach it).
    home = Path(tempfile.mkdtemp(prefix="modelyard-tools-"))
    home.chmod(0o755)
    bin_dir = home / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "id", "head", "tr", "apt-get"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or "/bin/false")
    as_user = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) runs the script as an unprivileged user"
        as_user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    result = subprocess.run(
        [*as_user, str(bin_dir / "bash"), str(SCRIPT)],
        env={"PATH": str(bin_dir), "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    shutil.rmtree(home)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "needs root" in result.stderr and "apt-get install prometheus" in result.stderr, result.stderr
