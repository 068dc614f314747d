"""`modelyard`: the command line of Modelyard (entry point `modelyard.cli.main:main`)."""

from __future__ import annotations

import importlib
import logging

import click

from modelyard.cli.context import DEFAULT_BENCHMARK, DEFAULT_REGISTRY, CliContext
from modelyard.cli.entry import run_command

# A command that only imports service code (loaders, say) must not print its bare log event names
# through Python's last-resort handler: the CLI says what matters itself. The serve commands set
# up logging on the root logger, which these events still reach.
logging.getLogger("modelyard").addHandler(logging.NullHandler())


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
    from modelyard.cli.loaders import loaders
    from modelyard.cli.models import models
    from modelyard.cli.serve import benchmark_group, console_group, registry_group, worker_group
    from modelyard.cli.up import up

    for command in (
        up,
        models,
        loaders,
        deployments,
        bench,
        registry_group,
        worker_group,
        benchmark_group,
        console_group,
    ):
        cli.add_command(command)
    importlib.import_module("modelyard.cli.rollout")  # adds the rollout plan commands to `deployments`


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure is one line on stderr and a distinct exit code (see entry.py)."""
    run_command(cli, argv, prog_name="modelyard")


if __name__ == "__main__":
    main()
