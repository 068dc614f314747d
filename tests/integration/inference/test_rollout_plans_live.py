"""Rollout plans on real evidence: a registry on real PostgreSQL, a real worker process serving the
real MiniLM under steady closed-loop load, and the plan judged on the live figures the worker's
heartbeats carry. A good version (int8 after fp32) steps to 100% with 0 failed requests; a version
that answers 250 ms slower and one that fails every third forward pass (tests/fault_loader.py: the
same weights and signature) are rolled back within their first step, the guard named, and so is one
whose vectors live in another space (another model of the same 384 dimensions: drift)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from closed_loop_support import live_registry, load, seed_text
from support import REPO_ROOT, ServerProcess
from worker_support import registry_version

from modelyard.api import registry_pb2 as rpb
from modelyard.client import InferenceClient, ModelyardError, RegistryClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# The median, not the tail: on this 2-core machine, with the load generator beside the worker, the
# int8 version's p99 measured 1.5-3.4x fp32's (its p50 0.4-0.6x), so a p99 guard holds it back,
# rightly on that evidence (docs/benchmarks.md). p50_ratio still catches a version 250 ms slower.
GUARDS = ["error_rate <= 0.01", "p50_ratio <= 1.5", "drift <= 0.2"]


def faulty_copy(minilm: Path, target: Path, **faults: float) -> Path:
    shutil.copytree(minilm, target)
    (target / "faults.json").write_text(json.dumps(faults))
    return target


async def run_plan(client: RegistryClient, version: str, step_duration_s: float) -> rpb.RolloutPlan:
    await client.start_rollout_plan(
        rpb.StartRolloutPlanRequest(
            deployment="text",
            version=version,
            steps=[25, 50, 100],
            step_duration_s=step_duration_s,
            guards=GUARDS,
            min_requests=30,
            # A version just loaded answers its first requests untraced (README, known gaps).
            warmup_s=2.0,
        )
    )
    deadline = time.monotonic() + 240
    while True:
        plan = await client.get_rollout_plan(rpb.GetRolloutPlanRequest(deployment="text"))
        if plan.state not in (rpb.ROLLOUT_PLAN_RUNNING, rpb.ROLLOUT_PLAN_PAUSED):
            return plan
        assert time.monotonic() < deadline, plan
        await asyncio.sleep(0.2)


async def test_good_versions_roll_out_and_bad_ones_roll_back_on_live_evidence(
    database_url: str, minilm_dir: Path, tmp_path: Path
) -> None:
    slow = faulty_copy(minilm_dir, tmp_path / "slow", delay_s=0.25)
    failing = faulty_copy(minilm_dir, tmp_path / "failing", fail_every=3)
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    other = build_tiny_sentence_transformer(tmp_path / "other", seed=3, hidden=384)
    versions = [
        registry_version(minilm_dir, "1.0.0", model_id="minilm"),
        registry_version(minilm_dir, "1.1.0", model_id="minilm", quantization="int8-dynamic"),
        registry_version(slow, "1.2.0", model_id="minilm", loader="faulty-sentence-transformers"),
        registry_version(failing, "1.3.0", model_id="minilm", loader="faulty-sentence-transformers"),
        registry_version(other, "1.4.0", model_id="minilm"),
    ]
    server = live_registry(database_url)
    await server.start()
    worker: ServerProcess | None = None
    try:
        await seed_text(server.address, versions)
        worker = ServerProcess(
            [
                str(REPO_ROOT / "tests" / "fault_worker.py"), "--port", "0", "--metrics-port", "0",
                "--registry", server.address, "--deployment", "text", "--cache-dir", str(tmp_path / "cache"),
                "--grace-period-s", "5",
            ],
            timeout=180,
        )  # fmt: skip
        async with RegistryClient(server.address) as client:
            async with InferenceClient(worker.address) as probe:
                deadline = time.monotonic() + 180
                while True:
                    with contextlib.suppress(ModelyardError):
                        if (await probe.embed_texts("text", ["ready?"])).version == "1.0.0":
                            break
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)

            # The deployment's drift reference (the worker's first 2 x 200 items) from 1.0.0 alone.
            async with load([worker.address]) as warming:
                while sum(warming.versions.values()) < 500:
                    await asyncio.sleep(0.2)

            # A good version: steps to 100% by itself, nothing fails.
            async with load([worker.address]) as steady:
                good = await run_plan(client, "1.1.0", step_duration_s=4.0)
                await asyncio.sleep(1.0)  # requests after the promotion
            assert good.state == rpb.ROLLOUT_PLAN_SUCCEEDED, good.outcome
            print("int8 plan, last step's guards:", [(g.guard, round(g.value, 3)) for g in good.guards])
            assert steady.failures == Counter(), steady.failures
            assert steady.versions["1.1.0"] > 0 and steady.versions["1.0.0"] > 0
            events = (await client.list_audit_events(rpb.ListAuditEventsRequest(page_size=100))).events
            actions = sorted((e.id, e.action) for e in events if e.action.startswith("rollout."))
            assert [a for _, a in actions] == ["rollout.start", "rollout.step", "rollout.promote"]

            # Slower by 250 ms a pass: the p50 ratio fails within the first (60 s) step.
            async with load([worker.address]) as under_slow:
                started = time.monotonic()
                slowed = await run_plan(client, "1.2.0", step_duration_s=60.0)
                took = time.monotonic() - started
            assert slowed.state == rpb.ROLLOUT_PLAN_ROLLED_BACK, slowed.outcome
            assert slowed.step_index == 0 and took < 60, took
            assert "guard `p50_ratio <= 1.5` failed" in slowed.outcome, slowed.outcome
            assert under_slow.failures == Counter(), "a slow version fails nothing, it is only slow"

            # Every third pass fails: the error rate fails within the first step.
            async with load([worker.address]) as under_failing:
                broken = await run_plan(client, "1.3.0", step_duration_s=60.0)
            assert broken.state == rpb.ROLLOUT_PLAN_ROLLED_BACK, broken.outcome
            assert broken.step_index == 0
            assert "guard `error_rate <= 0.01` failed" in broken.outcome, broken.outcome
            assert set(under_failing.failures) == {"INTERNAL"}, under_failing.failures
            # Another model of the same dimension: nothing fails and it is fast, but its vectors are
            # not comparable with what consumers stored.
            async with load([worker.address]) as under_other:
                drifted = await run_plan(client, "1.4.0", step_duration_s=60.0)
            assert drifted.state == rpb.ROLLOUT_PLAN_ROLLED_BACK, drifted.outcome
            assert drifted.step_index == 0
            assert "guard `drift <= 0.2` failed" in drifted.outcome, drifted.outcome
            print("rolled back:", slowed.outcome, broken.outcome, drifted.outcome, sep="\n  ")
            assert under_other.failures == Counter()
            deployment = await client.get_deployment(rpb.GetDeploymentRequest(name="text"))
            assert [(r.version, r.weight) for r in deployment.routes] == [("1.1.0", 100)]
    finally:
        if worker is not None:
            worker.kill()
        await server.stop()
