"""`modelyard registry|worker|benchmark|console serve`, which `python -m
modelyard.registry|inference|benchmark|console` also runs (one command per service, so both spellings take the same flags, help and validation).

Each flag maps to one field of the service's settings, named alike (`--poll-interval-s` is
`poll_interval_s`); unset flags fall back to the service's environment variables and defaults.
Secrets are environment-only (`ENV_ONLY`), so they never show in a process list. A server's output is
its log on stderr; `--json` makes that one JSON object per line (`--log-format json`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

import click
import pydantic

from modelyard.cli.errors import UsageError

if TYPE_CHECKING:
    from modelyard.benchmark.settings import BenchmarkSettings
    from modelyard.inference.settings import WorkerSettings

S = TypeVar("S", bound=pydantic.BaseModel)

# Settings fields with no flag on purpose: token lists are secrets.
ENV_ONLY = {
    "admin_tokens": "MODELYARD_ADMIN_TOKENS",
    "reader_tokens": "MODELYARD_READER_TOKENS",
    "worker_tokens": "MODELYARD_WORKER_TOKENS",
    "benchmark_tokens": "MODELYARD_BENCHMARK_TOKENS",
}
# The same as the `modelyard` group's, set on each serve command so that the command prints the same
# help whether it runs under `modelyard` or alone as `python -m modelyard.<service>`.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

_ENV_EPILOG = (
    "Every flag is also an environment variable named after its settings field, {prefix}<FIELD> "
    "(e.g. {prefix}{example}{lists}); a flag wins over its variable. Installation-wide, without the "
    "service prefix: "
    "MODELYARD_GRACE_PERIOD_S, MODELYARD_LOG_LEVEL, MODELYARD_LOG_FORMAT, MODELYARD_TLS_CERT_FILE, "
    "MODELYARD_TLS_KEY_FILE, MODELYARD_TLS_CLIENT_CA_FILE{more}. Environment only, on purpose (secrets "
    "stay out of process lists): the token lists " + ", ".join(ENV_ONLY.values()) + " (`name:token` or "
    "`name:sha256:HEX`, comma-separated; any of them turns auth on){client}."
)
_CLIENT_EPILOG = (
    ", and how this service reaches the registry: MODELYARD_TOKEN, MODELYARD_TLS, MODELYARD_TLS_CA_FILE, "
    "MODELYARD_TLS_SERVER_NAME, MODELYARD_TLS_CLIENT_CERT_FILE, MODELYARD_TLS_CLIENT_KEY_FILE"
)


def _epilog(prefix: str, example: str, *, lists: str = "", more: str = "", client: bool = False) -> str:
    return _ENV_EPILOG.format(
        prefix=prefix,
        example=example,
        lists=f"; a repeatable flag is a JSON list: {lists}" if lists else "",
        more=more,
        client=_CLIENT_EPILOG if client else "",
    )


def _overrides(values: dict[str, Any]) -> dict[str, Any]:
    overrides = {k: v for k, v in values.items() if v is not None and v != () and k != "as_json"}
    # Repeatable flags arrive as tuples; the settings fields are lists.
    return {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}


_SERVER_OPTIONS = [
    click.option("--host", default=None, help="Interface to bind."),
    click.option("--port", type=int, default=None, help="gRPC port; 0 = a free one."),
    click.option("--metrics-port", type=int, default=None, help="/metrics port; 0 = a free one."),
    click.option("--grace-period-s", type=float, default=None, help="Shutdown grace for in-flight RPCs."),
    click.option("--log-level", default=None, help="DEBUG, INFO, WARNING..."),
    click.option("--log-format", type=click.Choice(["text", "json"]), default=None),
    click.option("--tls-cert-file", default=None, help="PEM certificate; enables TLS."),
    click.option("--tls-key-file", default=None, help="PEM private key of --tls-cert-file."),
    click.option(
        "--tls-client-ca-file",
        default=None,
        help="PEM CA bundle; clients must present a certificate it signed (mutual TLS).",
    ),
    click.option(
        "--max-message-bytes", type=int, default=None, help="Largest gRPC message received or sent."
    ),
]


def _server_options(func: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_SERVER_OPTIONS):
        func = option(func)
    # A server has no result to print: `--json` (here or before the command) is its log format.
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Log one JSON object per line on stderr (--log-format json); a server prints nothing else.",
    )(func)


def _artifact_roots_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--artifact-roots",
        default=None,
        help="Comma-separated URL prefixes artifacts may come from (env MODELYARD_ARTIFACT_ROOTS, shared "
        "by the registry and workers); default: the artifact store of `modelyard models import`.",
    )(func)


def _json_logs(ctx: click.Context) -> bool:
    """`--json` on the serve command or on `modelyard` before it."""
    current: click.Context | None = ctx
    while current is not None:
        if current.params.get("as_json"):
            return True
        current = current.parent
    return False


def build_settings(cls: type[S], values: dict[str, Any]) -> S:
    """The service's settings from a serve command's flag values (`ctx.params`) and the environment;
    a bad value is one line, exit 2. Called inside the command's click context."""
    overrides = _overrides(values)
    if _json_logs(click.get_current_context()):
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


# ---- registry -----------------------------------------------------------------------------------


@click.group("registry")
def registry_group() -> None:
    """The registry service."""


@registry_group.command(
    "serve",
    context_settings=CONTEXT_SETTINGS,
    epilog=_epilog(
        "MODELYARD_REGISTRY_", "POLL_INTERVAL_S", more=", MODELYARD_ARTIFACT_ROOTS, MODELYARD_DATABASE_URL"
    ),
)
@_server_options
@click.option(
    "--database-url",
    default=None,
    help="PostgreSQL URL (env MODELYARD_DATABASE_URL, better when it holds a password); "
    "unset = embedded PostgreSQL in --data-dir.",
)
@click.option("--data-dir", default=None, help="Embedded PostgreSQL files.")
@click.option("--pool-max-size", type=int, default=None, help="Most database connections of this replica.")
@click.option("--poll-interval-s", type=float, default=None, help="Safety-net poll behind LISTEN/NOTIFY.")
@click.option(
    "--heartbeat-interval-ms", type=int, default=None, help="How often workers are asked to report."
)
@click.option("--heartbeat-ttl-s", type=float, default=None, help="A worker silent longer is not live.")
@click.option(
    "--lost-worker-window-s",
    type=float,
    default=None,
    help="How long a worker that went silent counts as lost (rollouts do not converge), then dropped.",
)
@click.option(
    "--rollout-poll-interval-s",
    type=float,
    default=None,
    help="How often a GetRolloutStatus wait re-reads heartbeats other replicas received.",
)
@click.option(
    "--live-window-s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="How far back GetLiveMetrics may look (each worker's counter snapshots are kept this long).",
)
@click.option(
    "--live-sample-interval-s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Spacing of the kept counter snapshots (a window's start is found to within this).",
)
@click.option(
    "--rollout-driver-interval-s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="How often the replica driving rollout plans judges their guards.",
)
@click.option(
    "--startup-timeout-s", type=float, default=None, help="How long to wait for the database at start."
)
@click.option(
    "--database-check-interval-s",
    type=float,
    default=None,
    help="How often the embedded PostgreSQL is checked (and restarted when it died).",
)
@_artifact_roots_option
def registry_serve(**values: Any) -> None:
    """Run one registry replica until SIGTERM/Ctrl-C."""
    from modelyard.common.log import configure_logging
    from modelyard.registry.server import RegistryServer
    from modelyard.registry.settings import RegistrySettings

    settings = build_settings(RegistrySettings, values)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(RegistryServer(settings).run())


# ---- inference worker ---------------------------------------------------------------------------


@click.group("worker")
def worker_group() -> None:
    """The inference worker."""


@worker_group.command(
    "serve",
    context_settings=CONTEXT_SETTINGS,
    epilog=_epilog(
        "MODELYARD_WORKER_",
        "CACHE_DIR",
        lists='MODELYARD_WORKER_DEPLOYMENTS=\'["a", "b"]\'',
        more=", MODELYARD_ARTIFACT_ROOTS",
        client=True,
    ),
)
@_server_options
@click.option(
    "--http-port",
    type=int,
    default=None,
    help="Also serve OIP v2 over HTTP/REST on this port (same TLS, tokens, limits); 0 = a free one.",
)
@click.option("--registry", "registry", default=None, help="Registry HOST:PORT; unset = static only.")
@click.option("--deployment", "deployments", multiple=True, help="Deployment to serve (repeatable).")
@click.option("--static-deployments", default=None, help="JSON list of Deployment messages, no registry.")
@click.option("--cache-dir", default=None, help="Artifact cache, one folder per checkpoint hash.")
@click.option("--cache-max-bytes", default=None, help="Most bytes the cache keeps, e.g. 20GiB; 0 = no limit.")
@click.option(
    "--cache-full-verify",
    is_flag=True,
    default=None,
    help="Re-hash each cached artifact the first time it is served (not only size/mtime/ctime).",
)
@click.option("--worker-id", default=None, help="Name reported to the registry.")
@click.option("--advertise-address", default=None, help="Address reported to the registry.")
@click.option("--instances", type=int, default=None, help="Forward passes at once per version; 0 = auto.")
@click.option("--decode-threads", type=int, default=None, help="Threads decoding inputs before batching.")
@click.option(
    "--preimport/--no-preimport",
    default=None,
    help="Import every model family's libraries at start and freeze them out of the GC (default: on).",
)
@click.option(
    "--heartbeat-interval-s", type=float, default=None, help="Heartbeat period until the registry sets one."
)
@click.option(
    "--drift-reference-items", type=int, default=None, help="Items behind a deployment's drift reference."
)
@click.option(
    "--drift-window-items", type=int, default=None, help="Recent items modelyard_drift_score scores."
)
@click.option(
    "--reconnect-initial-s", type=float, default=None, help="First wait before reconnecting to the registry."
)
@click.option("--reconnect-max-s", type=float, default=None, help="Longest wait between reconnections.")
@click.option(
    "--applied-state-file",
    default=None,
    help="Deployments last applied (relative to --cache-dir), served when the registry is unreachable "
    "at start; empty = none.",
)
@click.option(
    "--fallback-after-s",
    type=float,
    default=None,
    help="How long the first registry connection may take before the stored deployments are served.",
)
@click.option(
    "--retry-initial-s", type=float, default=None, help="Wait before retrying a transiently failed load."
)
@click.option("--retry-max-s", type=float, default=None, help="Longest wait between retries of a load.")
@click.option(
    "--text-bytes-per-token",
    type=int,
    default=None,
    help="A text element may hold max sequence length x this many bytes.",
)
@click.option("--max-image-pixels", type=int, default=None, help="Largest image decoded (width x height).")
@click.option("--max-image-bytes", type=int, default=None, help="Largest encoded image accepted.")
@click.option("--max-request-pixels", type=int, default=None, help="Pixels decoded for one request.")
@click.option(
    "--max-items-in-flight",
    type=int,
    default=None,
    help="Items admitted and not yet answered; beyond it RESOURCE_EXHAUSTED. 0 = auto.",
)
@_artifact_roots_option
@click.option(
    "--allow-remote-code",
    is_flag=True,
    default=None,
    help="Let versions that ask for trust_remote_code run code from their artifact (default: refused).",
)
def worker_serve(**values: Any) -> None:
    """Run one inference worker until SIGTERM/Ctrl-C."""
    from modelyard.common.log import configure_logging
    from modelyard.inference.process_env import apply_defaults
    from modelyard.inference.settings import WorkerSettings

    apply_defaults()  # before anything imports torch
    settings = build_settings(WorkerSettings, values)
    if settings.static_deployments:
        _check_static_deployments(settings.static_deployments)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(_run_worker(settings))


async def _run_worker(settings: WorkerSettings) -> None:
    from modelyard.common.server import wait_for_shutdown_signal
    from modelyard.inference.worker import InferenceWorker

    worker = InferenceWorker(settings)
    await worker.start()
    try:
        await wait_for_shutdown_signal()
    finally:
        await worker.stop()


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


# ---- benchmark service --------------------------------------------------------------------------


@click.group("benchmark")
def benchmark_group() -> None:
    """The benchmark service."""


@benchmark_group.command(
    "serve",
    context_settings=CONTEXT_SETTINGS,
    epilog=_epilog(
        "MODELYARD_BENCHMARK_",
        "STAGE_TIMEOUT_S",
        lists="MODELYARD_BENCHMARK_DATASET_DIRS='[\"/data/beir\"]'",
        client=True,
    ),
)
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
    from modelyard.benchmark.settings import BenchmarkSettings
    from modelyard.common.log import configure_logging

    settings = build_settings(BenchmarkSettings, values)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(_run_benchmark(settings))


async def _run_benchmark(settings: BenchmarkSettings) -> None:
    from modelyard.benchmark.server import BenchmarkServer
    from modelyard.common.server import freeze_startup_objects, wait_for_shutdown_signal

    server = BenchmarkServer(settings)
    await server.start()
    freeze_startup_objects()
    try:
        await wait_for_shutdown_signal()
    finally:
        await server.stop()


# ---- web console --------------------------------------------------------------------------------


@click.group("console")
def console_group() -> None:
    """The web console."""


@console_group.command(
    "serve",
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        "Every flag is also an environment variable named after its settings field, MODELYARD_CONSOLE_<FIELD> "
        "(e.g. MODELYARD_CONSOLE_PORT); a flag wins over its variable. Installation-wide, without the service "
        "prefix: MODELYARD_GRACE_PERIOD_S, MODELYARD_LOG_LEVEL, MODELYARD_LOG_FORMAT, MODELYARD_TLS_CERT_FILE, "
        "MODELYARD_TLS_KEY_FILE (HTTPS). Environment only, on purpose (secrets stay out of process lists): "
        "MODELYARD_CONSOLE_SESSION_SECRET (signs and encrypts session cookies; empty = a random key per "
        "process) and the token lists MODELYARD_ADMIN_TOKENS, MODELYARD_READER_TOKENS (`name:token` or "
        "`name:sha256:HEX`; any of them makes the console ask for a token, which it forwards on every call, "
        "holding none of its own). How it reaches the registry and the benchmark service: MODELYARD_TLS, "
        "MODELYARD_TLS_CA_FILE, MODELYARD_TLS_SERVER_NAME, MODELYARD_TLS_CLIENT_CERT_FILE, "
        "MODELYARD_TLS_CLIENT_KEY_FILE."
    ),
)
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="HTTP port (default 8090); 0 = a free one.")
@click.option("--registry", "registry", default=None, help="Registry HOST:PORT.")
@click.option("--benchmark", "benchmark", default=None, help="Benchmark service HOST:PORT.")
@click.option("--call-timeout-s", type=float, default=None, help="Deadline of each call to a service.")
@click.option(
    "--live-interval-s", type=float, default=None, help="How often live pages re-read worker state."
)
@click.option("--page-size", type=int, default=None, help="Versions or audit events on one page.")
@click.option(
    "--import-roots",
    default=None,
    help="Directories (comma-separated absolute paths) admins may import models from; default: none.",
)
@click.option("--session-max-age-s", type=int, default=None, help="How long a login lasts.")
@click.option("--grace-period-s", type=float, default=None, help="Shutdown grace for open requests.")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING...")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None)
@click.option("--tls-cert-file", default=None, help="PEM certificate; serves HTTPS.")
@click.option("--tls-key-file", default=None, help="PEM private key of --tls-cert-file.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Log one JSON object per line on stderr (--log-format json); a server prints nothing else.",
)
def console_serve(**values: Any) -> None:
    """Run the web console until SIGTERM/Ctrl-C."""
    from modelyard.common.log import configure_logging
    from modelyard.console.server import ConsoleServer
    from modelyard.console.settings import ConsoleSettings

    settings = build_settings(ConsoleSettings, values)
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(ConsoleServer(settings).run())
    except ValueError as error:
        raise UsageError(str(error)) from None
    except OSError as error:
        from modelyard.cli.errors import CliError

        raise CliError(str(error)) from None
