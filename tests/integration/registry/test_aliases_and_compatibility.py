"""Aliases and compatibility over gRPC on a real registry: DeleteAlias (refused while a deployment
follows the alias, audited when it goes, NOT_FOUND when there is none), ListAliases, and
CheckCompatibility (the same verdict SetRoutes applies, without changing anything)."""

from __future__ import annotations

import json

import grpc
import pytest
from registry_support import Stub, deploy, register, routes_pb

from modelyard.api import registry_pb2 as pb


async def _refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    assert refused.value.code() == code, refused.value
    return refused.value.details() or ""


async def _aliases(stub: Stub, model_id: str) -> dict[str, str]:
    listed = await stub.ListAliases(pb.ListAliasesRequest(model_id=model_id))
    return {a.alias: a.version for a in listed.aliases}


# ---- DeleteAlias ------------------------------------------------------------------------------------


async def test_delete_alias_is_refused_while_a_deployment_follows_it(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.0.0"))
    await stub.CreateDeployment(
        pb.CreateDeploymentRequest(name="search", model_id="minilm", follow_alias="production")
    )

    details = await _refused(
        stub.DeleteAlias(pb.DeleteAliasRequest(model_id="minilm", alias="production")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "'production'" in details and "search" in details  # names the alias and who follows it
    assert await _aliases(stub, "minilm") == {"production": "1.0.0"}  # nothing changed
    refusals = await stub.ListAuditEvents(pb.ListAuditEventsRequest(action="alias.delete"))
    assert list(refusals.events) == []

    # Once nothing follows it, the alias can go.
    await stub.DeleteDeployment(pb.DeleteDeploymentRequest(name="search"))
    await stub.DeleteAlias(pb.DeleteAliasRequest(model_id="minilm", alias="production"))
    assert await _aliases(stub, "minilm") == {}


async def test_delete_alias_removes_it_and_is_audited(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.0.0"))
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="staging", version="1.1.0"))
    # A deployment that follows another alias does not hold this one.
    await stub.CreateDeployment(
        pb.CreateDeploymentRequest(name="search", model_id="minilm", follow_alias="production")
    )
    assert (
        await stub.GetVersion(pb.GetVersionRequest(model_id="minilm", version="staging"))
    ).version == "1.1.0"

    await stub.DeleteAlias(pb.DeleteAliasRequest(model_id="minilm", alias="staging", reason="trial over"))

    assert await _aliases(stub, "minilm") == {"production": "1.0.0"}
    details = await _refused(
        stub.GetVersion(pb.GetVersionRequest(model_id="minilm", version="staging")), grpc.StatusCode.NOT_FOUND
    )
    assert "staging" in details  # the name no longer resolves
    # The version itself stays.
    assert (
        await stub.GetVersion(pb.GetVersionRequest(model_id="minilm", version="1.1.0"))
    ).version == "1.1.0"
    audit = await stub.ListAuditEvents(
        pb.ListAuditEventsRequest(entity_type="alias", entity_id="minilm:staging", action="alias.delete")
    )
    (event,) = audit.events
    assert (event.reason, event.after_json) == ("trial over", "")
    assert json.loads(event.before_json)["version"] == "1.1.0"
    assert event.actor != ""


async def test_delete_of_an_unknown_alias_is_not_found(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.0.0"))
    details = await _refused(
        stub.DeleteAlias(pb.DeleteAliasRequest(model_id="minilm", alias="canary")), grpc.StatusCode.NOT_FOUND
    )
    assert "'minilm'" in details and "'canary'" in details
    details = await _refused(
        stub.DeleteAlias(pb.DeleteAliasRequest(model_id="no-such-model", alias="production")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "no-such-model" in details
    assert await _aliases(stub, "minilm") == {"production": "1.0.0"}


# ---- ListAliases ------------------------------------------------------------------------------------


async def test_list_aliases_gives_each_alias_of_the_model_with_its_version(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    await register(stub, "0.1.0", model_id="other", dim=768)
    assert await _aliases(stub, "minilm") == {}
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.0.0"))
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="staging", version="1.1.0"))
    await stub.SetAlias(pb.SetAliasRequest(model_id="other", alias="production", version="0.1.0"))

    listed = await stub.ListAliases(pb.ListAliasesRequest(model_id="minilm"))
    assert [(a.model_id, a.alias, a.version) for a in listed.aliases] == [
        ("minilm", "production", "1.0.0"),
        ("minilm", "staging", "1.1.0"),
    ]
    assert all(a.updated_at.seconds > 0 for a in listed.aliases)

    # Moving an alias shows at once; the other model's alias of the same name is its own.
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.1.0"))
    assert await _aliases(stub, "minilm") == {"production": "1.1.0", "staging": "1.1.0"}
    assert await _aliases(stub, "other") == {"production": "0.1.0"}


# ---- CheckCompatibility -----------------------------------------------------------------------------


async def test_check_compatibility_lists_what_a_consumer_would_notice(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")  # same signature
    await register(stub, "2.0.0", dim=768)  # another embedding dimension
    before = await deploy(stub, "search", {"1.0.0": 100})

    same = await stub.CheckCompatibility(
        pb.CheckCompatibilityRequest(deployment="search", model_id="minilm", version="1.1.0")
    )
    assert same.compatible and list(same.differences) == []
    # model_id may be left out: the deployment's own model.
    bigger = await stub.CheckCompatibility(pb.CheckCompatibilityRequest(deployment="search", version="2.0.0"))
    assert not bigger.compatible
    assert list(bigger.differences) == ["embedding dimension 768 instead of 384"]

    # The same verdict SetRoutes applies; checking changed nothing.
    after = await stub.GetDeployment(pb.GetDeploymentRequest(name="search"))
    assert after.revision == before.revision
    await stub.SetRoutes(pb.SetRoutesRequest(name="search", routes=routes_pb({"1.1.0": 100})))
    details = await _refused(
        stub.SetRoutes(pb.SetRoutesRequest(name="search", routes=routes_pb({"2.0.0": 100}))),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "embedding dimension 768 instead of 384" in details


E5 = {"prompt_name.choice.query": "query: ", "prompt_name.choice.passage": "passage: "}


async def test_a_versions_prompts_are_stored_and_dropping_one_is_an_incompatibility(stub: Stub) -> None:
    """Consumers send `prompt_name`: a routed version that no longer reads it, or no longer has one
    of its prompts, would refuse their requests."""
    await register(stub, "1.0.0", parameters={**E5, "prompt_name.default": "query"})
    await register(stub, "1.1.0", parameters={**E5, "prompt_name.choice.query": "query (v2): "})
    await register(stub, "1.2.0", parameters={"prompt_name.choice.query": "query: "})
    await register(stub, "1.3.0")
    stored = await stub.GetVersion(pb.GetVersionRequest(model_id="minilm", version="1.0.0"))
    assert dict(stored.signature.parameters) == {**E5, "prompt_name.default": "query"}
    await deploy(stub, "search", {"1.0.0": 100})

    async def differences(version: str) -> list[str]:
        found = await stub.CheckCompatibility(
            pb.CheckCompatibilityRequest(deployment="search", version=version)
        )
        assert found.compatible == (not found.differences)
        return list(found.differences)

    assert await differences("1.1.0") == [], "a prompt's text may change; its name stays accepted"
    assert await differences("1.2.0") == ["prompt_name 'passage' no longer accepted"]
    assert await differences("1.3.0") == ["request parameter 'prompt_name' no longer read"]
    details = await _refused(
        stub.SetRoutes(pb.SetRoutesRequest(name="search", routes=routes_pb({"1.2.0": 100}))),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "prompt_name 'passage' no longer accepted" in details
    many = {f"prompt_name.choice.p{i}": "p: " for i in range(65)}
    details = await _refused(register(stub, "1.4.0", parameters=many), grpc.StatusCode.INVALID_ARGUMENT)
    assert "at most 64" in details


async def test_check_compatibility_of_another_models_version(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.0.0", model_id="clip-text")  # same signature, other model
    await deploy(stub, "search", {"1.0.0": 100})
    other = await stub.CheckCompatibility(
        pb.CheckCompatibilityRequest(deployment="search", model_id="clip-text", version="1.0.0")
    )
    assert not other.compatible
    (difference,) = other.differences
    assert "clip-text" in difference and "minilm" in difference


async def test_check_compatibility_of_unknown_names_is_not_found(stub: Stub) -> None:
    await register(stub, "1.0.0")
    await deploy(stub, "search", {"1.0.0": 100})
    details = await _refused(
        stub.CheckCompatibility(pb.CheckCompatibilityRequest(deployment="nowhere", version="1.0.0")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "nowhere" in details
    details = await _refused(
        stub.CheckCompatibility(pb.CheckCompatibilityRequest(deployment="search", version="9.9.9")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "9.9.9" in details
