"""`modelyard up`: the whole stack on one machine, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from modelyard.api import registry_pb2 as rpb
from modelyard.cli import importer
from modelyard.cli.context import CliContext, get_context
from modelyard.cli.deployments import rollout_text, wait_for_rollout
from modelyard.cli.errors import EXIT_FAILED, CliError, UsageError
from modelyard.cli.output import json_option, routes_text, table
from modelyard.cli.progress import spinner
from modelyard.cli.stack import SEEDS, TINY_LABEL, TINY_TAGS, TINY_TEXT_SEED, Seed, Stack, StackLayout
from modelyard.cli.stack_security import prepare_security
from modelyard.common.artifact_roots import ARTIFACT_ROOTS_ENV, roots_with_store
from modelyard.common.errors import NotFound

if TYPE_CHECKING:
    from modelyard.client import RegistryClient


class StopRequested(BaseException):
    """SIGTERM/SIGINT arrived; unwinds whatever `up` is doing into the clean shutdown."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise StopRequested(signal.Signals(signum).name)


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "modelyard"


async def _deployment_exists(registry: RegistryClient, name: str, timeout_s: float) -> bool:
    try:
        await registry.get_deployment(rpb.GetDeploymentRequest(name=name), timeout=timeout_s)
        return True
    except NotFound:
        return False


def seed(ctx: CliContext, item: Seed, layout: StackLayout, store_url: str) -> str:
    """Register the seed's version and deployment where absent; returns what was done."""
    t = ctx.timeout_s
    if ctx.registry_call(lambda registry: _deployment_exists(registry, item.deployment, t)):
        return "exists"
    found = ctx.registry_call(
        lambda registry: importer.existing_version(registry, item.model_id, item.version, t)
    )
    if found is None:
        from modelyard.inference.artifacts import checkpoint_hash

        source = item.build(layout.tiny_dir / item.model_id)
        checkpoint = checkpoint_hash(source)
        config = rpb.InferenceConfig(max_batch_size=item.max_batch_size, max_delay_ms=2, device="auto")
        signature = importer.read_signature(source, item.loader, config)
        uri = importer.ArtifactStore(store_url).put(source, checkpoint)
        draft = importer.VersionDraft(
            model_id=item.model_id,
            version=item.version,
            loader=item.loader,
            config=config,
            description=item.description,
            tags=dict(TINY_TAGS) if item.tiny else {},
            model_description=item.description if item.tiny else "all-MiniLM-L6-v2 sentence embeddings",
            model_tags=dict(TINY_TAGS) if item.tiny else {},
        )
        ctx.registry_call(
            lambda registry: importer.register(
                registry, draft, source_uri=uri, checkpoint=checkpoint, signature=signature, timeout_s=t
            )
        )

    async def route(registry: RegistryClient) -> None:
        aliases = await registry.list_aliases(rpb.ListAliasesRequest(model_id=item.model_id), timeout=t)
        if not any(a.alias == "production" for a in aliases.aliases):
            await registry.set_alias(
                rpb.SetAliasRequest(
                    model_id=item.model_id,
                    alias="production",
                    version=item.version,
                    reason="initial version (modelyard up)",
                ),
                timeout=t,
            )
        await registry.create_deployment(
            rpb.CreateDeploymentRequest(
                name=item.deployment,
                model_id=item.model_id,
                follow_alias="production",
                description=f"{TINY_LABEL} (random weights)" if item.tiny else item.description,
                reason="initial deployment (modelyard up)",
            ),
            timeout=t,
        )

    ctx.registry_call(route)
    return "seeded"


def _print_endpoints(ctx: CliContext, stack: Stack) -> None:
    async def read(registry: RegistryClient) -> dict[str, rpb.Deployment]:
        listed = await registry.list_deployments(rpb.ListDeploymentsRequest())
        return {d.name: d for d in listed.deployments}

    deployments = ctx.registry_call(read)
    state = stack.describe()
    rows = [
        (
            "registry",
            state["registry"]["address"],
            state["registry"]["metrics_url"],
            "",
            f"embedded PostgreSQL in {stack.layout.registry_dir}",
        )
    ]
    for worker in state["workers"]:
        d = deployments.get(worker["deployment"])
        serves = (
            f"{worker['deployment']}: {d.model_id} {routes_text(d.routes)}" if d else worker["deployment"]
        )
        if d and TINY_LABEL in d.description:
            serves += f" ({TINY_LABEL})"
        rows.append(
            (worker["name"], worker["address"], worker["metrics_url"], worker.get("http_url", ""), serves)
        )
    rows.append(
        (
            "benchmark",
            state["benchmark"]["address"],
            state["benchmark"]["metrics_url"],
            "",
            "suites: stdlib-docstrings, digits, digits-captions, load",
        )
    )
    if state.get("console"):
        rows.append(
            (
                "console",
                state["console"]["url"],
                "",
                "",
                "web console: overview, catalog, switch, compare, benchmark, register",
            )
        )
    table(ctx, ["service", "gRPC address", "/metrics", "OIP over HTTP", "serves"], rows)


@click.command("up")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Database, artifacts, caches and logs (default ~/.local/share/modelyard).",
)
@click.option(
    "--registry-port",
    type=click.IntRange(0, 65535),
    default=50051,
    show_default=True,
    help="0 = a free port.",
)
@click.option(
    "--benchmark-port",
    type=click.IntRange(0, 65535),
    default=50061,
    show_default=True,
    help="0 = a free port.",
)
@click.option(
    "--console-port",
    type=click.IntRange(0, 65535),
    default=8090,
    show_default=True,
    help="Web console HTTP port; 0 = a free port.",
)
@click.option(
    "--text-workers",
    type=click.IntRange(1, 8),
    default=1,
    show_default=True,
    help="Workers serving text-embedding.",
)
@click.option(
    "--skip-seed",
    "skip_seed",
    multiple=True,
    type=click.Choice([s.deployment for s in SEEDS]),
    help="Do not register this deployment's initial version; its worker waits until you create it.",
)
@click.option(
    "--tiny-text", is_flag=True, help="Seed text-embedding with a tiny demo model instead of MiniLM."
)
@click.option(
    "--tls",
    is_flag=True,
    help="TLS on every server and client: a private CA and a localhost certificate made in "
    "DATA_DIR/tls (or your own: MODELYARD_TLS_CERT_FILE, MODELYARD_TLS_KEY_FILE, MODELYARD_TLS_CA_FILE).",
)
@click.option(
    "--auth",
    is_flag=True,
    help="Bearer tokens on every call: admin and reader tokens made in DATA_DIR/credentials unless "
    "MODELYARD_ADMIN_TOKENS / MODELYARD_READER_TOKENS are set (which turn auth on by themselves).",
)
@click.option(
    "--ready-timeout",
    type=click.FloatRange(min=1),
    default=300,
    show_default=True,
    help="Seconds to wait for every worker to load its models.",
)
@json_option
def up(
    data_dir: Path | None,
    registry_port: int,
    benchmark_port: int,
    console_port: int,
    text_workers: int,
    skip_seed: tuple[str, ...],
    tiny_text: bool,
    tls: bool,
    auth: bool,
    ready_timeout: float,
) -> None:
    """Start the registry (embedded PostgreSQL), one worker per model type, the benchmark service
    and the web console; register the initial versions; serve until Ctrl-C or SIGTERM, then stop everything.

    text-embedding serves the real all-MiniLM-L6-v2; image-embedding and captioning serve tiny
    demo models (random weights) built on the spot. With --json, prints the endpoints as JSON
    once ready. The endpoints are also written to DATA_DIR/stack.json while the stack runs.
    """
    ctx = get_context()
    data_dir = (data_dir or default_data_dir()).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    layout = StackLayout(
        data_dir,
        registry_port=registry_port,
        benchmark_port=benchmark_port,
        console_port=console_port,
        text_workers=text_workers,
    )
    if layout.state_file.exists():
        other = json.loads(layout.state_file.read_text() or "{}").get("pid")
        if other and _alive(int(other)):
            raise UsageError(
                f"a stack already runs from {data_dir} (pid {other}); stop it or pass --data-dir"
            )
    seeds = [TINY_TEXT_SEED if (s.deployment == "text-embedding" and tiny_text) else s for s in SEEDS]
    store_url = os.environ.get(importer.ARTIFACT_STORE_ENV) or str(data_dir / "artifacts")
    security = prepare_security(data_dir, os.environ, tls=tls, auth=auth, host=layout.host)
    stack = Stack(layout, [s.deployment for s in seeds], security)
    # The registry and workers accept the stack's artifact store, besides any roots configured already.
    stack.env[ARTIFACT_ROOTS_ENV] = roots_with_store(stack.env.get(ARTIFACT_ROOTS_ENV, ""), store_url)
    ctx.client = security.up_client(ctx.timeout_s)
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    ctx.registry = ""
    started = time.perf_counter()
    try:
        with spinner(ctx, "starting the registry (embedded PostgreSQL)"):
            registry = stack.start_registry()
        ctx.registry = registry.address
        ctx.say(f"registry    {registry.address} (data in {layout.registry_dir})")
        stack.start_workers_and_benchmark()
        for item in seeds:
            if item.deployment in skip_seed:
                continue
            with spinner(ctx, f"registering {item.model_id} {item.version} for {item.deployment}"):
                done = seed(ctx, item, layout, store_url)
            if done == "seeded":
                label = f" ({TINY_LABEL})" if item.tiny else ""
                ctx.say(f"registered  {item.deployment}: {item.model_id} {item.version}{label}")
        with spinner(ctx, "starting workers and the benchmark service"):
            stack.wait_all_started()
        with spinner(ctx, "starting the web console"):
            stack.start_console()
            stack.wait_all_started()
        _wait_ready(ctx, stack, ready_timeout)
        stack.write_state()
        client_env = write_client_env(stack)
        if ctx.json:
            ctx.emit_json(stack.describe())
        else:
            _print_endpoints(ctx, stack)
            if security.tls or security.auth:
                ctx.say(f"TLS {'on' if security.tls else 'off'}, tokens {'on' if security.auth else 'off'}; "
                        f"for the CLI: set -a; . {client_env}; set +a")  # fmt: skip
            ctx.say(
                f"modelyard is up in {time.perf_counter() - started:.1f} s; logs in {layout.logs_dir}. "
                "Ctrl-C or SIGTERM stops everything."
            )
        _supervise(stack)
    except StopRequested as stop:
        ctx.err.print(f"{stop}: stopping", markup=False)
    finally:
        with spinner(ctx, "stopping"):
            stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    ctx.say("stopped")


def write_client_env(stack: Stack) -> Path:
    """DATA_DIR/client.env (0600): what a CLI or client needs to reach this stack. It names the
    generated admin token only when `up` made it (your own tokens stay where you keep them)."""
    security = stack.security
    lines = [
        f"MODELYARD_REGISTRY_ADDRESS={stack.registry.address if stack.registry else ''}",
        f"MODELYARD_BENCHMARK_ADDRESS={stack.benchmark.address if stack.benchmark else ''}",
    ]
    if security.tls is not None:
        lines += ["MODELYARD_TLS=true", f"MODELYARD_TLS_CA_FILE={security.tls.ca_file}"]
    if "admin" in security.generated:
        lines.append(f"MODELYARD_TOKEN={security.generated['admin'].read_text(encoding='utf-8').strip()}")
    path = stack.layout.data_dir / "client.env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _wait_ready(ctx: CliContext, stack: Stack, timeout_s: float) -> None:
    """Every existing deployment served by a worker of the stack has converged."""

    async def names(registry: RegistryClient) -> list[str]:
        listed = await registry.list_deployments(rpb.ListDeploymentsRequest())
        return [d.name for d in listed.deployments if d.name in stack.deployments]

    deadline = time.monotonic() + timeout_s
    for name in ctx.registry_call(names):
        with spinner(ctx, f"workers loading {name}"):
            while True:
                dead = stack.exited()
                if dead is not None:
                    raise CliError(
                        f"{dead.name} exited: {dead.last_line()} (log: {dead.log_path})", EXIT_FAILED
                    )
                left = deadline - time.monotonic()
                status = ctx.registry_call(
                    lambda registry, n=name, w=min(2.0, max(left, 0.1)): wait_for_rollout(
                        registry, n, 0, w, ctx.timeout_s
                    )  # type: ignore[misc]
                )
                expected = sum(1 for d, _ in stack.workers if d == name)
                if status.converged and sum(w.converged for w in status.workers) >= expected:
                    break
                if left <= 0:
                    raise CliError(
                        f"{name} not ready after {timeout_s:g} s: {rollout_text(status)}", EXIT_FAILED
                    )


def _supervise(stack: Stack) -> None:
    while True:
        dead = stack.exited()
        if dead is not None:
            raise CliError(
                f"{dead.name} exited with code {dead.proc.returncode}: {dead.last_line()} (log: {dead.log_path}); "
                "stopped the stack",
                EXIT_FAILED,
            )
        time.sleep(0.5)
