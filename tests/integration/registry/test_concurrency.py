"""Concurrent route changes: one audit row each, a consistent final state, gap-free revisions."""

from __future__ import annotations

import asyncio
import itertools
import json

import asyncpg
from registry_support import Stub, deploy, register, routes_pb

from modelyard.api import registry_pb2 as pb


async def test_twenty_concurrent_route_changes(stub: Stub, database_url: str) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    created = await deploy(stub, "text", {"1.0.0": 100})
    requested = [{"1.0.0": 100 - 5 * i, "1.1.0": 5 * i} for i in range(20)]
    results = await asyncio.gather(
        *(
            stub.SetRoutes(pb.SetRoutesRequest(name="text", routes=routes_pb(r), reason=f"change {i}"))
            for i, r in enumerate(requested)
        )
    )
    revisions = sorted(r.revision for r in results)
    assert revisions == list(range(created.revision + 1, created.revision + 21))

    conn = await asyncpg.connect(database_url)
    try:
        audit = await conn.fetch("SELECT * FROM audit_log WHERE action = 'routes.set' ORDER BY id")
        events = await conn.fetch("SELECT revision, state FROM deployment_events ORDER BY revision")
    finally:
        await conn.close()
    assert len(audit) == 20
    assert sorted(r["reason"] for r in audit) == sorted(f"change {i}" for i in range(20))
    assert [e["revision"] for e in events] == list(range(1, created.revision + 21))
    # Each change saw the state the previous one left: the audit log is a chain.
    ordered = sorted(audit, key=lambda r: r["revision"])
    for previous, current in itertools.pairwise(ordered):
        assert json.loads(current["before"])["routes"] == json.loads(previous["after"])["routes"]

    final = await stub.GetDeployment(pb.GetDeploymentRequest(name="text"))
    last_state = json.loads(events[-1]["state"])
    assert final.revision == events[-1]["revision"]
    assert [
        {"version": r.version, "weight": r.weight, "mirror_percent": r.mirror_percent} for r in final.routes
    ] == last_state["routes"]
    assert {r.version: r.weight for r in final.routes} in requested
