"""`modelyard registry|worker|benchmark serve`: each flag maps to one field of the service's settings
(unset flags fall back to the service's environment variables and defaults)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import click


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


def _server_options(func: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_SERVER_OPTIONS):
        func = option(func)
    return func


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

    settings = RegistrySettings(**_overrides(values))
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
def worker_serve(**values: Any) -> None:
    """Run one inference worker until SIGTERM/Ctrl-C."""
    from modelyard.common.log import configure_logging
    from modelyard.inference.__main__ import serve
    from modelyard.inference.settings import WorkerSettings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    overrides = _overrides(values)
    if "deployments" in overrides:
        overrides["deployments"] = list(overrides["deployments"])
    settings = WorkerSettings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


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
def benchmark_serve(**values: Any) -> None:
    """Run the benchmark service until SIGTERM/Ctrl-C."""
    from modelyard.benchmark.__main__ import serve
    from modelyard.benchmark.settings import BenchmarkSettings
    from modelyard.common.log import configure_logging

    settings = BenchmarkSettings(**_overrides(values))
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
