"""`modelyard registry|worker|benchmark serve`: each flag maps to one field of the service's settings
(unset flags fall back to the service's environment variables and defaults). A server's output is
its log on stderr; `--json` makes that one JSON object per line (`--log-format json`)."""

from __future__ import annotations

import asyncio
import os
from typing import Any, TypeVar

import click
import pydantic

from modelyard.cli.context import get_context
from modelyard.cli.errors import UsageError

S = TypeVar("S", bound=pydantic.BaseModel)


def _overrides(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and v != ()}


_SERVER_OPTIONS = [
    click.option("--host", default=None, help="Interface to bind (settings: host)."),
    click.option("--port", type=int, default=None, help="gRPC port; 0 = a free one (settings: port)."),
    click.option("--metrics-port", type=int, default=None, help="/metrics port; 0 = a free one."),
    click.option("--grace-period-s", type=float, default=None, help="Shutdown grace for in-flight RPCs."),
    click.option("--log-level", default=None, help="DEBUG, INFO, WARNING..."),
    click.option("--log-format", type=click.Choice(["text", "json"]), default=None),
]


def _set_json(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        get_context().json = True


def _server_options(func: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_SERVER_OPTIONS):
        func = option(func)
    # A server has no result to print: `--json` (here or before the command) is its log format.
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_json,
        help="Log one JSON object per line on stderr (--log-format json); a server prints nothing else.",
    )(func)


def _settings(cls: type[S], overrides: dict[str, Any]) -> S:
    """The service's settings from flags and environment; a bad value is one line, exit 2."""
    if get_context().json:
        overrides.setdefault("log_format", "json")
    try:
        return cls(**overrides)
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']} (got {e.get('input')!r})"
            for e in error.errors()
        )
        raise UsageError(
            f"invalid settings: {problems} (flags, or MODELYARD_* environment variables)"
        ) from None


@click.group("registry")
def registry_group() -> None:
    """The registry service."""


@registry_group.command("serve")
@_server_options
@click.option(
    "--database-url", default=None, help="PostgreSQL URL; unset = embedded PostgreSQL in --data-dir."
)
@click.option("--data-dir", default=None, help="Embedded PostgreSQL files.")
@click.option("--poll-interval-s", type=float, default=None, help="Safety-net poll behind LISTEN/NOTIFY.")
@click.option("--heartbeat-ttl-s", type=float, default=None, help="A worker silent longer is not live.")
def registry_serve(**values: Any) -> None:
    """Run one registry replica until SIGTERM/Ctrl-C."""
    from modelyard.common.log import configure_logging
    from modelyard.registry.server import RegistryServer
    from modelyard.registry.settings import RegistrySettings

    settings = _settings(RegistrySettings, _overrides(values))
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(RegistryServer(settings).run())


@click.group("worker")
def worker_group() -> None:
    """The inference worker."""


@worker_group.command("serve")
@_server_options
@click.option("--registry", "registry", default=None, help="Registry HOST:PORT (settings: registry).")
@click.option("--deployment", "deployments", multiple=True, help="Deployment to serve (repeatable).")
@click.option("--static-deployments", default=None, help="JSON list of Deployment messages, no registry.")
@click.option("--cache-dir", default=None, help="Artifact cache, one folder per checkpoint hash.")
@click.option("--worker-id", default=None, help="Name reported to the registry.")
@click.option("--advertise-address", default=None, help="Address reported to the registry.")
@click.option("--instances", type=int, default=None, help="Forward passes at once per version; 0 = auto.")
@click.option("--decode-threads", type=int, default=None)
@click.option(
    "--allow-remote-code",
    is_flag=True,
    default=None,
    help="Let versions that ask for trust_remote_code run code from their artifact (default: refused).",
)
def worker_serve(**values: Any) -> None:
    """Run one inference worker until SIGTERM/Ctrl-C."""
    from modelyard.common.log import configure_logging
    from modelyard.inference.__main__ import serve
    from modelyard.inference.settings import WorkerSettings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    overrides = _overrides(values)
    if "deployments" in overrides:
        overrides["deployments"] = list(overrides["deployments"])
    settings = _settings(WorkerSettings, overrides)
    if settings.static_deployments:
        _check_static_deployments(settings.static_deployments)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


def _check_static_deployments(path: str) -> None:
    """Read the file as the worker will, so a bad one is a usage error before the server starts."""
    from google.protobuf import json_format

    from modelyard.cli import files
    from modelyard.inference.worker import load_static_deployments

    _, documents = files.read_json(path, "--static-deployments file")
    if not isinstance(documents, list):
        raise UsageError(f"--static-deployments file {path} must hold a JSON list of Deployment messages")
    try:
        load_static_deployments(path)
    except (json_format.ParseError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise UsageError(f"--static-deployments file {path}: {error}") from None


@click.group("benchmark")
def benchmark_group() -> None:
    """The benchmark service."""


@benchmark_group.command("serve")
@_server_options
@click.option("--registry", "registry", default=None, help="Registry HOST:PORT; unset = runs kept in memory.")
@click.option("--worker-timeout-s", type=float, default=None, help="Deadline of each call to a worker.")
@click.option("--registry-timeout-s", type=float, default=None, help="Deadline of each call to the registry.")
@click.option(
    "--stage-timeout-s", type=float, default=None, help="Longest wait for a staged version to load."
)
@click.option(
    "--dataset-dir", "dataset_dirs", multiple=True, help="Directory beir: suites may read (repeatable)."
)
def benchmark_serve(**values: Any) -> None:
    """Run the benchmark service until SIGTERM/Ctrl-C."""
    from modelyard.benchmark.__main__ import serve
    from modelyard.benchmark.settings import BenchmarkSettings
    from modelyard.common.log import configure_logging

    overrides = _overrides(values)
    if "dataset_dirs" in overrides:
        overrides["dataset_dirs"] = list(overrides["dataset_dirs"])
    settings = _settings(BenchmarkSettings, overrides)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
