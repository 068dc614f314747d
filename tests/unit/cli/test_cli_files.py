"""Files given to the CLI and its `--json` promise, as a user meets them: `modelyard` in a
subprocess, one `error:` line and exit 2 for a bad file (checked before anything is contacted),
never a traceback; and every command accepts `--json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from support import free_port, single_error_line

from modelyard.cli.errors import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE
from modelyard.cli.main import cli


def modelyard(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    # Nothing listens at these addresses: exit 2 proves a mistake was caught before any call.
    unreachable = {
        "MODELYARD_REGISTRY_ADDRESS": f"127.0.0.1:{free_port()}",
        "MODELYARD_BENCHMARK_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, **unreachable, **(env or {})},
        timeout=120,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )


def _usage_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    line = single_error_line(result.stderr)
    assert result.returncode == EXIT_USAGE, result.stderr
    for word in words:
        assert word in line, line


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "invalid-utf8": tmp_path / "latin1.json",
        "not-json": tmp_path / "notes.json",
        "deeply-nested": tmp_path / "deep.json",
        "empty": tmp_path / "empty.json",
    }
    files["invalid-utf8"].write_bytes(b'{"format": "caf\xe9"}')
    files["not-json"].write_text("format: modelyard-registry/1\n")
    files["deeply-nested"].write_text("[" * 100_000 + "]" * 100_000)
    files["empty"].write_text("")
    return files


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("invalid-utf8", ("is not UTF-8 text (byte 15 is 0xe9)",)),
        ("not-json", ("is not valid JSON",)),
        ("deeply-nested", ("nests too deeply",)),
        ("empty", ("is not valid JSON",)),
    ],
)
def test_import_registry_of_a_bad_file_is_one_line_exit_2(
    bad_files: dict[str, Path], kind: str, words: tuple[str, ...]
) -> None:
    _usage_error(modelyard("models", "import-registry", str(bad_files[kind])), "registry export", *words)


def test_import_registry_of_a_missing_file_or_a_directory(tmp_path: Path) -> None:
    _usage_error(modelyard("models", "import-registry", str(tmp_path / "nope.json")), "does not exist")
    _usage_error(modelyard("models", "import-registry", str(tmp_path)), "is a directory")


def test_import_registry_from_stdin_is_checked_too() -> None:
    _usage_error(modelyard("models", "import-registry", "-", stdin=b"\xff\xfe{}"), "standard input", "UTF-8")


def test_a_valid_file_gets_as_far_as_the_registry(tmp_path: Path) -> None:
    document = tmp_path / "export.json"
    document.write_text(json.dumps({"format": "modelyard-registry/1"}))
    result = modelyard("models", "import-registry", str(document))
    assert result.returncode == EXIT_UNREACHABLE and "not reachable" in single_error_line(result.stderr)


def test_export_into_a_missing_directory_fails_before_calling(tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "export.json"
    _usage_error(modelyard("models", "export", str(target)), "cannot write export file", "does not exist")
    _usage_error(
        modelyard("bench", "export", "run-1", "-o", str(target)), "cannot write export file", "does not exist"
    )
    _usage_error(modelyard("models", "export", str(tmp_path)), "is a directory")


def test_static_deployments_file_is_checked_before_the_worker_starts(bad_files: dict[str, Path]) -> None:
    _usage_error(
        modelyard("worker", "serve", "--port", "0", "--static-deployments", str(bad_files["invalid-utf8"])),
        "--static-deployments file",
        "UTF-8",
    )
    _usage_error(
        modelyard("worker", "serve", "--port", "0", "--static-deployments", "/no/such/file.json"),
        "cannot read --static-deployments file /no/such/file.json",
    )


def test_invalid_setting_from_the_environment_is_one_line() -> None:
    _usage_error(
        modelyard("registry", "serve", env={"MODELYARD_REGISTRY_PORT": "fifty"}),
        "invalid settings: port",
        "'fifty'",
    )


def _leaf_commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _leaf_commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


def test_every_command_takes_json_after_its_name() -> None:
    """The README says every command takes `--json`; a command without it would refuse the flag."""
    commands = _leaf_commands(cli)
    assert len(commands) > 20
    missing = [
        " ".join(path)
        for path, command in commands
        if "--json" not in {o for p in command.params for o in p.opts}
    ]
    assert missing == []
    runner = CliRunner()
    for path in (("up",), ("models", "export"), ("bench", "export"), ("registry", "serve")):
        result = runner.invoke(cli, [*path, "--json", "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "--json" in result.output


def test_bench_export_json_and_another_format_contradict() -> None:
    _usage_error(modelyard("bench", "export", "run-1", "--json", "--format", "csv"), "--json", "--format csv")
    # --json alone is --format json: the command line is fine and gets as far as the service.
    result = modelyard("bench", "export", "run-1", "--json")
    assert result.returncode == EXIT_UNREACHABLE, result.stderr


def test_an_unexpected_failure_is_one_line_too(tmp_path: Path) -> None:
    # A corrupt state file of a previous `up`: no handler of its own, caught by the last resort.
    (tmp_path / "stack.json").write_text("{not json")
    result = modelyard("up", "--data-dir", str(tmp_path), "--registry-port", "0", "--benchmark-port", "0")
    line = single_error_line(result.stderr)
    assert result.returncode == EXIT_FAILED, result.stderr
    assert "unexpected JSONDecodeError" in line and "MODELYARD_DEBUG=1" in line
