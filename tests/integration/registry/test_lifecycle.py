"""The registry's lifecycle features end to end over gRPC: promotion gates and alias-following
deployments, rollback, rollout status, search with paging, archive, export/import, history."""

from __future__ import annotations

import json

import asyncpg
import grpc
import pytest
from registry_support import Stub, deploy, register, routes_pb

from modelyard.api import registry_pb2 as pb
from modelyard.client.channel import open_channel
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings


def _run(
    run_id: str, version: str, recall: float, status: pb.RunStatus.ValueType = pb.RUN_STATUS_SUCCEEDED
) -> pb.BenchmarkRun:
    return pb.BenchmarkRun(
        run_id=run_id, suite="builtin", model_id="minilm", version=version, status=status,
        conditions={"concurrency": "4"}, hardware="cpu",
        metrics=[pb.Metric(name="recall@10", value=recall, unit="ratio", samples=[recall, recall])],
    )  # fmt: skip


async def test_promotion_gates_use_stored_metrics_and_switch_followers(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.0.0"))
    following = await stub.CreateDeployment(
        pb.CreateDeploymentRequest(name="text", model_id="minilm", follow_alias="production")
    )
    assert {r.version: r.weight for r in following.routes} == {"1.0.0": 100}

    gate = pb.SetAliasRequest(
        model_id="minilm", alias="production", version="1.1.0", gates=["recall@10 >= 0.80"]
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetAlias(gate)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "recall@10 was never measured" in (err.value.details() or "")

    await stub.RecordBenchmarkRun(pb.RecordBenchmarkRunRequest(run=_run("r1", "1.1.0", 0.75)))
    # A failed run's metrics never count.
    await stub.RecordBenchmarkRun(
        pb.RecordBenchmarkRunRequest(run=_run("r2", "1.1.0", 0.99, pb.RUN_STATUS_FAILED))
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetAlias(gate)
    assert "recall@10 = 0.75 fails `recall@10 >= 0.80`" in (err.value.details() or "")
    still = await stub.GetVersion(pb.GetVersionRequest(model_id="minilm", version="production"))
    assert still.version == "1.0.0"

    await stub.RecordBenchmarkRun(pb.RecordBenchmarkRunRequest(run=_run("r3", "1.1.0", 0.85)))
    promoted = await stub.SetAlias(gate)
    assert promoted.previous_version == "1.0.0" and promoted.gates[0].passed
    assert promoted.gates[0].observed == pytest.approx(0.85) and promoted.gates[0].run_id == "r3"
    switched = await stub.GetDeployment(pb.GetDeploymentRequest(name="text"))
    assert {r.version: r.weight for r in switched.routes} == {"1.1.0": 100}
    assert switched.revision > following.revision

    stored = await stub.GetBenchmarkRun(pb.GetBenchmarkRunRequest(run_id="r3"))
    assert list(stored.metrics[0].samples) == [0.85, 0.85] and stored.conditions["concurrency"] == "4"
    runs = await stub.ListBenchmarkRuns(pb.ListBenchmarkRunsRequest(model_id="minilm", version="1.1.0"))
    assert [r.run_id for r in runs.runs] == ["r3", "r2", "r1"]


async def test_rollback_returns_to_previous_routes(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    first = await deploy(stub, "text", {"1.0.0": 100})
    await stub.SetRoutes(pb.SetRoutesRequest(name="text", routes=routes_pb({"1.0.0": 90, "1.1.0": 10})))
    await stub.SetRoutes(pb.SetRoutesRequest(name="text", routes=routes_pb({"1.1.0": 100, "1.0.0": 0})))
    back = await stub.RollbackDeployment(pb.RollbackDeploymentRequest(name="text"))
    assert {r.version: r.weight for r in back.routes} == {"1.0.0": 90, "1.1.0": 10}
    to_first = await stub.RollbackDeployment(
        pb.RollbackDeploymentRequest(name="text", to_revision=first.revision)
    )
    assert {r.version: r.weight for r in to_first.routes} == {"1.0.0": 100}
    history = await stub.ListAuditEvents(
        pb.ListAuditEventsRequest(entity_type="deployment", entity_id="text")
    )
    assert [e.action for e in history.events] == [
        "deployment.rollback", "deployment.rollback", "routes.set", "routes.set", "deployment.create",
    ]  # fmt: skip
    assert json.loads(history.events[0].before_json)["routes"] == [
        {"version": "1.0.0", "weight": 90, "mirror_percent": 0},
        {"version": "1.1.0", "weight": 10, "mirror_percent": 0},
    ]  # fmt: skip


async def test_rollout_status_follows_worker_heartbeats(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    d = await deploy(stub, "text", {"1.0.0": 90, "1.1.0": 10})
    status = await stub.GetRolloutStatus(pb.GetRolloutStatusRequest(deployment="text"))
    assert not status.converged and not status.workers

    def heartbeat(revision: int, states: dict[str, pb.VersionState.ValueType]) -> pb.ReportStatusRequest:
        versions = [pb.LoadedVersion(version=v, state=s, last_error="hash mismatch" if s == pb.FAILED else "")
                    for v, s in states.items()]  # fmt: skip
        return pb.ReportStatusRequest(
            status=pb.WorkerStatus(
                worker_id="w1", address="127.0.0.1:1", state="serving",
                deployments=[pb.DeploymentStatus(deployment="text", revision=revision, versions=versions)],
            )
        )  # fmt: skip

    await stub.ReportStatus(heartbeat(d.revision, {"1.0.0": pb.SERVING, "1.1.0": pb.FAILED}))
    status = await stub.GetRolloutStatus(pb.GetRolloutStatusRequest(deployment="text", wait_timeout_ms=300))
    assert not status.converged and "hash mismatch" in status.workers[0].detail
    await stub.ReportStatus(heartbeat(d.revision, {"1.0.0": pb.SERVING, "1.1.0": pb.SERVING}))
    status = await stub.GetRolloutStatus(pb.GetRolloutStatusRequest(deployment="text"))
    assert status.converged and status.revision == d.revision
    workers = await stub.ListWorkers(pb.ListWorkersRequest(deployment="text"))
    assert [w.worker_id for w in workers.workers] == ["w1"] and workers.workers[0].live


async def test_search_filters_and_pages(stub: Stub) -> None:
    for i in range(7):
        await register(stub, f"1.{i}.0")
        await stub.UpdateVersion(
            pb.UpdateVersionRequest(model_id="minilm", version=f"1.{i}.0", set_tags={"parity": str(i % 2)})
        )
    await register(stub, "0.1.0", model_id="other")
    seen, token = [], ""
    while True:
        page = await stub.ListVersions(
            pb.ListVersionsRequest(model_id="minilm", page_size=3, page_token=token)
        )
        seen += [v.version for v in page.versions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"1.{i}.0" for i in reversed(range(7))]
    odd = await stub.ListVersions(pb.ListVersionsRequest(tags=["parity=1"]))
    assert [v.version for v in odd.versions] == ["1.5.0", "1.3.0", "1.1.0"]
    everything = await stub.ListVersions(pb.ListVersionsRequest(model_type=pb.TEXT_EMBEDDING, page_size=100))
    assert len(everything.versions) == 8
    found = await stub.ListVersions(pb.ListVersionsRequest(query="0.1"))
    assert [v.model_id for v in found.versions] == ["other"]
    await stub.UpdateVersion(
        pb.UpdateVersionRequest(model_id="minilm", version="1.2.0", description="Nightly BUILD, 50% smaller")
    )
    found = await stub.ListVersions(pb.ListVersionsRequest(query="nightly build"))  # any case
    assert [v.version for v in found.versions] == ["1.2.0"]
    found = await stub.ListVersions(pb.ListVersionsRequest(query="50% s"))  # % is a character here
    assert [v.version for v in found.versions] == ["1.2.0"]
    found = await stub.ListVersions(pb.ListVersionsRequest(query="1_0"))  # and _ is no wildcard
    assert list(found.versions) == []
    found = await stub.ListVersions(pb.ListVersionsRequest(query="SENTENCE-transformers", page_size=100))
    assert len(found.versions) == 8  # the loader is searched too


async def test_archive_refuses_routed_versions_and_audit_is_append_only(
    stub: Stub, database_url: str
) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    await deploy(stub, "text", {"1.0.0": 100})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ArchiveVersion(pb.ArchiveVersionRequest(model_id="minilm", version="1.0.0"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "routed by deployment text" in (
        err.value.details() or ""
    )
    archived = await stub.ArchiveVersion(
        pb.ArchiveVersionRequest(model_id="minilm", version="1.1.0", reason="old")
    )
    assert archived.status == pb.VERSION_STATUS_ARCHIVED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetRoutes(pb.SetRoutesRequest(name="text", routes=routes_pb({"1.1.0": 100})))
    assert "archived" in (err.value.details() or "")
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE audit_log SET actor = 'mallory'")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM audit_log")
    finally:
        await conn.close()


async def test_export_then_import_into_an_empty_registry(stub: Stub, registry, postgres) -> None:  # type: ignore[no-untyped-def]
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.1.0"))
    await deploy(stub, "text", {"1.0.0": 90, "1.1.0": 10})
    await stub.RecordBenchmarkRun(pb.RecordBenchmarkRunRequest(run=_run("r1", "1.1.0", 0.9)))
    exported = (await stub.ExportRegistry(pb.ExportRegistryRequest())).json

    admin = await asyncpg.connect(postgres.url())
    await admin.execute("CREATE DATABASE import_target TEMPLATE modelyard_template")
    await admin.close()
    target = RegistryServer(
        RegistrySettings(database_url=postgres.url("import_target"), port=0, metrics_port=None)
    )
    await target.start()
    try:
        async with open_channel(target.address) as channel:
            other = Stub(channel)
            counts = await other.ImportRegistry(pb.ImportRegistryRequest(json=exported))
            assert (counts.models, counts.versions, counts.aliases, counts.deployments, counts.benchmark_runs) == (
                1, 2, 1, 1, 1,
            )  # fmt: skip
            again = await other.ImportRegistry(pb.ImportRegistryRequest(json=exported))
            assert again.unchanged == 6 and again.versions == 0
            assert (
                json.loads((await other.ExportRegistry(pb.ExportRegistryRequest())).json)["versions"]
                == (json.loads(exported)["versions"])
            )
            dep = await other.GetDeployment(pb.GetDeploymentRequest(name="text"))
            assert {r.version: r.weight for r in dep.routes} == {"1.0.0": 90, "1.1.0": 10}
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await other.ImportRegistry(pb.ImportRegistryRequest(json="{not json"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await target.stop()
        admin = await asyncpg.connect(postgres.url())
        await admin.execute("DROP DATABASE import_target WITH (FORCE)")
        await admin.close()
