"""`python -m modelyard.console` and `modelyard console serve` are one command: same help, same
flags, same one-line refusals; every settings field has a flag or is documented as environment-only."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from support import single_error_line

from modelyard.cli.serve import build_settings, console_serve
from modelyard.console.settings import ConsoleSettings

ENV_ONLY = {
    "admin_tokens": "MODELYARD_ADMIN_TOKENS",
    "reader_tokens": "MODELYARD_READER_TOKENS",
    "session_secret": "MODELYARD_CONSOLE_SESSION_SECRET",
}


def python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
        check=False,
    )


def test_both_spellings_print_the_same_help() -> None:
    alone = python("-m", "modelyard.console", "--help")
    served = python("-m", "modelyard.cli.main", "console", "serve", "--help")
    assert alone.returncode == 0 and served.returncode == 0, alone.stderr + served.stderr
    assert alone.stdout.splitlines()[0] == "Usage: python -m modelyard.console [OPTIONS]"
    assert served.stdout.splitlines()[0] == "Usage: modelyard console serve [OPTIONS]"
    assert alone.stdout.splitlines()[1:] == served.stdout.splitlines()[1:]


def test_every_field_has_a_flag_or_is_environment_only() -> None:
    flags = {param.name for param in console_serve.params} - {"help", "as_json"}
    fields = set(ConsoleSettings.model_fields)
    assert flags <= fields, flags - fields
    assert fields - flags == set(ENV_ONLY), fields - flags
    with click.Context(console_serve, info_name="python -m modelyard.console") as ctx:
        text = " ".join(console_serve.get_help(ctx).split())
    for variable in ENV_ONLY.values():
        assert variable in text, variable


def test_flags_reach_their_fields_and_default_to_loopback() -> None:
    with console_serve.make_context("test", ["--port", "0", "--registry", "r:1", "--page-size", "7"]) as ctx:
        settings = build_settings(ConsoleSettings, ctx.params)
    assert (settings.host, settings.port, settings.registry, settings.page_size) == ("127.0.0.1", 0, "r:1", 7)
    assert ConsoleSettings().port == 8090 and ConsoleSettings().host == "127.0.0.1"


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["--port", "http"], "'--port'"), (["--page-size", "0"], "invalid settings: page_size")],
)
def test_a_bad_value_is_one_line_and_exit_2(args: list[str], expected: str) -> None:
    for argv in (["-m", "modelyard.console", *args], ["-m", "modelyard.cli.main", "console", "serve", *args]):
        done = python(*argv)
        assert done.returncode == 2, done.stderr
        assert expected in single_error_line(done.stderr)
