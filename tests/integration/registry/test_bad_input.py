"""Bad input: the right status code, a message that says what to do, and nothing written."""

from __future__ import annotations

import grpc
import pytest
from registry_support import Stub, checkpoint, deploy, register, routes_pb

from modelyard.api import registry_pb2 as pb


async def _audit_count(stub: Stub) -> int:
    return len((await stub.ListAuditEvents(pb.ListAuditEventsRequest(page_size=500))).events)


async def _expect(stub: Stub, call, code: grpc.StatusCode, *words: str) -> None:  # type: ignore[no-untyped-def]
    before = await _audit_count(stub)
    revision = (await stub.GetDeployment(pb.GetDeploymentRequest(name="text"))).revision
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    for word in words:
        assert word in (err.value.details() or ""), err.value.details()
    assert await _audit_count(stub) == before, "a refused request must not write history"
    assert (await stub.GetDeployment(pb.GetDeploymentRequest(name="text"))).revision == revision


@pytest.fixture
async def seeded(stub: Stub) -> Stub:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    await register(stub, "2.0.0", dim=768)
    await deploy(stub, "text", {"1.0.0": 100})
    return stub


def _version(
    version: str = "1.2.0", hash_: str | None = None, model_id: str = "minilm"
) -> pb.RegisterVersionRequest:
    return pb.RegisterVersionRequest(
        version=pb.ModelVersion(
            model_id=model_id,
            version=version,
            source_uri="/models/m",
            loader="sentence-transformers",
            checkpoint_hash=checkpoint(version) if hash_ is None else hash_,
        )
    )


async def test_malformed_semver(seeded: Stub) -> None:
    await _expect(seeded, seeded.RegisterVersion(_version("1.2")), grpc.StatusCode.INVALID_ARGUMENT, "SemVer")
    await _expect(
        seeded, seeded.RegisterVersion(_version("v1.2.0")), grpc.StatusCode.INVALID_ARGUMENT, "SemVer"
    )


async def test_malformed_hash(seeded: Stub) -> None:
    await _expect(
        seeded, seeded.RegisterVersion(_version(hash_="abc123")), grpc.StatusCode.INVALID_ARGUMENT, "sha256"
    )
    await _expect(
        seeded, seeded.RegisterVersion(_version(hash_="G" * 64)), grpc.StatusCode.INVALID_ARGUMENT, "64"
    )


async def test_unknown_model(seeded: Stub) -> None:
    await _expect(
        seeded, seeded.RegisterVersion(_version(model_id="nope")), grpc.StatusCode.NOT_FOUND, "nope", "create"
    )
    await _expect(
        seeded,
        seeded.GetVersion(pb.GetVersionRequest(model_id="nope", version="1.0.0")),
        grpc.StatusCode.NOT_FOUND,
        "models list",
    )


async def test_duplicate_version(seeded: Stub) -> None:
    await _expect(seeded, seeded.RegisterVersion(_version("1.1.0")), grpc.StatusCode.ALREADY_EXISTS, "1.1.0")
    stored = await seeded.GetVersion(pb.GetVersionRequest(model_id="minilm", version="1.1.0"))
    assert stored.checkpoint_hash == checkpoint("1.1.0")


async def test_weights_not_summing_to_100(seeded: Stub) -> None:
    request = pb.SetRoutesRequest(name="text", routes=routes_pb({"1.0.0": 90, "1.1.0": 20}))
    await _expect(seeded, seeded.SetRoutes(request), grpc.StatusCode.INVALID_ARGUMENT, "sum to 110")
    request = pb.SetRoutesRequest(name="text", routes=routes_pb({"1.0.0": 50}))
    await _expect(seeded, seeded.SetRoutes(request), grpc.StatusCode.INVALID_ARGUMENT, "not 100")


async def test_incompatible_signature_needs_acknowledgment(seeded: Stub) -> None:
    request = pb.SetRoutesRequest(name="text", routes=routes_pb({"2.0.0": 100}))
    await _expect(
        seeded,
        seeded.SetRoutes(request),
        grpc.StatusCode.FAILED_PRECONDITION,
        "embedding dimension 768 instead of 384",
        "re-embedded",
        "acknowledge_incompatible",
    )
    request.acknowledge_incompatible = True
    switched = await seeded.SetRoutes(request)
    assert switched.signature.embedding_dim == 768


async def test_cleanup_that_would_remove_a_routed_version(seeded: Stub) -> None:
    request = pb.CleanupVersionsRequest(model_id="minilm", keep_last=1)
    await _expect(
        seeded, seeded.CleanupVersions(request), grpc.StatusCode.FAILED_PRECONDITION, "1.0.0", "routed"
    )
    listed = await seeded.ListVersions(pb.ListVersionsRequest(model_id="minilm"))
    assert sorted(v.version for v in listed.versions) == ["1.0.0", "1.1.0", "2.0.0"]
    # Skipping versions in use removes only the idle one.
    done = await seeded.CleanupVersions(
        pb.CleanupVersionsRequest(model_id="minilm", keep_last=1, skip_in_use=True)
    )
    assert list(done.removed) == ["1.1.0"] and list(done.kept_in_use) == ["1.0.0"]


async def test_unknown_deployment_and_version_in_routes(seeded: Stub) -> None:
    await _expect(
        seeded,
        seeded.SetRoutes(pb.SetRoutesRequest(name="ghost", routes=routes_pb({"1.0.0": 100}))),
        grpc.StatusCode.NOT_FOUND,
        "ghost",
    )
    await _expect(
        seeded,
        seeded.SetRoutes(pb.SetRoutesRequest(name="text", routes=routes_pb({"9.9.9": 100}))),
        grpc.StatusCode.NOT_FOUND,
        "register it",
    )


async def test_malformed_page_token_and_gate(seeded: Stub) -> None:
    await _expect(
        seeded,
        seeded.ListVersions(pb.ListVersionsRequest(page_token="garbage")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    await _expect(
        seeded,
        seeded.SetAlias(
            pb.SetAliasRequest(
                model_id="minilm", alias="production", version="1.1.0", gates=["recall@10 is great"]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "metric op number",
    )


@pytest.mark.parametrize(
    ("routes", "words"),
    [
        ([("1.0.0", 100, 20)], ("carries 100%", "weight-0")),
        ([("1.0.0", 100, 0), ("1.1.0", 0, 101)], ("out of range",)),
        ([("1.0.0", 100, 0), ("1.1.0", 0, -1)], ("out of range",)),
    ],
)
async def test_shadow_routes_that_make_no_sense(
    seeded: Stub, routes: list[tuple[str, int, int]], words: tuple[str, ...]
) -> None:
    request = pb.SetRoutesRequest(
        name="text", routes=[pb.Route(version=v, weight=w, mirror_percent=m) for v, w, m in routes]
    )
    code = (
        grpc.StatusCode.FAILED_PRECONDITION if "compatible" in words[0] else grpc.StatusCode.INVALID_ARGUMENT
    )
    await _expect(seeded, seeded.SetRoutes(request), code, *words)


async def test_two_shadows_at_once_are_refused_and_one_is_stored(seeded: Stub) -> None:
    await register(seeded, "1.2.0")
    two = [pb.Route(version="1.0.0", weight=100), pb.Route(version="1.1.0", mirror_percent=10)]
    two.append(pb.Route(version="1.2.0", mirror_percent=5))
    await _expect(seeded, seeded.SetRoutes(pb.SetRoutesRequest(name="text", routes=two)),
                  grpc.StatusCode.INVALID_ARGUMENT, "one shadow at a time")  # fmt: skip
    one = pb.SetRoutesRequest(name="text", routes=two[:2])
    stored = await seeded.SetRoutes(one)
    assert [(r.version, r.weight, r.mirror_percent) for r in stored.routes] == [
        ("1.0.0", 100, 0),
        ("1.1.0", 0, 10),
    ]
    again = await seeded.GetDeployment(pb.GetDeploymentRequest(name="text"))
    assert [r.mirror_percent for r in again.routes] == [0, 10]
