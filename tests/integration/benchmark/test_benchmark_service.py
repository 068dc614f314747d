"""The benchmark service as a process, on a real registry and real worker processes with tiny models:
staging through the registry, stored runs, comparison and exports, bad input, and a worker SIGKILLed
mid-run. (Promotion gates: test_benchmark_minilm.py, where the quality gap is real.)"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import grpc
import pytest
from benchmark_support import TINY_DIM, Stack
from grpc import aio
from support import free_port

from modelyard.api import benchmark_pb2 as bpb
from modelyard.api import registry_pb2 as rpb

DEPLOYMENT = "tiny-text"


def _request(*versions: str, suite: str = "stdlib-docstrings", **fields: object) -> bpb.RunBenchmarkRequest:
    return bpb.RunBenchmarkRequest(
        deployment=DEPLOYMENT,
        model_id="tiny",
        versions=list(versions),
        suite=suite,
        **fields,  # type: ignore[arg-type]
    )


async def _run(
    stack: Stack, request: bpb.RunBenchmarkRequest
) -> tuple[list[bpb.RunBenchmarkProgress], list[rpb.BenchmarkRun]]:
    events = [p async for p in stack.bench.RunBenchmark(request, timeout=120)]
    return events, [p.run for p in events if p.HasField("run")]


async def _tiny_deployment(stack: Stack, tiny_encoders: dict[str, Path]) -> rpb.Deployment:
    """1.0.0 serves all traffic; 1.1.0 is registered but no route names it."""
    await stack.register(tiny_encoders["a"], "1.0.0", model_id="tiny", dim=TINY_DIM)
    await stack.register(tiny_encoders["b"], "1.1.0", model_id="tiny", dim=TINY_DIM)
    return await stack.deploy(DEPLOYMENT, "tiny", {"1.0.0": 100})


async def test_staged_versions_are_benchmarked_stored_compared_and_exported(
    stack: Stack, tiny_encoders: dict[str, Path]
) -> None:
    created = await _tiny_deployment(stack, tiny_encoders)
    worker = stack.spawn_worker(DEPLOYMENT)
    await stack.converged(DEPLOYMENT, created.revision)

    # No worker named: the service finds it through the registry; 1.1.0 is staged for its run.
    events, runs = await _run(
        stack, _request("1.0.0", "1.1.0", stage_unrouted=True, options={"batch_size": "32"})
    )
    assert [r.status for r in runs] == [rpb.RUN_STATUS_SUCCEEDED] * 2, [r.error for r in runs]
    assert [e.version for e in events if e.phase == "staging"] == ["1.1.0"]
    assert await stack.routes(DEPLOYMENT) == {"1.0.0": 100}  # unstaged afterwards
    audit = await stack.registry.ListAuditEvents(rpb.ListAuditEventsRequest(entity_id=DEPLOYMENT))
    assert [e.action for e in audit.events][:2] == ["version.unstage", "version.stage"]
    assert "benchmark run" in audit.events[1].reason and "1.1.0" in audit.events[0].reason
    for run in runs:
        assert run.conditions["worker"] == worker.address
        assert run.conditions["worker.device"] == "cpu"
        assert run.conditions["staged"] == str(run.version == "1.1.0").lower()
        assert int(run.conditions["host.cpu_cores"]) >= 1 and run.conditions["software.torch"]
        assert run.hardware.startswith("cpu (")

    recall = {r.version: next(m.value for m in r.metrics if m.name == "recall@10") for r in runs}

    # Compare over gRPC: per-metric deltas, CIs, winner, and the three export formats.
    baseline, candidate = runs[0].run_id, runs[1].run_id
    reply = await stack.bench.Compare(
        bpb.CompareRequest(baseline_run_id=baseline, candidate_run_id=candidate, seed=3)
    )
    by_name = {m.metric: m for m in reply.metrics}
    r10 = by_name["recall@10"]
    assert r10.paired and r10.has_interval and r10.baseline_samples == 600
    assert r10.delta == pytest.approx(recall["1.1.0"] - recall["1.0.0"])
    assert r10.ci_low <= r10.delta <= r10.ci_high
    assert r10.winner == (
        "tie" if r10.ci_low <= 0 <= r10.ci_high else "candidate" if r10.delta > 0 else "baseline"
    )
    assert by_name["latency_p95_ms"].has_interval and not by_name["latency_p95_ms"].paired
    assert reply.winner in ("baseline", "candidate", "tie", "mixed")
    exports = {
        fmt: (
            await stack.bench.Compare(
                bpb.CompareRequest(
                    baseline_run_id=baseline, candidate_run_id=candidate, export_format=fmt, seed=3
                )
            )
        ).export
        for fmt in ("json", "csv", "markdown")
    }
    assert json.loads(exports["json"])["winner"] == reply.winner
    rows = {row["metric"]: row for row in csv.DictReader(io.StringIO(exports["csv"]))}
    assert float(rows["recall@10"]["delta"]) == pytest.approx(r10.delta)
    assert "| recall@10 ↑ |" in exports["markdown"]

    # Both runs are in the registry's performance store, as the benchmark service lists them.
    listed = await stack.bench.ListRuns(bpb.ListRunsRequest(model_id="tiny"))
    assert {r.run_id for r in listed.runs} == {baseline, candidate}
    stored = await stack.registry.GetBenchmarkRun(rpb.GetBenchmarkRunRequest(run_id=candidate))
    assert len(next(m for m in stored.metrics if m.name == "recall@10").samples) == 600


async def test_worker_killed_mid_run_fails_the_run_records_no_metric_and_unstages(
    stack: Stack, tiny_encoders: dict[str, Path]
) -> None:
    created = await _tiny_deployment(stack, tiny_encoders)
    worker = stack.spawn_worker(DEPLOYMENT)
    await stack.converged(DEPLOYMENT, created.revision)

    request = _request("1.1.0", stage_unrouted=True, worker=worker.address, options={"batch_size": "4"})
    events: list[bpb.RunBenchmarkProgress] = []
    async for progress in stack.bench.RunBenchmark(request, timeout=120):
        events.append(progress)
        if progress.phase == "quality" and worker.proc.poll() is None:
            assert await stack.routes(DEPLOYMENT) == {"1.0.0": 100, "1.1.0": 0}  # staged while it runs
            worker.proc.kill()  # SIGKILL, mid-suite
    (run,) = [p.run for p in events if p.HasField("run")]
    assert worker.proc.poll() is not None
    assert run.status == rpb.RUN_STATUS_FAILED
    assert worker.address in run.error and "ModelInfer" in run.error, run.error
    assert len(run.metrics) == 0
    stored = await stack.registry.GetBenchmarkRun(rpb.GetBenchmarkRunRequest(run_id=run.run_id))
    assert stored.status == rpb.RUN_STATUS_FAILED and stored.error == run.error and len(stored.metrics) == 0
    metrics = await stack.registry.GetVersionMetrics(
        rpb.GetVersionMetricsRequest(model_id="tiny", version="1.1.0")
    )
    assert len(metrics.metrics) == 0  # nothing half-recorded for gates to find
    assert await stack.routes(DEPLOYMENT) == {"1.0.0": 100}


async def test_bad_input_is_refused_or_recorded_as_a_failed_run(
    stack: Stack, tiny_encoders: dict[str, Path], tmp_path: Path
) -> None:
    await _tiny_deployment(stack, tiny_encoders)
    nowhere = f"127.0.0.1:{free_port()}"

    async def refused(request: bpb.RunBenchmarkRequest) -> aio.AioRpcError:
        with pytest.raises(aio.AioRpcError) as caught:
            await _run(stack, request)
        return caught.value

    unknown = await refused(_request("1.0.0", suite="imagenet-21k", worker=nowhere))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert "imagenet-21k" in (unknown.details() or "")
    assert all(name in (unknown.details() or "") for name in ("stdlib-docstrings", "digits", "load", "beir:"))

    dataset = tmp_path / "broken"
    (dataset / "qrels").mkdir(parents=True)
    (dataset / "corpus.jsonl").write_text('{"_id": "d1", "text": "fine"}\n{"_id": "d2", "text": oops}\n')
    (dataset / "queries.jsonl").write_text('{"_id": "q1", "text": "what"}\n')
    (dataset / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    malformed = await refused(_request("1.0.0", suite=f"beir:{dataset}", worker=nowhere))
    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{dataset / 'corpus.jsonl'}:2" in (malformed.details() or "")

    for levels in ([0], [-1], [4, -2]):
        bad_load = await refused(
            _request(
                "1.0.0", suite="load", worker=nowhere, load=bpb.LoadSettings(concurrency=levels, requests=5)
            )
        )
        assert bad_load.code() == grpc.StatusCode.INVALID_ARGUMENT, levels
        assert "concurrency" in (bad_load.details() or "")

    no_worker = await refused(_request("1.0.0"))  # nothing serves the deployment yet
    assert no_worker.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no live worker" in (no_worker.details() or "")
    # Refusals record nothing.
    assert (
        len((await stack.registry.ListBenchmarkRuns(rpb.ListBenchmarkRunsRequest(model_id="tiny"))).runs) == 0
    )

    # A worker the registry does not list is never called: the service would send it its token.
    unlisted = await refused(_request("1.0.0", worker=nowhere))
    assert unlisted.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"{nowhere} is not one the registry lists" in (unlisted.details() or "")
    # Nor does it read datasets outside its dataset directories.
    outside = await refused(_request("1.0.0", suite="beir:/etc", worker=nowhere))
    assert outside.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "outside the benchmark service's dataset directories" in (outside.details() or "")
    assert (
        len((await stack.registry.ListBenchmarkRuns(rpb.ListBenchmarkRunsRequest(model_id="tiny"))).runs) == 0
    )

    # A listed worker that stopped answering is a run that failed, recorded with the reason and no
    # metrics. (Its heartbeat is still fresh: the registry lists it.)
    ghost = rpb.WorkerStatus(
        worker_id="ghost",
        address=nowhere,
        state="serving",
        deployments=[rpb.DeploymentStatus(deployment=DEPLOYMENT, revision=1)],
    )
    await stack.registry.ReportStatus(rpb.ReportStatusRequest(status=ghost))
    _, (run,) = await _run(stack, _request("1.0.0", worker=nowhere, stage_unrouted=True))
    assert run.status == rpb.RUN_STATUS_FAILED
    assert nowhere in run.error and "unreachable" in run.error, run.error
    stored = await stack.registry.GetBenchmarkRun(rpb.GetBenchmarkRunRequest(run_id=run.run_id))
    assert stored.status == rpb.RUN_STATUS_FAILED and len(stored.metrics) == 0
    assert await stack.routes(DEPLOYMENT) == {"1.0.0": 100}
