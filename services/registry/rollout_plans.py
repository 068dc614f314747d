"""Progressive delivery: rollout plans that move a canary's weight step by step while guards hold on
the live figures (`live_metrics`), and roll back at once when one fails.

A plan lives in PostgreSQL (`rollout_plans`), so any replica can continue it. `PlanDriver` runs in
every replica; the one holding a session-level advisory lock judges the running plans, the others
wait for the lock (released by PostgreSQL when its holder's connection dies, e.g. a SIGKILL). Each
step change also re-checks, under the plan's row lock, that the plan is still at the step it judged,
so a replica that lost the lock mid-judgement cannot move a plan twice."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import math
import os
import socket
import time
from collections.abc import Sequence

import asyncpg
from prometheus_client import Counter, Gauge

from modelyard.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from modelyard.common.log import event
from modelyard.common.states import PlanState, VersionState
from modelyard.registry import audit
from modelyard.registry import repository as repo
from modelyard.registry.aliases import Aliases
from modelyard.registry.broadcast import DeploymentBroadcast
from modelyard.registry.catalog import find_version
from modelyard.registry.db import Database
from modelyard.registry.deployments import change_routes, find_deployment
from modelyard.registry.domain import Deployment, Judgement, LiveFigures, RolloutPlan, Route
from modelyard.registry.guards import SHADOW_ONLY_METRICS, Decision, Verdict, judge, parse_guards, served
from modelyard.registry.live_metrics import LiveEvidence
from modelyard.registry.validation import check_semver

log = logging.getLogger("modelyard.registry.rollout")

ROLLOUT_STEP = Gauge(
    "modelyard_rollout_step",
    "Candidate weight (percent) of the deployment's running rollout plan; exported by the replica driving it.",
    ["deployment"],
)
ROLLOUT_OUTCOME = Counter(
    "modelyard_rollout_outcome_total",
    "Rollout plans ended, by outcome (succeeded, rolled_back, aborted).",
    ["deployment", "outcome"],
)
# pg_try_advisory_lock key of the driver ("modelyar" in ASCII): one driver per database.
DRIVER_LOCK_KEY = 0x6D6F64656C796172
MAX_STEP_DURATION_S = 7 * 24 * 3600.0
# A step's window is at least this long, so the first judgement after a step change rests on more
# than the heartbeat that happened to land first.
MIN_WINDOW_S = 1.0


def check_steps(steps: Sequence[int]) -> list[int]:
    if not steps:
        raise InvalidArgument("a rollout plan needs steps: candidate weights in percent, e.g. 5,25,50,100")
    if any(not 0 < s <= 100 for s in steps):
        raise InvalidArgument(f"steps {list(steps)}: each is a weight in percent, 1..100")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise InvalidArgument(f"steps {list(steps)} must increase strictly")
    if steps[-1] != 100:
        raise InvalidArgument(f"steps {list(steps)} must end at 100 (the candidate's promotion)")
    return list(steps)


def step_routes(current: Deployment, plan: RolloutPlan, weight: int) -> list[Route]:
    """Baseline and candidate at `weight` for the candidate (at 0, the shadow step: mirrored to);
    other staged (weight-0) routes stay, without mirroring: one shadow at a time."""
    others = [
        Route(r.version, 0)
        for r in current.routes
        if r.version not in (plan.baseline, plan.candidate) and r.weight == 0
    ]
    routes = [Route(plan.candidate, weight, plan.shadow_percent if weight == 0 else 0)]
    if weight < 100:
        routes.insert(0, Route(plan.baseline, 100 - weight))
    return routes + others


def baseline_routes(current: Deployment, plan: RolloutPlan) -> list[Route]:
    """Back to 100% the baseline; the candidate leaves the routes (workers unload it)."""
    others = [
        Route(r.version, 0)
        for r in current.routes
        if r.version not in (plan.baseline, plan.candidate) and r.weight == 0
    ]
    return [Route(plan.baseline, 100), *others]


def describe(verdict: Verdict, judgement: Judgement) -> str:
    """The readings for an audit reason: `error_rate <= 0.01`: 0.002, ..."""
    parts = [
        f"`{r.guard}`: {r.value:.4g}" if r.judged else f"`{r.guard}`: not judged" for r in verdict.readings
    ]
    window = (
        f"over {judgement.window_s:.1f} s, {judgement.candidate_requests} candidate and "
        f"{judgement.baseline_requests} baseline requests"
    )
    return f"{'; '.join(parts) or 'no guards'} ({window})"


class RolloutPlans:
    """Start, read, pause, resume and abort plans (any replica), and judge the running ones
    (`drive_once`, called by the replica holding the driver lock)."""

    def __init__(
        self,
        db: Database,
        broadcast: DeploymentBroadcast,
        live: LiveEvidence,
        aliases: Aliases,
        *,
        heartbeat_ttl_s: float,
        replica: str = "",
    ) -> None:
        self.db = db
        self.broadcast = broadcast
        self.live = live
        self.aliases = aliases
        self.heartbeat_ttl = dt.timedelta(seconds=heartbeat_ttl_s)
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}"

    # ---- operator calls ---------------------------------------------------------------------

    async def start(
        self,
        deployment: str,
        version: str,
        *,
        steps: Sequence[int],
        step_duration_s: float,
        guards: Sequence[str],
        min_requests: int,
        warmup_s: float = 0.0,
        shadow_percent: int = 0,
        acknowledge_incompatible: bool,
        actor: str,
        reason: str,
    ) -> RolloutPlan:
        """Check everything, then in one transaction store the plan and route its first step."""
        check_semver(version)
        steps = check_steps(steps)
        if not (math.isfinite(step_duration_s) and 0 < step_duration_s <= MAX_STEP_DURATION_S):
            raise InvalidArgument(
                f"step_duration_s is {step_duration_s:g}; give a duration above 0 and at most 7 days"
            )
        if min_requests < 0:
            raise InvalidArgument(f"min_requests is {min_requests}; give 0 or more")
        if not (math.isfinite(warmup_s) and 0 <= warmup_s < step_duration_s):
            raise InvalidArgument(
                f"warmup_s is {warmup_s:g}; give 0 or more, less than step_duration_s ({step_duration_s:g})"
            )
        if not 0 <= shadow_percent <= 100:
            raise InvalidArgument(f"shadow_percent is {shadow_percent}; give 1..100, or 0 for no shadow step")
        if shadow_percent:
            steps = [0, *steps]
        parsed = parse_guards(guards)
        if not shadow_percent and any(g.metric in SHADOW_ONLY_METRICS for g in parsed):
            raise InvalidArgument(
                "an `agreement` guard compares mirrored answers with the primary's: it needs a shadow "
                "step (shadow_percent, `--shadow PERCENT`)"
            )
        async with self.db.transaction() as conn:
            current = await find_deployment(conn, deployment, for_update=True)
            active = await repo.get_plan(conn, deployment=deployment, active_only=True)
            if active is not None:
                raise AlreadyExists(
                    f"deployment {deployment} already has a {active.state} rollout plan "
                    f"({active.baseline} -> {active.candidate}); abort it first"
                )
            carrying = [r for r in current.routes if r.weight > 0]
            if len(carrying) != 1:
                shown = ", ".join(f"{r.version}={r.weight}" for r in current.routes)
                raise FailedPrecondition(
                    f"deployment {deployment} splits its traffic ({shown}); a rollout plan starts from "
                    "one version at 100%. Route it to one version first"
                )
            baseline = carrying[0].version
            if version == baseline:
                raise FailedPrecondition(f"{version} already carries all of {deployment}'s traffic")
            await find_version(conn, current.model_id, version)
            plan = await repo.insert_plan(
                conn,
                plan=RolloutPlan(
                    plan_id=0,
                    deployment=deployment,
                    model_id=current.model_id,
                    baseline=baseline,
                    candidate=version,
                    steps=steps,
                    step_index=0,
                    step_duration_s=step_duration_s,
                    min_requests=min_requests,
                    warmup_s=warmup_s,
                    shadow_percent=shadow_percent,
                    guards=[g.text for g in parsed],
                    state=PlanState.RUNNING,
                    step_started_at=dt.datetime.now(dt.UTC),
                    created_by=actor,
                    created_at=dt.datetime.now(dt.UTC),
                ),
            )
            await change_routes(
                conn,
                current,
                step_routes(current, plan, steps[0]),
                action="rollout.start",
                acknowledge_incompatible=acknowledge_incompatible,
                actor=actor,
                reason=reason
                or (
                    f"rollout plan {plan.plan_id}: {version} "
                    + (f"shadowing {shadow_percent}% of requests" if shadow_percent else f"at {steps[0]}%")
                    + " (steps "
                    f"{','.join(map(str, steps))}, {step_duration_s:g} s each, guards "
                    f"{'; '.join(plan.guards) or 'none'}, min {min_requests} requests)"
                ),
                during_plan=True,
            )
        self.broadcast.kick()
        return plan

    async def get(self, deployment: str) -> RolloutPlan:
        async with self.db.connection() as conn:
            plan = await repo.get_plan(conn, deployment=deployment)
            if plan is None:
                await find_deployment(conn, deployment)  # NotFound names an unknown deployment
                raise NotFound(f"deployment {deployment} never had a rollout plan")
        return plan

    async def pause(self, deployment: str, *, actor: str, reason: str) -> RolloutPlan:
        return await self._hold(deployment, PlanState.PAUSED, actor=actor, reason=reason)

    async def resume(self, deployment: str, *, actor: str, reason: str) -> RolloutPlan:
        return await self._hold(deployment, PlanState.RUNNING, actor=actor, reason=reason)

    async def _hold(self, deployment: str, state: PlanState, *, actor: str, reason: str) -> RolloutPlan:
        """Pause (the step is held) or resume (the step starts again: what was judged before the
        pause is not carried over the gap)."""
        wanted_from = PlanState.RUNNING if state is PlanState.PAUSED else PlanState.PAUSED
        async with self.db.transaction() as conn:
            plan = await self._locked_active(conn, deployment)
            if plan.state is not wanted_from:
                raise FailedPrecondition(
                    f"the rollout plan of {deployment} is {plan.state}, not {wanted_from}"
                )
            updated = await repo.update_plan(
                conn,
                plan_id=plan.plan_id,
                state=state,
                step_index=plan.step_index,
                new_step=state is PlanState.RUNNING,
                outcome=f"paused by {actor}" if state is PlanState.PAUSED else "",
                judgement=None,
            )
            await audit.record(
                conn,
                actor=actor,
                action="rollout.pause" if state is PlanState.PAUSED else "rollout.resume",
                entity_type="rollout_plan",
                entity_id=deployment,
                after={"plan_id": plan.plan_id, "step": plan.step_index + 1, "weight": plan.weight},
                reason=reason,
            )
        return updated

    async def abort(self, deployment: str, *, actor: str, reason: str) -> RolloutPlan:
        async with self.db.transaction() as conn:
            plan = await self._locked_active(conn, deployment)
            ended = await self._end(
                conn,
                plan,
                PlanState.ABORTED,
                action="rollout.abort",
                actor=actor,
                outcome=f"aborted by {actor}" + (f": {reason}" if reason else ""),
                judgement=None,
            )
        self.broadcast.kick()
        return ended

    async def _locked_active(self, conn: repo.Conn, deployment: str) -> RolloutPlan:
        found = await repo.get_plan(conn, deployment=deployment, active_only=True)
        plan = await repo.lock_plan(conn, plan_id=found.plan_id) if found else None
        if plan is None or not plan.state.active:
            await find_deployment(conn, deployment)
            raise FailedPrecondition(f"deployment {deployment} has no active rollout plan")
        return plan

    async def _end(
        self,
        conn: repo.Conn,
        plan: RolloutPlan,
        state: PlanState,
        *,
        action: str,
        actor: str,
        outcome: str,
        judgement: Judgement | None,
    ) -> RolloutPlan:
        """Route back to the baseline and end the plan (rolled back or aborted), in the caller's
        transaction, the plan's row already locked."""
        ended = await repo.update_plan(
            conn,
            plan_id=plan.plan_id,
            state=state,
            step_index=plan.step_index,
            new_step=False,
            outcome=outcome,
            judgement=judgement,
        )
        current = await find_deployment(conn, plan.deployment, for_update=True)
        await change_routes(
            conn,
            current,
            baseline_routes(current, plan),
            action=action,
            acknowledge_incompatible=True,  # the baseline's signature is what consumers had
            actor=actor,
            reason=f"rollout plan {plan.plan_id}: {outcome}",
            during_plan=True,
        )
        ROLLOUT_OUTCOME.labels(plan.deployment, state.value).inc()
        with contextlib.suppress(KeyError):
            ROLLOUT_STEP.remove(plan.deployment)
        return ended

    # ---- the driver's judgement ---------------------------------------------------------------

    async def drive_once(self) -> None:
        """Judge every running plan once; one plan's failure does not stop the others."""
        async with self.db.connection() as conn:
            plans = await repo.running_plans(conn)
        for plan in plans:
            try:
                await self._drive(plan)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                event(
                    log,
                    "rollout.judgement_failed",
                    level=logging.WARNING,
                    deployment=plan.deployment,
                    plan_id=plan.plan_id,
                    error=f"{type(exc).__name__}: {exc}",
                )

    async def _drive(self, plan: RolloutPlan) -> None:
        ROLLOUT_STEP.labels(plan.deployment).set(plan.weight)
        now = dt.datetime.now(dt.UTC)
        elapsed = (now - plan.step_started_at).total_seconds()
        failed_load = await self._failed_load(plan)
        if elapsed < plan.warmup_s and not failed_load:
            return  # the step's first seconds are not evidence
        window = min(max(elapsed - plan.warmup_s, MIN_WINDOW_S), self.live.live_window_s)
        # Covering the step: a window found "to within the history's spacing" (5 s) could start
        # after the step did and miss its first evidence.
        figures = await self.live.live_metrics(plan.deployment, window_s=window, covering=True)
        by_version = {v.version: v.total for v in figures.versions}
        candidate = by_version.get(plan.candidate, LiveFigures(buckets=[]))
        baseline = by_version.get(plan.baseline, LiveFigures(buckets=[]))
        # Agreement exists only while the candidate is mirrored to (the shadow step).
        guards = [
            g for g in parse_guards(plan.guards) if plan.weight == 0 or g.metric not in SHADOW_ONLY_METRICS
        ]
        verdict = judge(
            guards,
            candidate,
            baseline,
            min_requests=plan.min_requests,
            step_elapsed_s=elapsed,
            step_duration_s=plan.step_duration_s,
        )
        judgement = Judgement(
            readings=verdict.readings,
            candidate_requests=served(candidate),
            baseline_requests=served(baseline),
            window_s=window,
            at=now,
            driver=self.replica,
        )
        if failed_load:
            await self._act(
                plan, Decision.ROLL_BACK, judgement, f"the candidate failed to load: {failed_load}"
            )
        elif verdict.decision is Decision.ROLL_BACK and verdict.failed is not None:
            failed = verdict.failed
            why = (
                f"guard `{failed.guard}` failed: {failed.metric} = {failed.value:.4g}, threshold "
                f"{failed.op} {failed.threshold:g} ({describe(verdict, judgement)})"
            )
            await self._act(plan, Decision.ROLL_BACK, judgement, why)
        elif verdict.decision is Decision.ADVANCE:
            await self._act(plan, Decision.ADVANCE, judgement, describe(verdict, judgement))
        else:
            async with self.db.connection() as conn:
                await repo.record_judgement(conn, plan_id=plan.plan_id, judgement=judgement)

    async def _failed_load(self, plan: RolloutPlan) -> str:
        """A live worker that reports the candidate FAILED (after its retries): the step can never
        gather evidence there, and the version is broken as far as this deployment can tell."""
        async with self.db.connection() as conn:
            workers = await repo.list_workers(
                conn, live_within=self.heartbeat_ttl, deployment=plan.deployment
            )
        for worker in workers:
            if not worker.live:
                continue
            for status in worker.deployments:
                if status.deployment != plan.deployment:
                    continue
                for loaded in status.versions:
                    if loaded.version == plan.candidate and loaded.state == VersionState.FAILED:
                        return f"{worker.worker_id}: {loaded.last_error or 'no error given'}"
        return ""

    async def _act(self, plan: RolloutPlan, decision: Decision, judgement: Judgement, why: str) -> None:
        """Advance or roll back, if the plan still stands where it was judged."""
        async with self.db.transaction() as conn:
            locked = await repo.lock_plan(conn, plan_id=plan.plan_id)
            if (
                locked is None
                or locked.state is not PlanState.RUNNING
                or locked.step_index != plan.step_index
            ):
                return  # paused, aborted or moved since the judgement: judged again next round
            actor = f"rollout-driver@{self.replica}"
            if decision is Decision.ROLL_BACK:
                await self._end(
                    conn,
                    locked,
                    PlanState.ROLLED_BACK,
                    action="rollout.rollback",
                    actor=actor,
                    outcome=why,
                    judgement=judgement,
                )
                event(log, "rollout.rolled_back", level=logging.WARNING, deployment=plan.deployment, why=why)
            else:
                await self._advance(conn, locked, judgement, actor=actor, why=why)
        self.broadcast.kick()

    async def _advance(
        self, conn: repo.Conn, plan: RolloutPlan, judgement: Judgement, *, actor: str, why: str
    ) -> None:
        following = plan.step_index + 1
        weight = plan.steps[following]
        promoted = weight == 100
        await repo.update_plan(
            conn,
            plan_id=plan.plan_id,
            state=PlanState.SUCCEEDED if promoted else PlanState.RUNNING,
            step_index=following,
            new_step=True,
            outcome="promoted: " + why if promoted else "",
            judgement=judgement,
        )
        reason = (
            f"rollout plan {plan.plan_id}: step {following + 1} of {len(plan.steps)}, {plan.candidate} at "
            f"{weight}%; step {plan.step_index + 1} held: {why}"
        )
        current = await find_deployment(conn, plan.deployment, for_update=True)
        await change_routes(
            conn,
            current,
            step_routes(current, plan, weight),
            action="rollout.promote" if promoted else "rollout.step",
            acknowledge_incompatible=True,  # acknowledged (or not needed) when the plan started
            actor=actor,
            reason=reason,
            during_plan=True,
        )
        if promoted and current.follow_alias:
            # As PromoteVersion: the followed alias moves too, and its other followers switch with it.
            await self.aliases.move_in(
                conn, current.model_id, current.follow_alias, plan.candidate, actor=actor, reason=reason
            )
        if promoted:
            ROLLOUT_OUTCOME.labels(plan.deployment, PlanState.SUCCEEDED.value).inc()
            with contextlib.suppress(KeyError):
                ROLLOUT_STEP.remove(plan.deployment)
        else:
            ROLLOUT_STEP.labels(plan.deployment).set(weight)
        event(log, "rollout.advanced", deployment=plan.deployment, step=following + 1, weight=weight)


# The driver judges at most this often, however fast heartbeats arrive (a fleet sends one per
# worker-second).
MIN_DRIVE_INTERVAL_S = 0.25


class PlanDriver:
    """Runs `RolloutPlans.drive_once` while this replica holds the driver lock, on a connection of
    its own (the lock lives as long as that session): as soon as a heartbeat with counters reaches
    this replica (`evidence`; at most every MIN_DRIVE_INTERVAL_S), and at least every `interval_s`
    (heartbeats that land on other replicas reach the database all the same)."""

    def __init__(
        self, plans: RolloutPlans, url: str, *, interval_s: float, evidence: asyncio.Event | None = None
    ) -> None:
        self.plans = plans
        self.url = url
        self.interval_s = interval_s
        self.evidence = evidence or asyncio.Event()
        self.leading = False

    async def run(self) -> None:
        delay = self.interval_s
        while True:
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: try again
                event(log, "rollout.driver_lost", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                delay = self.interval_s

    async def _lead(self) -> None:
        conn = await asyncpg.connect(self.url, timeout=5)
        try:
            while True:
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", DRIVER_LOCK_KEY):
                    break
                await asyncio.sleep(self.interval_s)
            self.leading = True
            event(log, "rollout.driver_leading", replica=self.plans.replica)
            while True:
                started = time.monotonic()
                self.evidence.clear()
                await self.plans.drive_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.evidence.wait(), self.interval_s)
                await asyncio.sleep(max(0.0, MIN_DRIVE_INTERVAL_S - (time.monotonic() - started)))
                await conn.fetchval("SELECT 1")  # still holding the session (and so the lock)?
        finally:
            self.leading = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
