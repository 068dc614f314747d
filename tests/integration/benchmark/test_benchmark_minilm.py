"""The real MiniLM through the whole service: fp32 (1.0.0) against int8 (1.1.0, staged for the run)
on the built-in suite, stored in the registry, compared with bootstrap intervals, gating promotion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from benchmark_support import TINY_DIM, Stack
from grpc import aio

from modelyard.api import benchmark_pb2 as bpb
from modelyard.api import registry_pb2 as rpb

DEPLOYMENT = "text-embedding"
# The first 100 queries and their 100 documents: ~10 s of fp32 MiniLM on two cores.
SUITE_OPTIONS = {"limit": "100", "batch_size": "16"}
SUITE = "stdlib-docstrings[limit=100]"
# Random ranking of 100 documents puts the right one in the top 10 a tenth of the time; a usable
# encoder finds it at least half the time.
GATE = "recall@10 >= 0.5"


def _metric(run: rpb.BenchmarkRun, name: str) -> float:
    return next(m.value for m in run.metrics if m.name == name)


async def _runs(stack: Stack, request: bpb.RunBenchmarkRequest) -> list[rpb.BenchmarkRun]:
    runs = [p.run async for p in stack.bench.RunBenchmark(request, timeout=300) if p.HasField("run")]
    assert [r.status for r in runs] == [rpb.RUN_STATUS_SUCCEEDED] * len(runs), [r.error for r in runs]
    return runs


async def test_minilm_fp32_vs_int8_quality_latency_storage_and_gate(
    stack: Stack, minilm_dir: Path, tiny_encoders: dict[str, Path]
) -> None:
    await stack.register(minilm_dir, "1.0.0", model_id="minilm", dim=384)
    await stack.register(minilm_dir, "1.1.0", model_id="minilm", dim=384, quantization="int8-dynamic")
    await stack.register(tiny_encoders["a"], "0.1.0", model_id="minilm", dim=TINY_DIM)  # untrained
    created = await stack.deploy(DEPLOYMENT, "minilm", {"1.0.0": 100})
    stack.spawn_worker(DEPLOYMENT)
    await stack.converged(DEPLOYMENT, created.revision)

    base: dict[str, Any] = {"deployment": DEPLOYMENT, "model_id": "minilm", "stage_unrouted": True}
    fp32, int8, untrained = await _runs(
        stack,
        bpb.RunBenchmarkRequest(
            versions=["1.0.0", "1.1.0", "0.1.0"], suite="stdlib-docstrings", options=SUITE_OPTIONS, **base
        ),
    )
    load = bpb.LoadSettings(concurrency=[1], requests=40, warmup_requests=3, batch_size=8)
    fp32_load, int8_load = await _runs(
        stack, bpb.RunBenchmarkRequest(versions=["1.0.0", "1.1.0"], suite="load", load=load, **base)
    )
    assert await stack.routes(DEPLOYMENT) == {"1.0.0": 100}  # the staged versions are gone again
    assert fp32.suite == SUITE and fp32.conditions["version.quantization"] == "none"
    assert int8.conditions["version.quantization"] == "int8-dynamic"
    assert int8.conditions["worker.device"] == "cpu" and int8.conditions["software.transformers"]

    # Quality: int8 stays within a small delta of fp32, per-query paired bootstrap.
    quality = await stack.bench.Compare(
        bpb.CompareRequest(baseline_run_id=fp32.run_id, candidate_run_id=int8.run_id)
    )
    by_name = {m.metric: m for m in quality.metrics}
    for name in ("recall@10", "mrr@10", "ndcg@10"):
        metric = by_name[name]
        assert metric.paired and metric.baseline_samples == 100
        assert abs(metric.delta) <= 0.05 and metric.ci_low >= -0.1 and metric.ci_high <= 0.1, metric
    assert _metric(fp32, "recall@10") > 0.5 > _metric(untrained, "recall@10")

    # Latency: the difference with its interval (no direction asserted: the machine is shared).
    latency = await stack.bench.Compare(
        bpb.CompareRequest(
            baseline_run_id=fp32_load.run_id, candidate_run_id=int8_load.run_id, export_format="markdown"
        )
    )
    p50 = next(m for m in latency.metrics if m.metric == "latency_p50_ms[c=1]")
    assert p50.has_interval and not p50.paired and p50.baseline_samples == p50.candidate_samples == 40
    assert p50.ci_low <= p50.delta <= p50.ci_high
    assert p50.winner == (
        "tie" if p50.ci_low <= 0 <= p50.ci_high else "candidate" if p50.delta < 0 else "baseline"
    )
    assert "latency_p50_ms[c=1]" in latency.export
    print(
        f"\nMiniLM fp32 vs int8 on {SUITE}: "
        + ", ".join(
            f"{n} {by_name[n].baseline:.3f} -> {by_name[n].candidate:.3f}"
            for n in ("recall@10", "mrr@10", "ndcg@10")
        )
        + f"; recall@10 delta {by_name['recall@10'].delta:+.3f} [{by_name['recall@10'].ci_low:+.3f}, {by_name['recall@10'].ci_high:+.3f}]"
        + f"; load p50 {p50.baseline:.1f} -> {p50.candidate:.1f} ms, delta {p50.delta:+.1f} ms [{p50.ci_low:+.1f}, {p50.ci_high:+.1f}]"
        + f"; suite request latency delta {by_name['latency_ms'].delta:+.1f} ms [{by_name['latency_ms'].ci_low:+.1f}, {by_name['latency_ms'].ci_high:+.1f}]"
        + f"; hardware {fp32.hardware}"
    )

    # Stored and retrievable: through the benchmark service and straight from the registry.
    listed = await stack.bench.ListRuns(bpb.ListRunsRequest(model_id="minilm", suite=SUITE))
    assert {r.run_id for r in listed.runs} == {fp32.run_id, int8.run_id, untrained.run_id}
    for run in (fp32, int8):
        via_bench = await stack.bench.GetRun(bpb.GetRunRequest(run_id=run.run_id))
        via_registry = await stack.registry.GetBenchmarkRun(rpb.GetBenchmarkRunRequest(run_id=run.run_id))
        assert via_bench == via_registry
        assert via_registry.metrics == run.metrics and via_registry.conditions == run.conditions

    # Promotion gate on the stored recall@10 of this suite.
    with pytest.raises(aio.AioRpcError) as refused:
        await stack.registry.SetAlias(
            rpb.SetAliasRequest(
                model_id="minilm", alias="production", version="0.1.0", gates=[GATE], gate_suite=SUITE
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"recall@10 = {_metric(untrained, 'recall@10'):.4g} fails `{GATE}`" in (
        refused.value.details() or ""
    )
    promoted = await stack.registry.SetAlias(
        rpb.SetAliasRequest(
            model_id="minilm", alias="production", version="1.1.0", gates=[GATE], gate_suite=SUITE
        )
    )
    assert promoted.version == "1.1.0" and promoted.gates[0].run_id == int8.run_id
    assert promoted.gates[0].observed == pytest.approx(_metric(int8, "recall@10"))
