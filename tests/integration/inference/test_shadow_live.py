"""Shadow traffic on real processes, with tokens on: a registry on real PostgreSQL, two worker
processes serving the real MiniLM under closed-loop load. `modelyard deployments shadow` mirrors 20%
of the requests to an int8 copy: callers only ever get 1.0.0's answers and none fails, while the
registry's live figures count the copies and their agreement with the primary (the cosine of the
two embeddings, near 1 for int8). The copies' latency is the shadow lane's (one thread under
SCHED_IDLE, which a saturated machine starves): latency guards belong to the canary steps. A rollout
plan whose shadow step mirrors to another model of the same dimension is rolled back on its
`agreement` guard before that model answers anyone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from closed_loop_support import live_registry, load, seed_text
from support import REPO_ROOT, ServerProcess
from worker_support import registry_version

from modelyard.api import registry_pb2 as rpb
from modelyard.client import ClientSettings, InferenceClient, ModelyardError, RegistryClient
from modelyard.common.auth import token_verifier

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ADMIN, READER, WORKER = "admin-secret", "reader-secret", "worker-secret"


async def modelyard(address: str, *args: str) -> tuple[int, str]:
    env = {**os.environ, "MODELYARD_TOKEN": ADMIN, "COLUMNS": "250"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelyard.cli.main", "--registry", address, *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def shadow_figures(client: RegistryClient, version: str) -> rpb.LiveFigures:
    live = await client.get_live_metrics(rpb.GetLiveMetricsRequest(deployment="text", window_s=60))
    return next((v.total for v in live.versions if v.version == version), rpb.LiveFigures())


async def test_shadow_traffic_is_mirrored_counted_and_never_answers_callers(
    database_url: str, minilm_dir: Path, tmp_path: Path
) -> None:
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    other = build_tiny_sentence_transformer(tmp_path / "other", seed=3, hidden=384)
    versions = [
        registry_version(minilm_dir, "1.0.0", model_id="minilm"),
        registry_version(minilm_dir, "1.1.0", model_id="minilm", quantization="int8-dynamic"),
        registry_version(other, "1.4.0", model_id="minilm"),
    ]
    server = live_registry(
        database_url, admin_tokens=f"ops:{ADMIN}", reader_tokens=f"app:{READER}",
        worker_tokens=f"w:{token_verifier(WORKER)}",
    )  # fmt: skip
    await server.start()
    workers: list[ServerProcess] = []
    try:
        await seed_text(server.address, versions, token=ADMIN)
        # The workers check their callers' tokens too (any reader may infer) and hold only their own.
        env = {"MODELYARD_TOKEN": WORKER, "MODELYARD_READER_TOKENS": f"app:{token_verifier(READER)}"}
        for index in range(2):
            args = [
                str(REPO_ROOT / "tests" / "fault_worker.py"), "--port", "0", "--metrics-port", "0",
                "--registry", server.address, "--deployment", "text",
                "--cache-dir", str(tmp_path / f"cache{index}"), "--grace-period-s", "5",
            ]  # fmt: skip
            workers.append(ServerProcess(args, env=env, timeout=180))
        addresses = [w.address for w in workers]
        async with RegistryClient(server.address, token=ADMIN) as client:
            deadline = time.monotonic() + 180
            for address in addresses:
                async with InferenceClient(address, settings=ClientSettings(token=READER)) as probe:
                    while True:
                        with contextlib.suppress(ModelyardError):
                            if (await probe.embed_texts("text", ["ready?"])).version == "1.0.0":
                                break
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.2)

            # Mirror 20% to the int8 copy, through the CLI as an operator would.
            code, out = await modelyard(server.address, "deployments", "shadow", "text", "1.1.0", "--percent", "20",
                                        "--wait")  # fmt: skip
            assert code == 0, out
            assert "1.1.0=0 (shadow 20%)" in out, out
            async with load(addresses, token=READER, max_texts=3) as steady:
                deadline = time.monotonic() + 120
                while (figures := await shadow_figures(client, "1.1.0")).agreement_items < 200:
                    assert time.monotonic() < deadline, figures
                    await asyncio.sleep(0.5)
                primary = await shadow_figures(client, "1.0.0")
            assert steady.failures == Counter(), steady.failures
            assert set(steady.versions) == {"1.0.0"}, "callers get only the primary's answers"
            assert figures.shadow_requests == figures.requests and figures.errors == {}
            share = figures.shadow_requests / primary.requests
            # 20% are drawn; on a saturated machine some are dropped at the in-flight bound instead.
            assert 0.05 < share < 0.3, (figures.shadow_requests, primary.requests)
            # int8 answers nearly as fp32: in one process, on these sentences, the mean cosine is 0.947.
            assert 0.92 < figures.agreement < 0.975, figures.agreement
            assert primary.shadow_requests == 0 and primary.agreement_items == 0
            print(
                f"shadow: {figures.shadow_requests} mirrored of {primary.requests}, agreement {figures.agreement:.4f}"
            )
            code, out = await modelyard(server.address, "deployments", "status", "text", "--window", "60")
            assert code == 0, out
            assert f"{figures.agreement:.3f}"[:4] in out and "mirrored" in out, out
            url = f"http://127.0.0.1:{workers[0].metrics_port}/metrics"
            scraped = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
            assert 'modelyard_shadow_duration_seconds_count{deployment="text"' in scraped

            # Stop mirroring; then a plan whose shadow step mirrors to another model: rolled back on
            # agreement before the model answers anybody.
            code, out = await modelyard(
                server.address, "deployments", "shadow", "text", "1.1.0", "--percent", "0"
            )
            assert code == 0 and "1.1.0=0 (staged)" in out, out
            async with load(addresses, token=READER, max_texts=3) as under_other:
                await client.start_rollout_plan(
                    rpb.StartRolloutPlanRequest(
                        deployment="text", version="1.4.0", steps=[50, 100], step_duration_s=60.0,
                        guards=["error_rate <= 0.01", "agreement >= 0.9"], min_requests=30, shadow_percent=20,
                    )
                )  # fmt: skip
                deadline = time.monotonic() + 60
                while (
                    plan := await client.get_rollout_plan(rpb.GetRolloutPlanRequest(deployment="text"))
                ).state in (
                    rpb.ROLLOUT_PLAN_RUNNING,
                    rpb.ROLLOUT_PLAN_PAUSED,
                ):
                    assert time.monotonic() < deadline, plan
                    await asyncio.sleep(0.2)
            assert plan.state == rpb.ROLLOUT_PLAN_ROLLED_BACK and plan.step_index == 0, plan.outcome
            assert "guard `agreement >= 0.9` failed: agreement = " in plan.outcome, plan.outcome
            assert under_other.failures == Counter() and set(under_other.versions) == {"1.0.0"}
            deployment = await client.get_deployment(rpb.GetDeploymentRequest(name="text"))
            assert [(r.version, r.weight, r.mirror_percent) for r in deployment.routes] == [
                ("1.0.0", 100, 0),
                ("1.1.0", 0, 0),
            ]
    finally:
        for worker in workers:
            worker.kill()
        await server.stop()
