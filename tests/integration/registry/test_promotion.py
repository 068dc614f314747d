"""PromoteVersion: the alias move and the route switch of one deployment commit together or not at
all (the CLI used to send SetAlias, then SetRoutes: a refused route change left the alias moved)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from registry_support import Stub, deploy, register

from modelyard.api import registry_pb2 as pb
from modelyard.client import ClientSettings
from modelyard.client.channel import open_channel
from modelyard.common.auth import token_verifier
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings


def _routes(d: pb.Deployment) -> dict[str, int]:
    return {r.version: r.weight for r in d.routes}


async def _alias(stub: Stub, alias: str = "production") -> str:
    return (await stub.GetVersion(pb.GetVersionRequest(model_id="minilm", version=alias))).version


async def _actions(stub: Stub, **filters: Any) -> list[tuple[str, str, str]]:
    events = (await stub.ListAuditEvents(pb.ListAuditEventsRequest(**filters))).events
    return [(e.action, e.entity_id, e.reason) for e in events]


async def test_promotion_moves_the_alias_and_routes_the_deployment(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.0.0"))
    follower = await stub.CreateDeployment(
        pb.CreateDeploymentRequest(name="follower", model_id="minilm", follow_alias="production")
    )
    text = await deploy(stub, "text", {"1.0.0": 90, "1.1.0": 10})

    promoted = await stub.PromoteVersion(pb.PromoteVersionRequest(deployment="text", version="1.1.0"))

    # `text` follows no alias: the default one, production, moved; its follower switched with it,
    # and `text` itself was routed 100% to the version, last.
    assert (promoted.model_id, promoted.alias, promoted.version) == ("minilm", "production", "1.1.0")
    assert promoted.previous_version == "1.0.0"
    assert [(d.name, _routes(d)) for d in promoted.switched] == [
        ("follower", {"1.1.0": 100}),
        ("text", {"1.1.0": 100}),
    ]
    assert promoted.switched[0].revision > follower.revision and promoted.switched[1].revision > text.revision
    assert await _alias(stub) == "1.1.0"
    got = await stub.GetDeployment(pb.GetDeploymentRequest(name="text"))
    assert _routes(got) == {"1.1.0": 100} and got.revision == promoted.switched[1].revision
    assert got.follow_alias == "", "routing a deployment does not make it follow the alias"

    # History as the two calls of `modelyard deployments promote` wrote it, one row per change.
    assert (await _actions(stub, entity_type="alias"))[0] == (
        "alias.set",
        "minilm:production",
        "promote 1.1.0 for text",
    )
    assert (await _actions(stub, entity_id="text"))[0] == ("routes.set", "text", "promote 1.1.0")
    assert (await _actions(stub, entity_id="follower"))[0] == (
        "alias.follow",
        "follower",
        "promote 1.1.0 for text",
    )


async def test_promotion_of_a_follower_moves_the_alias_it_follows(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="staging", version="1.0.0"))
    await stub.CreateDeployment(
        pb.CreateDeploymentRequest(name="text", model_id="minilm", follow_alias="staging")
    )
    promoted = await stub.PromoteVersion(
        pb.PromoteVersionRequest(deployment="text", version="1.1.0", reason="canary looked good")
    )
    assert (promoted.alias, promoted.version, promoted.previous_version) == ("staging", "1.1.0", "1.0.0")
    assert [(d.name, _routes(d)) for d in promoted.switched] == [("text", {"1.1.0": 100})]
    assert (await _actions(stub, entity_id="text"))[0] == ("alias.follow", "text", "canary looked good")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _alias(stub, "production")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, "only the followed alias moved"


async def test_refused_route_change_leaves_the_alias_where_it_was(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await register(stub, "2.0.0", dim=768)
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.0.0"))
    before = await deploy(stub, "text", {"1.0.0": 100})
    history = await _actions(stub)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PromoteVersion(pb.PromoteVersionRequest(deployment="text", version="2.0.0"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "embedding dimension 768 instead of 384" in (err.value.details() or "")
    assert "acknowledge_incompatible" in (err.value.details() or "")

    # Neither change happened: the alias, the routes and the history are as they were.
    assert await _alias(stub) == "1.0.0"
    after = await stub.GetDeployment(pb.GetDeploymentRequest(name="text"))
    assert (_routes(after), after.revision) == ({"1.0.0": 100}, before.revision)
    assert await _actions(stub) == history

    acknowledged = await stub.PromoteVersion(
        pb.PromoteVersionRequest(deployment="text", version="2.0.0", acknowledge_incompatible=True)
    )
    assert await _alias(stub) == "2.0.0"
    assert [(d.name, _routes(d)) for d in acknowledged.switched] == [("text", {"2.0.0": 100})]
    assert acknowledged.switched[0].signature.embedding_dim == 768


async def test_refused_gate_or_follower_changes_nothing(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    await register(stub, "2.0.0", dim=768)
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.0.0"))
    await stub.CreateDeployment(
        pb.CreateDeploymentRequest(name="follower", model_id="minilm", follow_alias="production")
    )
    await deploy(stub, "text", {"1.0.0": 100})
    history = await _actions(stub)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PromoteVersion(
            pb.PromoteVersionRequest(deployment="text", version="1.1.0", gates=["recall@10 >= 0.80"])
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (err.value.details() or "").startswith(
        "promotion of minilm 1.1.0 to 'production' refused: recall@10 was never measured"
    )
    # A follower that refuses the version (another signature, not acknowledged) refuses the whole
    # promotion: the alias stays, and `text` is not routed either.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PromoteVersion(pb.PromoteVersionRequest(deployment="text", version="2.0.0"))
    assert "deployment follower serves consumers" in (err.value.details() or "")
    assert await _alias(stub) == "1.0.0"
    assert await _actions(stub) == history


async def test_promotion_names_what_is_missing(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await deploy(stub, "text", {"1.0.0": 100})
    cases = [
        (pb.PromoteVersionRequest(deployment="nope", version="1.0.0"), grpc.StatusCode.NOT_FOUND,
         "unknown deployment 'nope'"),
        (pb.PromoteVersionRequest(deployment="text", version="9.9.9"), grpc.StatusCode.NOT_FOUND,
         "has no version or alias '9.9.9'"),
        (pb.PromoteVersionRequest(deployment="text", version="1.0.0", alias="Bad Alias"),
         grpc.StatusCode.INVALID_ARGUMENT, "invalid alias 'Bad Alias'"),
        (pb.PromoteVersionRequest(deployment="text", version="1.0.0", gates=["recall@10 ~ 1"]),
         grpc.StatusCode.INVALID_ARGUMENT, "invalid gate 'recall@10 ~ 1'"),
    ]  # fmt: skip
    for request, code, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PromoteVersion(request)
        assert (err.value.code(), message in (err.value.details() or "")) == (code, True), err.value.details()


async def test_promotion_is_for_admins_only(database_url: str) -> None:
    server = RegistryServer(
        RegistrySettings(
            database_url=database_url,
            port=0,
            metrics_port=None,
            admin_tokens="ops:admin-secret",
            reader_tokens="dash:read-secret",
            benchmark_tokens=f"bench:{token_verifier('bench-secret')}",
        )
    )
    await server.start()
    try:
        request = pb.PromoteVersionRequest(deployment="text", version="1.1.0")
        for token in ("read-secret", "bench-secret"):
            async with open_channel(server.address, ClientSettings(token=token)) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await Stub(channel).PromoteVersion(request)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        async with open_channel(server.address, ClientSettings(token="admin-secret")) as channel:
            admin = Stub(channel)
            await register(admin, "1.0.0")
            await register(admin, "1.1.0")
            await deploy(admin, "text", {"1.0.0": 100})
            promoted = await admin.PromoteVersion(request)
            assert promoted.version == "1.1.0"
            alias_row = (await admin.ListAuditEvents(pb.ListAuditEventsRequest(entity_type="alias"))).events[
                0
            ]
            assert alias_row.actor == "ops"
            assert json.loads(alias_row.after_json)["alias"]["version"] == "1.1.0"
    finally:
        await server.stop()


async def test_alias_moves_racing_route_changes_of_its_followers_all_succeed(stub: Stub) -> None:
    """A move locks every follower before it takes a revision; it used to lock them one by one,
    taking the revision at the first, while a SetRoutes of a later follower held that follower
    and waited for the revision: PostgreSQL broke the cycle by failing one of them (INTERNAL)."""
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.0.0"))
    followers = [f"f{i}" for i in range(4)]
    for name in followers:
        await stub.CreateDeployment(
            pb.CreateDeploymentRequest(name=name, model_id="minilm", follow_alias="production")
        )
    for i in range(12):
        version = ("1.0.0", "1.1.0")[i % 2]
        routes = [pb.Route(version="1.0.0", weight=50), pb.Route(version="1.1.0", weight=50)]
        calls: list[Awaitable[object]] = [
            stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version=version))
        ]
        calls += [stub.SetRoutes(pb.SetRoutesRequest(name=name, routes=routes)) for name in followers[1:]]
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert not failed, failed[0]
