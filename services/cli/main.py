"""`modelyard`: the command line of Modelyard (entry point `modelyard.cli.main:main`)."""

from __future__ import annotations

import os
import sys

import click

from modelyard.cli.context import DEFAULT_BENCHMARK, DEFAULT_REGISTRY, CliContext
from modelyard.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--registry",
    envvar="MODELYARD_REGISTRY_ADDRESS",
    default=DEFAULT_REGISTRY,
    show_default=True,
    help="Registry address HOST:PORT (env MODELYARD_REGISTRY_ADDRESS).",
)
@click.option(
    "--benchmark",
    envvar="MODELYARD_BENCHMARK_ADDRESS",
    default=DEFAULT_BENCHMARK,
    show_default=True,
    help="Benchmark service address HOST:PORT (env MODELYARD_BENCHMARK_ADDRESS).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("--token", envvar="MODELYARD_TOKEN", help="Bearer token (env MODELYARD_TOKEN).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Deadline of each call, seconds.",
)
@click.version_option(package_name="modelyard", prog_name="modelyard")
@click.pass_context
def cli(
    ctx: click.Context, registry: str, benchmark: str, as_json: bool, token: str | None, timeout: float
) -> None:
    """Modelyard: register, benchmark, promote and roll back model versions served over gRPC."""
    obj = ctx.ensure_object(CliContext)
    obj.registry, obj.benchmark, obj.json, obj.token, obj.timeout_s = (
        registry,
        benchmark,
        as_json or obj.json,
        token,
        timeout,
    )


def _register_commands() -> None:
    from modelyard.cli.bench import bench
    from modelyard.cli.deployments import deployments
    from modelyard.cli.models import models
    from modelyard.cli.serve import benchmark_group, registry_group, worker_group
    from modelyard.cli.up import up

    for command in (up, models, deployments, bench, registry_group, worker_group, benchmark_group):
        cli.add_command(command)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure is one line on stderr and a distinct exit code (see errors.py)."""
    try:
        code = cli.main(args=argv, prog_name="modelyard", standalone_mode=False)
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


if __name__ == "__main__":
    main()
