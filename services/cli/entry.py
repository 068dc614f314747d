"""How a click command runs as a program (`modelyard`, `python -m modelyard.<service>`): every failure
is one line on stderr and a distinct exit code (see errors.py)."""

from __future__ import annotations

import os
import sys

import click

from modelyard.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError


def run_command(command: click.Command, argv: list[str] | None, *, prog_name: str) -> None:
    """Run `command` on `argv` (default: sys.argv[1:]) and exit with its code; never returns."""
    try:
        code = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except CliError as error:
        click.echo(f"error: {error.message}", err=True)
        sys.exit(error.exit_code)
    except click.UsageError as error:
        hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
        click.echo(f"error: {' '.join(error.format_message().split())}{hint}", err=True)
        sys.exit(EXIT_USAGE)
    except click.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(EXIT_FAILED)
    except click.ClickException as error:
        click.echo(f"error: {' '.join(error.format_message().split())}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(EXIT_FAILED)
    except Exception as error:
        # The promise is one line and no traceback, bugs included; MODELYARD_DEBUG=1 shows it.
        if os.environ.get("MODELYARD_DEBUG"):
            raise
        detail = " ".join(str(error).split()) or "no details"
        click.echo(
            f"error: unexpected {type(error).__name__}: {detail} (set MODELYARD_DEBUG=1 for the traceback)",
            err=True,
        )
        sys.exit(EXIT_FAILED)
    # `--help`, `--version` and commands that call ctx.exit() come back as an int.
    sys.exit(code if isinstance(code, int) else 0)
