"""Rollout plans on a real registry and PostgreSQL, judged on live figures that heartbeats carry
(workers simulated by `TrafficWorker`: traffic split by the current routes, a set latency and error
share per version): a good candidate steps to 100% by itself, a slow or failing one is rolled back
within its first step with the guard named, operators pause, resume and abort, bad plans are refused
with nothing changed, and a registry replica SIGKILLed mid-rollout hands the plan to another."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from live_support import TrafficWorker
from registry_support import Stub, deploy, register
from support import single_error_line, spawn_registry

from modelyard.api import registry_pb2 as pb
from modelyard.cli.errors import EXIT_REFUSED
from modelyard.client import ModelyardError, RegistryClient
from modelyard.client.channel import open_channel
from modelyard.client.settings import ClientSettings
from modelyard.common.auth import token_verifier
from modelyard.common.latency import BUCKET_COUNT
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings

pytestmark = pytest.mark.timeout(180)

FAST = {
    "live_window_s": 30.0,
    "live_sample_interval_s": 0.2,
    "rollout_driver_interval_s": 0.2,
}
GUARDS = ["error_rate <= 0.02", "p99_ratio <= 1.5"]


@contextlib.asynccontextmanager
async def serving(database_url: str, **overrides: object) -> AsyncIterator[RegistryServer]:
    settings: dict[str, Any] = {**FAST, **overrides}
    server = RegistryServer(
        RegistrySettings(
            database_url=database_url, port=0, metrics_port=None, poll_interval_s=0.5, **settings
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def seed(address: str, token: str = "") -> None:
    async with open_channel(address, ClientSettings(token=token or None)) as channel:
        stub = Stub(channel)
        for version in ("1.0.0", "1.1.0"):
            await register(stub, version)
        await register(stub, "2.0.0", dim=768)
        await deploy(stub, "text", {"1.0.0": 100})


@contextlib.asynccontextmanager
async def traffic(worker: TrafficWorker) -> AsyncIterator[TrafficWorker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for_end(client: RegistryClient, within_s: float = 60.0) -> pb.RolloutPlan:
    deadline = time.monotonic() + within_s
    while True:
        plan = await client.get_rollout_plan(pb.GetRolloutPlanRequest(deployment="text"))
        if plan.state not in (pb.ROLLOUT_PLAN_RUNNING, pb.ROLLOUT_PLAN_PAUSED):
            return plan
        assert time.monotonic() < deadline, plan
        await asyncio.sleep(0.1)


async def rollout_audit(client: RegistryClient) -> list[pb.AuditEvent]:
    events = (await client.list_audit_events(pb.ListAuditEventsRequest(page_size=200))).events
    return sorted((e for e in events if e.action.startswith("rollout.")), key=lambda e: e.id)


def start_request(**overrides: object) -> pb.StartRolloutPlanRequest:
    fields: dict[str, object] = {
        "deployment": "text",
        "version": "1.1.0",
        "steps": [20, 50, 100],
        "step_duration_s": 1.5,
        "guards": GUARDS,
        "min_requests": 40,
        **overrides,
    }
    return pb.StartRolloutPlanRequest(**fields)  # type: ignore[arg-type]


async def test_a_good_candidate_steps_to_100_percent_and_every_step_is_audited(database_url: str) -> None:
    async with serving(database_url) as server, RegistryClient(server.address) as client:
        await seed(server.address)
        worker = TrafficWorker(client, worker_id="w1", latency_s={"1.0.0": 0.004, "1.1.0": 0.004})
        async with traffic(worker):
            started = await client.start_rollout_plan(start_request())
            assert (started.baseline_version, started.candidate_version) == ("1.0.0", "1.1.0")
            routes = (await client.get_deployment(pb.GetDeploymentRequest(name="text"))).routes
            assert {r.version: r.weight for r in routes} == {"1.0.0": 80, "1.1.0": 20}
            ended = await wait_for_end(client)
        assert ended.state == pb.ROLLOUT_PLAN_SUCCEEDED, ended.outcome
        assert ended.step_index == 2 and ended.outcome.startswith("promoted")
        assert all(g.judged and g.holds for g in ended.guards), ended.guards
        assert ended.candidate_requests >= 40 and ended.driver
        deployment = await client.get_deployment(pb.GetDeploymentRequest(name="text"))
        assert [(r.version, r.weight) for r in deployment.routes] == [("1.1.0", 100)]
        audit = await rollout_audit(client)
        assert [e.action for e in audit] == ["rollout.start", "rollout.step", "rollout.promote"]
        weights = [{r["version"]: r["weight"] for r in json.loads(e.after_json)["routes"]} for e in audit]
        assert weights == [{"1.0.0": 80, "1.1.0": 20}, {"1.0.0": 50, "1.1.0": 50}, {"1.1.0": 100}]
        assert "`p99_ratio <= 1.5`: 1" in audit[1].reason, audit[1].reason
        assert all(e.actor.startswith("rollout-driver@") for e in audit[1:])


@pytest.mark.parametrize(
    ("worker_kwargs", "guard", "metric"),
    [
        ({"latency_s": {"1.0.0": 0.004, "1.1.0": 0.2}}, "p99_ratio <= 1.5", "p99_ratio"),
        ({"error_share": {"1.1.0": 0.25}, "error_code": "UNAVAILABLE"}, "error_rate <= 0.02", "error_rate"),
    ],
    ids=["slower", "failing"],
)
async def test_a_bad_candidate_is_rolled_back_within_its_first_step_naming_the_guard(
    database_url: str, worker_kwargs: dict[str, object], guard: str, metric: str
) -> None:
    async with serving(database_url) as server, RegistryClient(server.address) as client:
        await seed(server.address)
        worker = TrafficWorker(client, worker_id="w1", **worker_kwargs)  # type: ignore[arg-type]
        async with traffic(worker):
            started = await client.start_rollout_plan(start_request(step_duration_s=30.0))
            ended = await wait_for_end(client, within_s=20.0)
        assert ended.state == pb.ROLLOUT_PLAN_ROLLED_BACK
        assert ended.step_index == 0, "rolled back within the first step"
        took = ended.finished_at.ToDatetime() - started.step_started_at.ToDatetime()
        assert took.total_seconds() < 10, took
        assert f"guard `{guard}` failed: {metric} = " in ended.outcome, ended.outcome
        [failed] = [g for g in ended.guards if g.guard == guard]
        assert failed.judged and not failed.holds and not failed.value <= failed.threshold
        deployment = await client.get_deployment(pb.GetDeploymentRequest(name="text"))
        assert [(r.version, r.weight) for r in deployment.routes] == [("1.0.0", 100)]
        audit = await rollout_audit(client)
        assert [e.action for e in audit] == ["rollout.start", "rollout.rollback"]
        assert guard in audit[-1].reason and f"threshold {failed.op} {failed.threshold:g}" in audit[-1].reason


async def test_a_candidate_that_fails_to_load_is_rolled_back(database_url: str) -> None:
    async with serving(database_url) as server, RegistryClient(server.address) as client:
        await seed(server.address)
        worker = TrafficWorker(client, worker_id="w1", failed_loads={"1.1.0": "checkpoint hash mismatch"})
        async with traffic(worker):
            await client.start_rollout_plan(start_request(step_duration_s=30.0))
            ended = await wait_for_end(client, within_s=20.0)
        assert ended.state == pb.ROLLOUT_PLAN_ROLLED_BACK
        assert "failed to load: w1: checkpoint hash mismatch" in ended.outcome, ended.outcome


async def test_pause_holds_the_step_resume_restarts_it_abort_routes_back(database_url: str) -> None:
    async with serving(database_url) as server, RegistryClient(server.address) as client:
        await seed(server.address)
        async with traffic(TrafficWorker(client, worker_id="w1")):
            await client.start_rollout_plan(start_request(step_duration_s=1.0, min_requests=10))
            paused = await client.pause_rollout_plan(pb.RolloutPlanControlRequest(deployment="text"))
            assert paused.state == pb.ROLLOUT_PLAN_PAUSED
            await asyncio.sleep(2.5)  # more than a step: nothing moves while paused
            held = await client.get_rollout_plan(pb.GetRolloutPlanRequest(deployment="text"))
            assert (held.state, held.step_index) == (pb.ROLLOUT_PLAN_PAUSED, 0)
            # While a plan drives the weights, nobody else may change them.
            with pytest.raises(ModelyardError) as refused:
                await client.set_routes(
                    pb.SetRoutesRequest(name="text", routes=[pb.Route(version="1.1.0", weight=100)])
                )
            assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "rollout-abort text" in refused.value.message
            resumed = await client.resume_rollout_plan(pb.RolloutPlanControlRequest(deployment="text"))
            assert resumed.state == pb.ROLLOUT_PLAN_RUNNING
            assert resumed.step_started_at.ToDatetime() > held.step_started_at.ToDatetime()
            deadline = time.monotonic() + 20
            while (await client.get_rollout_plan(pb.GetRolloutPlanRequest(deployment="text"))).step_index < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            aborted = await client.abort_rollout_plan(
                pb.RolloutPlanControlRequest(deployment="text", reason="change freeze")
            )
        assert aborted.state == pb.ROLLOUT_PLAN_ABORTED and "change freeze" in aborted.outcome
        deployment = await client.get_deployment(pb.GetDeploymentRequest(name="text"))
        assert [(r.version, r.weight) for r in deployment.routes] == [("1.0.0", 100)]
        actions = [e.action for e in await rollout_audit(client)]
        assert actions[:3] == ["rollout.start", "rollout.pause", "rollout.resume"]
        assert actions[-1] == "rollout.abort" and "rollout.step" in actions
        for call in (client.pause_rollout_plan, client.abort_rollout_plan):
            with pytest.raises(ModelyardError) as none:
                await call(pb.RolloutPlanControlRequest(deployment="text"))
            assert none.value.code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("overrides", "code", "message"),
    [
        ({"guards": ["latency <= 3"]}, grpc.StatusCode.INVALID_ARGUMENT, "unknown guard metric 'latency'"),
        ({"guards": ["error_rate =< 0.01"]}, grpc.StatusCode.INVALID_ARGUMENT, "invalid guard"),
        ({"guards": ["drift <= 0.2", "drift<=0.2"]}, grpc.StatusCode.INVALID_ARGUMENT, "given twice"),
        ({"steps": [20, 10, 100]}, grpc.StatusCode.INVALID_ARGUMENT, "must increase strictly"),
        ({"steps": [20, 50]}, grpc.StatusCode.INVALID_ARGUMENT, "must end at 100"),
        ({"steps": [0, 100]}, grpc.StatusCode.INVALID_ARGUMENT, "1..100"),
        ({"step_duration_s": 0.0}, grpc.StatusCode.INVALID_ARGUMENT, "step_duration_s"),
        ({"min_requests": -1}, grpc.StatusCode.INVALID_ARGUMENT, "min_requests"),
        ({"version": "1.0.0"}, grpc.StatusCode.FAILED_PRECONDITION, "already carries"),
        ({"version": "9.9.9"}, grpc.StatusCode.NOT_FOUND, "9.9.9"),
        ({"version": "2.0.0"}, grpc.StatusCode.FAILED_PRECONDITION, "acknowledge_incompatible"),
        ({"deployment": "nope"}, grpc.StatusCode.NOT_FOUND, "unknown deployment 'nope'"),
    ],
)
async def test_bad_plans_are_refused_and_change_nothing(
    database_url: str, overrides: dict[str, object], code: grpc.StatusCode, message: str
) -> None:
    async with serving(database_url) as server, RegistryClient(server.address) as client:
        await seed(server.address)
        before = await client.get_deployment(pb.GetDeploymentRequest(name="text"))
        with pytest.raises(ModelyardError) as refused:
            await client.start_rollout_plan(start_request(**overrides))
        assert refused.value.code == code and message in refused.value.message, refused.value.message
        after = await client.get_deployment(pb.GetDeploymentRequest(name="text"))
        assert (after.revision, list(after.routes)) == (before.revision, list(before.routes))
        with pytest.raises(ModelyardError) as none:
            await client.get_rollout_plan(pb.GetRolloutPlanRequest(deployment="text"))
        assert none.value.code == grpc.StatusCode.NOT_FOUND


async def test_one_plan_per_deployment_and_an_acknowledged_incompatible_one_starts(database_url: str) -> None:
    async with serving(database_url) as server, RegistryClient(server.address) as client:
        await seed(server.address)
        await client.start_rollout_plan(start_request(version="2.0.0", acknowledge_incompatible=True))
        with pytest.raises(ModelyardError) as second:
            await client.start_rollout_plan(start_request())
        assert second.value.code == grpc.StatusCode.ALREADY_EXISTS
        plan = await client.get_rollout_plan(pb.GetRolloutPlanRequest(deployment="text"))
        assert plan.candidate_version == "2.0.0" and plan.state == pb.ROLLOUT_PLAN_RUNNING


async def test_a_replica_killed_mid_rollout_hands_the_plan_to_the_other(database_url: str) -> None:
    """Two registry processes on one database; the one driving is SIGKILLed at step 2 of 4. The other
    takes the lock and continues from that step; no step is taken twice or by both."""
    fast = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    replicas = [spawn_registry(database_url, extra=fast) for _ in range(2)]
    try:
        await seed(replicas[0].address)
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(RegistryClient(r.address)) for r in replicas]
            # Heartbeats and reads go to the replica that stays: which one that is, is known later,
            # so each replica gets its own traffic source; both report the same worker's counters.
            worker = TrafficWorker(clients[0], worker_id="w1", rate=300)
            task = asyncio.create_task(worker.run())
            await clients[0].start_rollout_plan(
                start_request(steps=[10, 30, 60, 100], step_duration_s=1.5, min_requests=20)
            )
            deadline = time.monotonic() + 30
            while True:
                plan = await clients[0].get_rollout_plan(pb.GetRolloutPlanRequest(deployment="text"))
                if plan.step_index >= 1:
                    break
                assert time.monotonic() < deadline, plan
                await asyncio.sleep(0.05)
            driver = plan.driver
            index = next(i for i, r in enumerate(replicas) if f":{r.proc.pid}" in driver)
            replicas[index].kill()
            survivor = clients[1 - index]
            worker.client = survivor
            killed_at_step = plan.step_index
            ended = await wait_for_end(survivor, within_s=60)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert ended.state == pb.ROLLOUT_PLAN_SUCCEEDED, ended.outcome
            audit = await rollout_audit(survivor)
        steps = [e for e in audit if e.action in ("rollout.step", "rollout.promote")]
        weights = [
            json.loads(e.after_json)["routes"][-1 if e.action == "rollout.promote" else 1] for e in steps
        ]
        assert [w["weight"] for w in weights] == [30, 60, 100], "each step once, in order"
        actors = [e.actor for e in steps]
        survivor_pid = replicas[1 - index].proc.pid
        assert all(a.endswith(f":{replicas[index].proc.pid}") for a in actors[:killed_at_step])
        assert all(a.endswith(f":{survivor_pid}") for a in actors[killed_at_step:]), actors
        assert ended.driver.endswith(f":{survivor_pid}")
    finally:
        for r in replicas:
            r.kill()


async def modelyard(address: str, *args: str) -> tuple[int, str, str]:
    """The real CLI in its own process (the registry runs on this event loop: never block it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelyard.cli.main", "--registry", address, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_starts_shows_controls_and_waits_for_a_plan(database_url: str) -> None:
    async with serving(database_url) as server, RegistryClient(server.address) as client:
        await seed(server.address)
        code, _, err = await modelyard(
            server.address, "deployments", "rollout", "text", "1.1.0", "--guard", "p99 <= 2"
        )
        assert code == EXIT_REFUSED and "unknown guard metric 'p99'" in single_error_line(err)
        async with traffic(TrafficWorker(client, worker_id="w1")):
            code, out, err = await modelyard(
                server.address, "deployments", "rollout", "text", "1.1.0", "--steps", "30,100",
                "--step-duration", "5m", "--guard", "error_rate <= 0.02", "--guard", "p95_ratio<=1.5",
                "--min-requests", "20",
            )  # fmt: skip
            assert code == 0, err
            assert "1.0.0 -> 1.1.0 on text" in out and "[30] 100 %" in out and "300 s" in out
            code, out, err = await modelyard(server.address, "deployments", "status", "text")
            assert code == 0, err
            assert "guards over the step's window" in out and "p95_ratio <= 1.5" in out, out
            code, out, err = await modelyard(
                server.address, "deployments", "rollout-status", "text", "--json"
            )
            assert code == 0, err
            assert json.loads(out)["plan"]["candidate_version"] == "1.1.0"
            for control, shown in [("pause", "paused"), ("resume", "running"), ("abort", "aborted")]:
                code, out, err = await modelyard(server.address, "deployments", f"rollout-{control}", "text")
                assert code == 0 and f"state        {shown}" in out, (control, out, err)
            code, out, err = await modelyard(
                server.address, "deployments", "rollout", "text", "1.1.0", "--steps", "50,100",
                "--step-duration", "1s", "--guard", "error_rate <= 0.02", "--min-requests", "10", "--wait",
            )  # fmt: skip
            assert code == 0, err
            assert "succeeded (promoted" in out, out
        assert (await wait_for_end(client)).state == pb.ROLLOUT_PLAN_SUCCEEDED


async def test_with_tokens_only_admins_drive_plans_and_bad_drift_counts_are_refused(
    database_url: str,
) -> None:
    """As users deploy it: readers see plans, only admins start or control them; a worker's
    heartbeat with malformed drift histograms is refused whole and changes nothing."""
    tokens = {
        "admin_tokens": "ops:admin-secret",
        "reader_tokens": "dash:read-secret",
        "worker_tokens": f"w1:{token_verifier('worker-secret')}",
    }
    async with serving(database_url, **tokens) as server:
        await seed(server.address, token="admin-secret")
        async with (
            RegistryClient(server.address, token="admin-secret") as admin,
            RegistryClient(server.address, token="read-secret") as reader,
            RegistryClient(server.address, token="worker-secret") as worker_client,
        ):
            for client, code in [
                (reader, grpc.StatusCode.PERMISSION_DENIED),
                (worker_client, grpc.StatusCode.PERMISSION_DENIED),
            ]:
                with pytest.raises(ModelyardError) as refused:
                    await client.start_rollout_plan(start_request())
                assert refused.value.code == code
            await admin.start_rollout_plan(start_request(step_duration_s=60.0))
            plan = await reader.get_rollout_plan(pb.GetRolloutPlanRequest(deployment="text"))
            assert plan.state == pb.ROLLOUT_PLAN_RUNNING and plan.created_by == "ops"
            for call in (reader.pause_rollout_plan, reader.abort_rollout_plan):
                with pytest.raises(ModelyardError) as refused:
                    await call(pb.RolloutPlanControlRequest(deployment="text"))
                assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert (
                await admin.pause_rollout_plan(pb.RolloutPlanControlRequest(deployment="text"))
            ).state == (pb.ROLLOUT_PLAN_PAUSED)

            worker = TrafficWorker(worker_client, worker_id="w1")
            await worker.beat()
            good = worker_client.report_status
            for drift, message in [
                (pb.DriftCounts(signal="vibes", reference=[1] * 20, live=[1] * 20), "unknown drift signal"),
                (pb.DriftCounts(signal="output_cosine", reference=[1] * 3, live=[1] * 20), "20 bins"),
                (pb.DriftCounts(signal="output_cosine", reference=[1] * 20, live=[-1] * 20), "negative"),
            ]:
                status = pb.WorkerStatus(worker_id="w1", state="serving")
                status.counters.started_at.FromNanoseconds(worker.started_at_ns)
                status.counters.uptime_s = 10.0
                status.counters.versions.add(
                    deployment="text", version="1.0.0", since_s=0.0, requests=5, items=5,
                    latency_buckets=[0] * BUCKET_COUNT, drift=[drift],
                )  # fmt: skip
                with pytest.raises(ModelyardError) as refused:
                    await good(pb.ReportStatusRequest(status=status))
                assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
                assert message in refused.value.message and "nothing was stored" in refused.value.message
            workers = await admin.list_workers(pb.ListWorkersRequest(deployment="text"))
            assert [w.worker_id for w in workers.workers] == ["w1"], "the earlier good heartbeat stands"


@pytest.mark.parametrize(
    ("agreement", "ends"), [(0.99, pb.ROLLOUT_PLAN_SUCCEEDED), (0.6, pb.ROLLOUT_PLAN_ROLLED_BACK)]
)
async def test_a_shadow_step_mirrors_before_any_traffic_and_agreement_decides_it(
    database_url: str, agreement: float, ends: int
) -> None:
    async with serving(database_url) as server, RegistryClient(server.address) as client:
        await seed(server.address)
        worker = TrafficWorker(client, worker_id="w1", agreement={"1.1.0": agreement})
        async with traffic(worker):
            guards = [*GUARDS, "agreement >= 0.95"]
            started = await client.start_rollout_plan(start_request(shadow_percent=20, guards=guards))
            assert list(started.steps) == [0, 20, 50, 100] and started.shadow_percent == 20
            routes = (await client.get_deployment(pb.GetDeploymentRequest(name="text"))).routes
            assert [(r.version, r.weight, r.mirror_percent) for r in routes] == [
                ("1.0.0", 100, 0),
                ("1.1.0", 0, 20),
            ]
            ended = await wait_for_end(client)
        assert ended.state == ends, ended.outcome
        audit = await rollout_audit(client)
        if ends == pb.ROLLOUT_PLAN_ROLLED_BACK:
            assert (
                ended.step_index == 0 and "guard `agreement >= 0.95` failed: agreement = 0.6" in ended.outcome
            )
            assert [e.action for e in audit] == ["rollout.start", "rollout.rollback"]
            deployment = await client.get_deployment(pb.GetDeploymentRequest(name="text"))
            assert [(r.version, r.weight, r.mirror_percent) for r in deployment.routes] == [("1.0.0", 100, 0)]
            return
        assert [e.action for e in audit] == [
            "rollout.start",
            "rollout.step",
            "rollout.step",
            "rollout.promote",
        ]
        mirrors = [
            {r["version"]: r["mirror_percent"] for r in json.loads(e.after_json)["routes"]} for e in audit
        ]
        assert mirrors[0] == {"1.0.0": 0, "1.1.0": 20} and mirrors[1] == {"1.0.0": 0, "1.1.0": 0}
        assert "`agreement >= 0.95`: 0.99" in audit[1].reason, audit[1].reason
        assert all("agreement" not in e.reason for e in audit[2:]), (
            "agreement is judged in the shadow step only"
        )


async def test_shadow_plans_that_make_no_sense_are_refused(database_url: str) -> None:
    async with serving(database_url) as server, RegistryClient(server.address) as client:
        await seed(server.address)
        cases: list[tuple[dict[str, object], str]] = [
            ({"guards": ["agreement >= 0.9"]}, "needs a shadow step"),
            ({"shadow_percent": 101}, "shadow_percent is 101"),
            ({"shadow_percent": -5}, "shadow_percent is -5"),
        ]
        for overrides, message in cases:
            with pytest.raises(ModelyardError) as refused:
                await client.start_rollout_plan(start_request(**overrides))
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in refused.value.message
        assert not (await rollout_audit(client))
