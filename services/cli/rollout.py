"""`modelyard deployments rollout` and its controls: rollout plans the registry drives step by step
on live evidence (see services/registry/rollout_plans.py)."""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import TYPE_CHECKING

import click

from modelyard.api import registry_pb2 as rpb
from modelyard.cli.context import CliContext, get_context
from modelyard.cli.deployments import deployments
from modelyard.cli.errors import EXIT_FAILED, CliError, UsageError
from modelyard.cli.output import json_option, key_values, table, when
from modelyard.cli.progress import spinner
from modelyard.common.errors import NotFound, Unimplemented

if TYPE_CHECKING:
    from modelyard.client import RegistryClient

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
STATE_NAMES = {
    rpb.ROLLOUT_PLAN_RUNNING: "running",
    rpb.ROLLOUT_PLAN_PAUSED: "paused",
    rpb.ROLLOUT_PLAN_SUCCEEDED: "succeeded",
    rpb.ROLLOUT_PLAN_ROLLED_BACK: "rolled back",
    rpb.ROLLOUT_PLAN_ABORTED: "aborted",
}
ACTIVE = (rpb.ROLLOUT_PLAN_RUNNING, rpb.ROLLOUT_PLAN_PAUSED)


def parse_duration(text: str) -> float:
    """`60s`, `1.5m`, `500ms`, `2h` or plain seconds."""
    match = _DURATION.match(text)
    if not match:
        raise UsageError(f"invalid duration {text!r}: write e.g. 60s, 1.5m, 500ms")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_steps(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(
            f"invalid --steps {text!r}: write candidate weights in percent, e.g. 5,25,50,100"
        ) from None


def print_plan(ctx: CliContext, plan: rpb.RolloutPlan) -> None:
    if ctx.json:
        ctx.emit_json({"plan": plan})
        return
    steps = " ".join(
        (f"[{s}]" if i == plan.step_index else str(s)) + ("(shadow)" if s == 0 else "")
        for i, s in enumerate(plan.steps)
    )
    key_values(
        ctx,
        [
            (
                "plan",
                f"{plan.plan_id}: {plan.baseline_version} -> {plan.candidate_version} on {plan.deployment}",
            ),
            ("state", STATE_NAMES.get(plan.state, "?") + (f" ({plan.outcome})" if plan.outcome else "")),
            (
                "steps",
                f"{steps} %  (step {plan.step_index + 1} of {len(plan.steps)})"
                + (
                    f"; shadow step mirrors {plan.shadow_percent}% of requests" if plan.shadow_percent else ""
                ),
            ),
            ("step since", when(plan.step_started_at)),
            (
                "each step",
                f"{plan.step_duration_s:g} s, at least {plan.min_requests} candidate requests"
                + (f", the first {plan.warmup_s:g} s not judged" if plan.warmup_s else ""),
            ),
            (
                "last judged",
                f"{when(plan.judged_at)} by {plan.driver}: {plan.candidate_requests} candidate, "
                f"{plan.baseline_requests} baseline requests over {plan.window_s:.1f} s"
                if plan.driver
                else "not yet",
            ),
        ],
    )
    rows = [
        (
            g.guard,
            f"{g.value:.4g}" if g.judged and not math.isnan(g.value) else "-",
            ("holds" if g.holds else "FAILS") if g.judged else "waiting for evidence",
        )
        for g in plan.guards
    ]
    if rows:
        table(
            ctx, ["guard", "value", "verdict"], rows, title="guards over the step's window", right=["value"]
        )


async def _wait_for_end(registry: RegistryClient, name: str, wait_s: float) -> rpb.RolloutPlan:
    deadline = time.monotonic() + wait_s
    while True:
        plan: rpb.RolloutPlan = await registry.get_rollout_plan(rpb.GetRolloutPlanRequest(deployment=name))
        if plan.state not in ACTIVE or time.monotonic() >= deadline:
            return plan
        await asyncio.sleep(0.5)


@deployments.command("rollout")
@click.argument("name")
@click.argument("version")
@click.option(
    "--steps", default="5,25,50,100", show_default=True, help="Candidate weights, %, ending at 100."
)
@click.option("--step-duration", default="60s", show_default=True, help="How long each step is observed.")
@click.option(
    "--guard",
    "guards",
    multiple=True,
    metavar="'METRIC OP VALUE'",
    help="Must hold over each step (repeatable): error_rate, error_rate_delta, p50_ms, p95_ms, p99_ms, "
    "p50_ratio, p95_ratio, p99_ratio, drift, agreement (the shadow step only); e.g. 'p99_ratio <= 1.5'.",
)
@click.option("--min-requests", type=click.IntRange(min=0), default=200, show_default=True)
@click.option(
    "--warmup", default="0s", show_default=True, help="Start of each step not judged (cold first requests)."
)
@click.option(
    "--shadow",
    type=click.IntRange(0, 100),
    default=0,
    help="Begin with a shadow step: mirror this %% of unpinned requests to VERSION (weight 0), judged "
    "by the same guards, before it takes traffic; guards may read 'agreement' there.",
)
@click.option("--acknowledge-incompatible", is_flag=True, help="Consumers will get another signature.")
@click.option("--reason", default="")
@click.option("--wait", is_flag=True, help="Wait until the plan succeeds or rolls back.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True)
@json_option
def rollout_cmd(
    name: str,
    version: str,
    steps: str,
    step_duration: str,
    guards: tuple[str, ...],
    min_requests: int,
    warmup: str,
    shadow: int,
    acknowledge_incompatible: bool,
    reason: str,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Move NAME to VERSION step by step: the registry raises VERSION's weight when every --guard held
    over a step (against the current version) and rolls back at once when one fails."""
    ctx = get_context()
    request = rpb.StartRolloutPlanRequest(
        deployment=name,
        version=version,
        steps=parse_steps(steps),
        step_duration_s=parse_duration(step_duration),
        guards=list(guards),
        min_requests=min_requests,
        warmup_s=parse_duration(warmup),
        shadow_percent=shadow,
        acknowledge_incompatible=acknowledge_incompatible,
        reason=reason,
    )
    plan: rpb.RolloutPlan = ctx.registry_call(lambda registry: registry.start_rollout_plan(request))
    if wait:
        with spinner(ctx, f"rolling {name} out to {version}"):
            plan = ctx.registry_call(lambda registry: _wait_for_end(registry, name, wait_timeout))
    print_plan(ctx, plan)
    if wait and plan.state != rpb.ROLLOUT_PLAN_SUCCEEDED:
        raise CliError(f"{name}: rollout {STATE_NAMES.get(plan.state, '?')}: {plan.outcome}", EXIT_FAILED)


@deployments.command("rollout-status")
@click.argument("name")
@json_option
def rollout_status_cmd(name: str) -> None:
    """NAME's active rollout plan (else its last one): step, guards and their live values."""
    ctx = get_context()
    print_plan(
        ctx, ctx.registry_call(lambda r: r.get_rollout_plan(rpb.GetRolloutPlanRequest(deployment=name)))
    )


def _control(rpc_name: str, help_text: str) -> None:
    @deployments.command(f"rollout-{rpc_name}", help=help_text)
    @click.argument("name")
    @click.option("--reason", default="")
    @json_option
    def command(name: str, reason: str) -> None:
        ctx = get_context()
        request = rpb.RolloutPlanControlRequest(deployment=name, reason=reason)
        plan = ctx.registry_call(lambda r: getattr(r, f"{rpc_name}_rollout_plan")(request))
        print_plan(ctx, plan)


_control("pause", "Hold NAME's rollout plan at its current step.")
_control("resume", "Resume NAME's paused rollout plan (its current step starts again).")
_control("abort", "End NAME's rollout plan and route it back to 100% its baseline version.")


async def active_plan(registry: RegistryClient, name: str) -> rpb.RolloutPlan | None:
    """For `deployments status`: the active plan, None without one (or from an older registry)."""
    try:
        plan: rpb.RolloutPlan = await registry.get_rollout_plan(rpb.GetRolloutPlanRequest(deployment=name))
    except (NotFound, Unimplemented):
        return None
    return plan if plan.state in ACTIVE else None
