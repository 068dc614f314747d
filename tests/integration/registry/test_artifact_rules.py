"""Registration applies the artifact rules: a source_uri outside the configured artifact roots (or
naming `..`, a relative path, a scheme no root allows) is refused with INVALID_ARGUMENT, a plain path
is stored as its file:// URI, and a version asking for remote code is audited with its actor — by
RegisterVersion and by ImportRegistry alike."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from registry_support import Stub, checkpoint, text_signature

from modelyard.api import registry_pb2 as pb
from modelyard.client import ClientSettings
from modelyard.client.channel import open_channel
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings

ROOTS = "file:///srv/models/,s3://models-bucket/"


@pytest_asyncio.fixture(loop_scope="session")
async def admin(database_url: str) -> AsyncIterator[Stub]:
    """A registry with its own artifact roots and an admin token named `ops`."""
    server = RegistryServer(
        RegistrySettings(
            database_url=database_url,
            port=0,
            metrics_port=None,
            admin_tokens="ops:admin-secret",
            artifact_roots=ROOTS,
        )
    )
    await server.start()
    try:
        async with open_channel(server.address, ClientSettings(token="admin-secret")) as channel:
            yield Stub(channel)
    finally:
        await server.stop()


def _request(version: str, source_uri: str, *, trust_remote_code: bool = False) -> pb.RegisterVersionRequest:
    return pb.RegisterVersionRequest(
        version=pb.ModelVersion(
            model_id="minilm",
            version=version,
            source_uri=source_uri,
            checkpoint_hash=checkpoint(version),
            loader="sentence-transformers",
            inference_config=pb.InferenceConfig(trust_remote_code=trust_remote_code),
            signature=text_signature(),
        ),
        create_model=True,
        model_type=pb.TEXT_EMBEDDING,
    )


@pytest.mark.parametrize(
    ("source_uri", "why"),
    [
        ("file:///etc/passwd", "outside the artifact roots"),
        ("/etc/passwd", "outside the artifact roots"),
        ("/srv/models/../../etc/passwd", "`..`"),
        ("file:///srv/models/minilm/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "`..`"),
        ("srv/models/minilm", "relative"),
        ("http://example.com/models/minilm", "scheme http://"),
        ("s3://other-bucket/minilm", "outside the artifact roots"),
    ],
)
async def test_sources_the_rules_refuse_are_invalid_arguments(admin: Stub, source_uri: str, why: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.RegisterVersion(_request("1.0.0", source_uri))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert why in details
    if "roots" in why or "scheme" in why:
        assert "file:///srv/models/, s3://models-bucket/" in details
        assert "MODELYARD_ARTIFACT_ROOTS" in details
    listed = await admin.ListModels(pb.ListModelsRequest())
    assert list(listed.models) == []  # nothing was created, not even the model


async def test_a_plain_path_is_stored_as_its_file_uri(admin: Stub) -> None:
    stored = await admin.RegisterVersion(_request("1.0.0", "/srv/models/minilm//1.0.0/"))
    assert stored.source_uri == "file:///srv/models/minilm/1.0.0"
    stored = await admin.RegisterVersion(_request("1.1.0", "s3://models-bucket/minilm/1.1.0"))
    assert stored.source_uri == "s3://models-bucket/minilm/1.1.0"


async def _audit(stub: Stub, action: str) -> list[pb.AuditEvent]:
    return list((await stub.ListAuditEvents(pb.ListAuditEventsRequest(action=action))).events)


async def test_a_version_asking_for_remote_code_is_audited_with_its_actor(admin: Stub) -> None:
    await admin.RegisterVersion(_request("1.0.0", "/srv/models/minilm/1.0.0"))
    assert await _audit(admin, "version.remote_code") == []
    await admin.RegisterVersion(_request("2.0.0", "/srv/models/minilm/2.0.0", trust_remote_code=True))
    [row] = await _audit(admin, "version.remote_code")
    assert (row.actor, row.entity_type, row.entity_id) == ("ops", "version", "minilm:2.0.0")
    assert json.loads(row.after_json)["source_uri"] == "file:///srv/models/minilm/2.0.0"
    assert "--allow-remote-code" in row.reason


async def test_import_applies_the_same_rules(admin: Stub) -> None:
    await admin.RegisterVersion(_request("1.0.0", "/srv/models/minilm/1.0.0"))
    document = json.loads((await admin.ExportRegistry(pb.ExportRegistryRequest())).json)
    [version] = document["versions"]
    version.update(version="2.0.0", source_uri="/etc/passwd")  # as if exported elsewhere
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.ImportRegistry(pb.ImportRegistryRequest(json=json.dumps(document)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside the artifact roots" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError):
        await admin.GetVersion(pb.GetVersionRequest(model_id="minilm", version="2.0.0"))

    version["source_uri"] = "/srv/models/minilm/2.0.0"
    version["inference_config"]["trust_remote_code"] = True
    await admin.ImportRegistry(pb.ImportRegistryRequest(json=json.dumps(document)))
    imported = await admin.GetVersion(pb.GetVersionRequest(model_id="minilm", version="2.0.0"))
    assert imported.source_uri == "file:///srv/models/minilm/2.0.0"
    [row] = await _audit(admin, "version.remote_code")
    assert (row.actor, row.entity_id) == ("ops", "minilm:2.0.0")
