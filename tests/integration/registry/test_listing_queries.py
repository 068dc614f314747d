"""Listing deployments reads the versions of all of them in one query (it read them once per
deployment: ListDeployments, every WatchDeployments snapshot and the rollout gauge paid N+1 queries)."""

from __future__ import annotations

from registry_support import Stub, deploy, register

from modelyard.api import registry_pb2 as pb
from modelyard.registry import repository
from modelyard.registry.db import connect


async def test_listing_deployments_reads_their_versions_in_one_query(stub: Stub, database_url: str) -> None:
    for i in range(4):
        await register(stub, f"1.{i}.0")
        await register(stub, f"1.{i}.0", model_id="other", dim=768)  # the same version strings
    for i in range(12):
        await deploy(stub, f"text-{i:02d}", {f"1.{i % 4}.0": 90, f"1.{(i + 1) % 4}.0": 10})
    await deploy(stub, "other-a", {"1.3.0": 100, "1.0.0": 0}, model_id="other")

    conn = await connect(database_url)
    queries: list[str] = []
    conn.add_query_logger(lambda record: queries.append(record.query))
    try:
        listed = await repository.list_deployments(conn)
    finally:
        await conn.close()
    assert len(listed) == 13
    assert len(queries) == 2, f"{len(queries)} queries to list 13 deployments"

    # Each listed deployment carries its own model's versions, in route order, as a get returns them.
    response = await stub.ListDeployments(pb.ListDeploymentsRequest())
    for listed_one in response.deployments:
        single = await stub.GetDeployment(pb.GetDeploymentRequest(name=listed_one.name))
        assert listed_one == single
        assert [v.version for v in listed_one.versions] == [r.version for r in listed_one.routes]
        assert {v.model_id for v in listed_one.versions} == {listed_one.model_id}
    other = next(d for d in response.deployments if d.name == "other-a")
    assert [v.signature.embedding_dim for v in other.versions] == [768, 768]
