"""Values PostgreSQL cannot store (NUL characters) are the caller's INVALID_ARGUMENT, never INTERNAL,
and nothing is written."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from registry_support import Stub, checkpoint, text_signature

from modelyard.api import registry_pb2 as pb


@pytest.mark.parametrize(
    "field",
    [
        {"description": "null\x00byte"},
        {"tags": {"team": "a\x00b"}},
        {"lineage": pb.Lineage(git_commit="abc\x00")},
    ],
)
async def test_a_nul_character_is_invalid_argument_and_nothing_is_written(
    stub: Stub, field: dict[str, Any]
) -> None:
    version = pb.ModelVersion(
        model_id="nul",
        version="1.0.0",
        source_uri="/models/nul/1.0.0",
        checkpoint_hash=checkpoint("1.0.0"),
        loader="sentence-transformers",
        signature=text_signature(),
        **field,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterVersion(
            pb.RegisterVersionRequest(version=version, create_model=True, model_type=pb.TEXT_EMBEDDING)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "NUL" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetModel(pb.GetModelRequest(model_id="nul"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND, (
        "the model created in the same call is rolled back"
    )
