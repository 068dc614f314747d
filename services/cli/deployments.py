"""`modelyard deployments`: create, list, set-routes, canary, promote, rollback, delete, check, status,
history, watch (and the rollout plan commands of `cli/rollout.py`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from modelyard.api import registry_pb2 as rpb
from modelyard.cli.context import CliContext, get_context
from modelyard.cli.errors import EXIT_FAILED, EXIT_REFUSED, CliError, UsageError
from modelyard.cli.output import (
    json_option,
    key_values,
    model_type_name,
    routes_text,
    table,
    version_state_name,
    when,
)
from modelyard.cli.parsing import parse_routes
from modelyard.cli.progress import spinner
from modelyard.common.errors import Unimplemented

if TYPE_CHECKING:
    from modelyard.client import RegistryClient


@click.group()
def deployments() -> None:
    """Deployments: what workers serve, and with which traffic weights."""


# ---- shared helpers --------------------------------------------------------------------------------


async def wait_for_rollout(
    registry: RegistryClient, deployment: str, revision: int, wait_s: float, timeout_s: float
) -> rpb.RolloutStatus:
    """Wait until every worker of `deployment` applied `revision` and none is lost (or `wait_s` ran out)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = max(0.0, deadline - time.monotonic())
        chunk_ms = int(min(left, 5.0) * 1000)
        status: rpb.RolloutStatus = await registry.get_rollout_status(
            rpb.GetRolloutStatusRequest(deployment=deployment, revision=revision, wait_timeout_ms=chunk_ms),
            timeout=chunk_ms / 1000 + timeout_s,
        )
        if status.converged or left <= 0:
            return status
        if not status.workers:  # no live worker yet: GetRolloutStatus answers at once, so pace it
            await asyncio.sleep(min(0.2, left))


def rollout_text(status: rpb.RolloutStatus) -> str:
    if status.converged:
        return f"converged on revision {status.revision} ({len(status.workers)} worker(s))"
    lagging = [
        f"{w.worker_id} {w.detail}"  # "w2 lost: no heartbeat for 42 s"
        if w.lost
        else f"{w.worker_id} at revision {w.revision}" + (f" ({w.detail})" if w.detail else "")
        for w in status.workers
        if not w.converged
    ]
    if not status.workers:
        return f"revision {status.revision}: no live worker serves this deployment"
    return f"revision {status.revision} not converged: " + "; ".join(lagging)


def _wait_and_report(ctx: CliContext, name: str, revision: int, wait_s: float) -> dict[str, Any]:
    """Wait for convergence with a spinner; fail (exit 1) if it does not happen in time."""
    started = time.perf_counter()
    with spinner(ctx, f"waiting for every worker of {name} to apply revision {revision}"):
        status = ctx.registry_call(
            lambda registry: wait_for_rollout(registry, name, revision, wait_s, ctx.timeout_s)
        )
    seconds = time.perf_counter() - started
    if not status.converged:
        raise CliError(f"{name}: {rollout_text(status)} after {wait_s:g} s", EXIT_FAILED)
    ctx.say(f"rollout     {rollout_text(status)} in {seconds:.2f} s")
    return {"rollout": status, "seconds": round(seconds, 3)}


def _print_deployment(ctx: CliContext, d: rpb.Deployment, extra: dict[str, Any] | None = None) -> None:
    if ctx.json:
        ctx.emit_json({"deployment": d, **(extra or {})})
        return
    ctx.say(f"{d.name}  revision {d.revision}  routes {routes_text(d.routes)}")


def _wait_option(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--wait-timeout",
        type=click.FloatRange(min=0),
        default=120.0,
        show_default=True,
        help="With --wait: longest wait, seconds.",
    )(func)
    return click.option("--wait", is_flag=True, help="Wait until every worker applied the change.")(func)


# ---- commands --------------------------------------------------------------------------------------


@deployments.command("create")
@click.argument("name")
@click.option("--model", "model_id", required=True)
@click.option(
    "--route", "routes", multiple=True, metavar="VERSION=WEIGHT", help="Repeatable; weights sum to 100."
)
@click.option("--follow-alias", default="", help="Route 100% to this alias's version, and follow it.")
@click.option("--description", default="")
@click.option("--reason", default="")
@_wait_option
@json_option
def create_cmd(
    name: str,
    model_id: str,
    routes: tuple[str, ...],
    follow_alias: str,
    description: str,
    reason: str,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Create deployment NAME serving MODEL with --route weights or following --follow-alias."""
    ctx = get_context()
    if not routes and not follow_alias:
        raise UsageError("give --route VERSION=WEIGHT (repeatable) or --follow-alias ALIAS")
    request = rpb.CreateDeploymentRequest(
        name=name,
        model_id=model_id,
        routes=parse_routes(routes) if routes else [],
        follow_alias=follow_alias,
        description=description,
        reason=reason,
    )
    created = ctx.registry_call(lambda registry: registry.create_deployment(request))
    extra = _wait_and_report(ctx, name, created.revision, wait_timeout) if wait else {}
    _print_deployment(ctx, created, extra)


@deployments.command("list")
@click.option("--model", "model_id", default="")
@json_option
def list_cmd(model_id: str) -> None:
    """List deployments and their routes."""
    ctx = get_context()
    listed = ctx.registry_call(
        lambda registry: registry.list_deployments(rpb.ListDeploymentsRequest(model_id=model_id))
    )
    if ctx.json:
        ctx.emit_json(list(listed.deployments))
        return
    table(
        ctx,
        ["deployment", "model", "type", "routes", "follows", "revision", "description", "updated"],
        [
            (
                d.name,
                d.model_id,
                model_type_name(d.model_type),
                routes_text(d.routes),
                d.follow_alias or "-",
                d.revision,
                d.description or "-",
                when(d.updated_at),
            )
            for d in listed.deployments
        ],
        right=["revision"],
    )


@deployments.command("set-routes")
@click.argument("name")
@click.argument("routes", nargs=-1, required=True, metavar="VERSION=WEIGHT...")
@click.option(
    "--acknowledge-incompatible", is_flag=True, help="Accept a signature change (re-index vectors)."
)
@click.option(
    "--expected-revision", type=int, default=0, help="Refuse unless the deployment is at this revision."
)
@click.option("--reason", default="")
@_wait_option
@json_option
def set_routes_cmd(
    name: str,
    routes: tuple[str, ...],
    acknowledge_incompatible: bool,
    expected_revision: int,
    reason: str,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Set the routes of NAME, e.g. `1.0.0=90 1.1.0=10`; weight 0 stages a version (loaded, pinned only)."""
    ctx = get_context()
    request = rpb.SetRoutesRequest(
        name=name,
        routes=parse_routes(routes),
        acknowledge_incompatible=acknowledge_incompatible,
        reason=reason,
        expected_revision=expected_revision,
    )
    updated = ctx.registry_call(lambda registry: registry.set_routes(request))
    extra = _wait_and_report(ctx, name, updated.revision, wait_timeout) if wait else {}
    _print_deployment(ctx, updated, extra)


@deployments.command("shadow")
@click.argument("name")
@click.argument("version")
@click.option(
    "--percent",
    type=click.IntRange(0, 100),
    default=10,
    show_default=True,
    help="Share of unpinned requests mirrored to VERSION; 0 stops mirroring (VERSION stays staged).",
)
@click.option("--acknowledge-incompatible", is_flag=True, help="Accept a signature change.")
@click.option("--reason", default="")
@_wait_option
@json_option
def shadow_cmd(
    name: str,
    version: str,
    percent: int,
    acknowledge_incompatible: bool,
    reason: str,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Mirror PERCENT% of NAME's unpinned requests to VERSION, staged at weight 0: callers get only the
    current routes' answers; VERSION's latency, errors and agreement show in `deployments status`."""
    ctx = get_context()
    current = ctx.registry_call(lambda registry: registry.get_deployment(rpb.GetDeploymentRequest(name=name)))
    routes = [
        rpb.Route(version=r.version, weight=r.weight, mirror_percent=percent if r.version == version else 0)
        for r in current.routes
    ]
    if not any(r.version == version for r in routes):
        routes.append(rpb.Route(version=version, weight=0, mirror_percent=percent))
    request = rpb.SetRoutesRequest(
        name=name,
        routes=routes,
        acknowledge_incompatible=acknowledge_incompatible,
        reason=reason or (f"shadow {version} at {percent}%" if percent else f"stop shadowing {version}"),
        expected_revision=current.revision,
    )
    updated = ctx.registry_call(lambda registry: registry.set_routes(request))
    extra = _wait_and_report(ctx, name, updated.revision, wait_timeout) if wait else {}
    _print_deployment(ctx, updated, extra)


@deployments.command("canary")
@click.argument("name")
@click.argument("version")
@click.option("--weight", type=click.IntRange(1, 99), default=10, show_default=True, help="Canary share, %.")
@click.option("--reason", default="")
@_wait_option
@json_option
def canary_cmd(name: str, version: str, weight: int, reason: str, wait: bool, wait_timeout: float) -> None:
    """Send WEIGHT% of NAME's traffic to VERSION, the rest to its current main version."""
    ctx = get_context()

    async def call(registry: RegistryClient) -> rpb.Deployment:
        current = await registry.get_deployment(rpb.GetDeploymentRequest(name=name))
        stable = max(current.routes, key=lambda r: r.weight, default=None)
        if stable is None:
            raise CliError(f"deployment {name} has no routes to split", EXIT_FAILED)
        if stable.version == version:
            raise UsageError(f"{version} already carries the main traffic of {name}; canary another version")
        routes = [
            rpb.Route(version=stable.version, weight=100 - weight),
            rpb.Route(version=version, weight=weight),
        ]
        updated: rpb.Deployment = await registry.set_routes(
            rpb.SetRoutesRequest(
                name=name,
                routes=routes,
                reason=reason or f"canary {version} at {weight}%",
                expected_revision=current.revision,
            ),
        )
        return updated

    updated = ctx.registry_call(call)
    extra = _wait_and_report(ctx, name, updated.revision, wait_timeout) if wait else {}
    _print_deployment(ctx, updated, extra)


def print_promotion(response: rpb.SetAliasResponse, extra: dict[str, Any] | None = None) -> None:
    ctx = get_context()
    if ctx.json:
        ctx.emit_json({"promotion": response, **(extra or {})})
        return
    for gate in response.gates:
        ctx.say(
            f"gate        {gate.gate}: observed {gate.observed:.4f} -> {'passed' if gate.passed else 'FAILED'}"
        )
    ctx.say(
        f"promoted    {response.model_id} {response.version} to {response.alias!r}"
        + (f" (was {response.previous_version})" if response.previous_version else "")
    )
    for d in response.switched:
        ctx.say(f"switched    {d.name} to revision {d.revision}: {routes_text(d.routes)}")


@deployments.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--alias", default=None, help="Alias to move; default: the one NAME follows, else production.")
@click.option("--gate", "gates", multiple=True, metavar="'METRIC OP VALUE'", help="e.g. 'recall@10 >= 0.80'.")
@click.option("--gate-suite", default="", help="Suite the gate metrics must come from; default: newest run.")
@click.option("--acknowledge-incompatible", is_flag=True)
@click.option("--reason", default="")
@_wait_option
@json_option
def promote_cmd(
    name: str,
    version: str,
    alias: str | None,
    gates: tuple[str, ...],
    gate_suite: str,
    acknowledge_incompatible: bool,
    reason: str,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Promote VERSION for deployment NAME: move the alias (checking --gate against recorded
    benchmark metrics); NAME switches to 100% VERSION."""
    ctx = get_context()

    async def call(registry: RegistryClient) -> tuple[rpb.SetAliasResponse, int]:
        # One RPC: the registry moves the alias and routes NAME in one transaction, or neither.
        response: rpb.SetAliasResponse = await registry.promote_version(
            rpb.PromoteVersionRequest(
                deployment=name,
                version=version,
                alias=alias or "",
                gates=list(gates),
                gate_suite=gate_suite,
                acknowledge_incompatible=acknowledge_incompatible,
                reason=reason,
            ),
        )
        return response, next(d.revision for d in response.switched if d.name == name)

    response, revision = ctx.registry_call(call)
    if not ctx.json:
        print_promotion(response)
    extra = _wait_and_report(ctx, name, revision, wait_timeout) if wait else {}
    if ctx.json:
        print_promotion(response, extra)


@deployments.command("rollback")
@click.argument("name")
@click.option(
    "--to-revision", type=int, default=0, help="Routes as of this revision; default: the previous ones."
)
@click.option("--acknowledge-incompatible", is_flag=True)
@click.option("--reason", default="")
@_wait_option
@json_option
def rollback_cmd(
    name: str, to_revision: int, acknowledge_incompatible: bool, reason: str, wait: bool, wait_timeout: float
) -> None:
    """Return NAME to its previous routes (or those of --to-revision)."""
    ctx = get_context()
    request = rpb.RollbackDeploymentRequest(
        name=name, to_revision=to_revision, acknowledge_incompatible=acknowledge_incompatible, reason=reason
    )
    updated = ctx.registry_call(lambda registry: registry.rollback_deployment(request))
    extra = _wait_and_report(ctx, name, updated.revision, wait_timeout) if wait else {}
    if not ctx.json:
        ctx.say("rolled back")
    _print_deployment(ctx, updated, extra)


@deployments.command("delete")
@click.argument("name")
@click.option("--reason", default="")
@json_option
def delete_cmd(name: str, reason: str) -> None:
    """Delete deployment NAME: every worker stops serving it and unloads its versions."""
    ctx = get_context()
    deleted = ctx.registry_call(
        lambda registry: registry.delete_deployment(rpb.DeleteDeploymentRequest(name=name, reason=reason))
    )
    if ctx.json:
        ctx.emit_json({"name": name, "deleted": True, "revision": deleted.revision})
    else:
        ctx.say(f"deleted {name} at revision {deleted.revision}")


@deployments.command("check")
@click.argument("name")
@click.argument("version")
@click.option("--model", "model_id", default="", help="Model of VERSION; default: the deployment's.")
@json_option
def check_cmd(name: str, version: str, model_id: str) -> None:
    """Would routing NAME to VERSION keep the signature its consumers depend on? Exit 3 if not."""
    ctx = get_context()
    result = ctx.registry_call(
        lambda registry: registry.check_compatibility(
            rpb.CheckCompatibilityRequest(deployment=name, model_id=model_id, version=version)
        )
    )
    if ctx.json:
        ctx.emit_json(result)
    elif result.compatible:
        ctx.say(f"{version} is compatible with {name}")
    if not result.compatible:
        raise CliError(
            f"{version} is not compatible with {name}: {'; '.join(result.differences)}; routing to it needs "
            "--acknowledge-incompatible (stored vectors must be re-embedded)",
            EXIT_REFUSED,
        )


@deployments.command("status")
@click.argument("name")
@click.option(
    "--window",
    "window_s",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Seconds of live figures; default: the registry's (60 s, at most what it keeps).",
)
@_wait_option
@json_option
def status_cmd(name: str, window_s: float, wait: bool, wait_timeout: float) -> None:
    """Routes, rollout state, every worker serving NAME, and each version's live figures over the
    last --window seconds: requests/s, errors, p50/p95/p99 (with --wait: until converged)."""
    ctx = get_context()

    async def call(
        registry: RegistryClient,
    ) -> tuple[
        rpb.Deployment,
        rpb.RolloutStatus,
        list[rpb.WorkerStatus],
        rpb.LiveMetrics | None,
        rpb.RolloutPlan | None,
    ]:
        from modelyard.cli.rollout import active_plan

        d = await registry.get_deployment(rpb.GetDeploymentRequest(name=name))
        wait_s = wait_timeout if wait else 0.0
        rollout = await wait_for_rollout(registry, name, d.revision, wait_s, ctx.timeout_s)
        listed = await registry.list_workers(rpb.ListWorkersRequest(deployment=name, include_stale=True))
        # Live workers, and the silent ones the rollout counts as lost; not every worker ever seen.
        lost = {w.worker_id for w in rollout.workers if w.lost}
        workers = [w for w in listed.workers if w.live or w.worker_id in lost]
        try:
            live: rpb.LiveMetrics | None = await registry.get_live_metrics(
                rpb.GetLiveMetricsRequest(deployment=name, window_s=window_s)
            )
        except Unimplemented:  # a registry from before live figures: the rest still stands
            live = None
        return d, rollout, workers, live, await active_plan(registry, name)

    with spinner(ctx, f"reading {name}"):
        d, rollout, workers, live, plan = ctx.registry_call(call)
    if ctx.json:
        ctx.emit_json({"deployment": d, "rollout": rollout, "workers": workers, "live": live, "plan": plan})
    else:
        key_values(
            ctx,
            [
                ("deployment", d.name),
                ("model", f"{d.model_id} ({model_type_name(d.model_type)})"),
                ("description", d.description or "-"),
                ("follows", d.follow_alias or "-"),
                ("routes", routes_text(d.routes)),
                ("revision", d.revision),
                ("rollout", rollout_text(rollout)),
            ],
        )
        rollouts = {w.worker_id: w for w in rollout.workers}
        rows = []
        for w in workers:
            served = next((s for s in w.deployments if s.deployment == name), None)
            versions = ", ".join(_loaded_version_text(v) for v in (served.versions if served else []))
            r = rollouts.get(w.worker_id)
            rows.append(
                (
                    w.worker_id,
                    w.address,
                    "lost" if r and r.lost else w.state + (" (fallback)" if w.fallback else ""),
                    served.revision if served else "-",
                    "yes" if r and r.converged else "no",
                    versions or "-",
                    when(w.last_seen),
                )
            )
        table(ctx, ["worker", "address", "state", "revision", "converged", "versions", "last seen"], rows)
        _print_live(ctx, d, live)
        if plan is not None:
            from modelyard.cli.rollout import print_plan

            print_plan(ctx, plan)
    if wait and not rollout.converged:
        raise CliError(f"{name}: {rollout_text(rollout)} after {wait_timeout:g} s", EXIT_FAILED)


def _print_live(ctx: CliContext, d: rpb.Deployment, live: rpb.LiveMetrics | None) -> None:
    """One row per version (all its workers summed), then one per worker when several serve it."""
    if live is None:
        ctx.say("live        this registry does not serve live figures (GetLiveMetrics)")
        return
    if not live.versions:
        ctx.say(f"live        no live worker counted requests in the last {live.window_s:g} s")
        return
    weights = {r.version: r.weight for r in d.routes}
    rows = []
    for v in live.versions:
        rows.append((v.version, weights.get(v.version, "-"), "all", *_figures_cells(v.total)))
        if len(v.workers) > 1:
            rows.extend(("", "", w.worker_id, *_figures_cells(w.figures)) for w in v.workers)
    columns = ["version", "weight", "worker", "req/s", "items/s", "errors", "p50 ms", "p95 ms", "p99 ms"]
    table(
        ctx,
        [*columns, "requests", "window", "drift", "shadow agreement"],
        rows,
        title=f"live figures, last {live.window_s:g} s (from worker heartbeats)",
        right=["weight", "req/s", "items/s", "p50 ms", "p95 ms", "p99 ms", "requests", "window"],
    )


def _figures_cells(f: rpb.LiveFigures) -> tuple[str, ...]:
    """`0.5% (INVALID_ARGUMENT 3)`: the error rate, then the failed requests by status code."""
    errors = f"{f.error_rate:.1%}" + (
        " (" + ", ".join(f"{code} {n}" for code, n in sorted(f.errors.items())) + ")" if f.errors else ""
    )
    latency = (
        (f"{f.p50_ms:.1f}", f"{f.p95_ms:.1f}", f"{f.p99_ms:.1f}") if sum(f.latency_buckets) else ("-",) * 3
    )
    return (
        f"{f.requests_per_s:.1f}",
        f"{f.items_per_s:.1f}",
        errors,
        *latency,
        str(f.requests),
        f"{f.window_s:.0f} s",
        _drift_text(f),
        _shadow_text(f),
    )


def _shadow_text(f: rpb.LiveFigures) -> str:
    """`0.982 over 310 items (40 mirrored)`: a shadow's mean agreement with the primary."""
    if not f.shadow_requests:
        return "-"
    agreement = f"{f.agreement:.3f} over {f.agreement_items} items" if f.agreement_items else "not comparable"
    return f"{agreement} ({f.shadow_requests} mirrored)"


def _drift_text(f: rpb.LiveFigures) -> str:
    """`output_cosine 0.05, input_size 0.03`: the scores; `-` before enough items (100 per signal)."""
    return ", ".join(f"{signal} {score:.2f}" for signal, score in sorted(f.drift.items())) or "-"


def _loaded_version_text(v: rpb.LoadedVersion) -> str:
    """`2.0.0 FAILED (error) attempt 3, next at 2030-01-01 12:00:05`; attempts only once retried."""
    text = f"{v.version} {version_state_name(v.state)}" + (f" ({v.last_error})" if v.last_error else "")
    if v.attempts > 1:
        text += f" attempt {v.attempts}"
    if v.HasField("next_attempt_at"):
        text += f", next at {when(v.next_attempt_at)}"
    return text


@deployments.command("history")
@click.argument("name", required=False)
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=20, show_default=True)
@click.option("--action", default="", help="Only this action, e.g. routes.set, alias.follow.")
@json_option
def history_cmd(name: str | None, limit: int, action: str) -> None:
    """The audit log of NAME (or of everything), newest first; a deleted deployment keeps its history."""
    ctx = get_context()

    async def call(registry: RegistryClient) -> list[rpb.AuditEvent]:
        listed = await registry.list_audit_events(
            rpb.ListAuditEventsRequest(
                entity_type="deployment" if name else "", entity_id=name or "", action=action, page_size=limit
            ),
        )
        if name and not listed.events:  # a name that never existed is a mistake, not an empty history
            await registry.get_deployment(rpb.GetDeploymentRequest(name=name))
        return list(listed.events)

    events = ctx.registry_call(call)
    if ctx.json:
        ctx.emit_json(events)
        return
    table(
        ctx,
        ["#", "at", "actor", "action", "entity", "revision", "routes after", "reason"],
        [
            (
                e.id,
                when(e.at),
                e.actor or "-",
                e.action,
                f"{e.entity_type}:{e.entity_id}",
                e.revision or "-",
                _routes_in(e.after_json),
                e.reason or "-",
            )
            for e in events
        ],
        right=["#", "revision"],
    )


def _routes_in(document: str) -> str:
    try:
        after = json.loads(document) if document else None
    except ValueError:
        return "-"
    if isinstance(after, dict) and isinstance(after.get("routes"), list):
        return ", ".join(
            f"{r.get('version')}={r.get('weight')}" for r in after["routes"] if isinstance(r, dict)
        )
    return "-"


@deployments.command("watch")
@click.argument("names", nargs=-1)
@click.option("--since", "since_revision", type=int, default=0, help="Resume after this revision.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many messages.")
@json_option
def watch_cmd(names: tuple[str, ...], since_revision: int, count: int | None) -> None:
    """Stream deployment changes (a snapshot first), one line each, until Ctrl-C or --count."""
    ctx = get_context()

    async def call(registry: RegistryClient) -> None:
        seen = 0
        stream = registry.watch_deployments(
            rpb.WatchDeploymentsRequest(deployments=list(names), since_revision=since_revision)
        )
        async for message in stream:  # leaving the loop cancels the stream
            if ctx.json:
                click.echo(json.dumps(_jsonl(message)))
            else:
                kind = rpb.WatchDeploymentsResponse.Kind.Name(message.kind).lower()
                for d in message.deployments or [rpb.Deployment()]:
                    click.echo(
                        f"r{message.revision:<5} {kind:<8} {message.action or '-':<20} {d.name or '-':<20} "
                        f"{routes_text(d.routes)}"
                    )
            seen += 1
            if count is not None and seen >= count:
                return

    ctx.registry_call(call)


def _jsonl(message: rpb.WatchDeploymentsResponse) -> Any:
    from modelyard.cli.context import to_jsonable

    return to_jsonable(message)
