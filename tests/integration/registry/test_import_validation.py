"""ImportRegistry checks every entry as the RPC that creates it does: a malformed document is
refused with a precise status whose message names the JSON path, and nothing is written."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from registry_support import Stub, checkpoint, register, routes_pb
from support import PostgresInstance

from modelyard.api import registry_pb2 as pb
from modelyard.client.channel import open_channel
from modelyard.registry.server import RegistryServer
from modelyard.registry.settings import RegistrySettings

FORMAT = "modelyard-registry/1"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _version(version: str, **extra: Any) -> dict[str, Any]:
    return {
        "model_id": "minilm",
        "version": version,
        "source_uri": f"/models/minilm/{version}",
        "checkpoint_hash": checkpoint(version),
        "loader": "sentence-transformers",
        "inference_config": {"max_batch_size": 16, "max_delay_ms": 2, "device": "cpu"},
        "signature": {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
            "embedding_dim": 384,
        },
        "lineage": {"parent_version": "", "git_commit": "abc123"},
        "tags": {"team": "search"},
        **extra,
    }


# A small valid document; each case below breaks one thing in it.
BASE: dict[str, Any] = {
    "format": FORMAT,
    "models": [{"model_id": "minilm", "model_type": "text_embedding", "tags": {"team": "search"}}],
    "versions": [_version("1.0.0"), _version("1.1.0", lineage={"parent_version": "1.0.0"})],
    "aliases": [{"model_id": "minilm", "alias": "production", "version": "1.1.0"}],
    "deployments": [
        {
            "name": "text",
            "model_id": "minilm",
            "routes": [{"version": "1.0.0", "weight": 90}, {"version": "1.1.0", "weight": 10}],
            "follow_alias": "",
        }
    ],
    "benchmark_runs": [
        {
            "run_id": "r1",
            "suite": "builtin",
            "model_id": "minilm",
            "version": "1.1.0",
            "status": "succeeded",
            "conditions": {"concurrency": "4"},
            "metrics": [{"name": "recall@10", "value": 0.9, "unit": "ratio", "samples": [0.8, 1.0, 0.9]}],
        }
    ],
}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting `a.0.b` (list indexes as numbers) to value."""

    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return apply


def _both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(doc)

    return apply


NOT_FOUND = grpc.StatusCode.NOT_FOUND
REFUSED = grpc.StatusCode.FAILED_PRECONDITION
EXISTS = grpc.StatusCode.ALREADY_EXISTS

# (id, mutation, status, words the message must contain: the JSON path first)
CASES: list[tuple[str, Callable[[dict[str, Any]], None], grpc.StatusCode, tuple[str, ...]]] = [
    ("wrong-format", _set("format", "mlflow/2"), INVALID, ("format: expected 'modelyard-registry/1'",)),
    ("unknown-top-level-key", _set("modles", []), INVALID, ("modles: unknown field",)),
    ("section-not-a-list", _set("models", {"minilm": {}}), INVALID, ("models: expected a list",)),
    ("entry-not-an-object", _set("versions.1", "1.1.0"), INVALID, ('versions[1]: expected an object, got "1.1.0"',)),
    ("model-id", _set("models.0.model_id", "Mini LM"), INVALID, ("models[0]: invalid model_id 'Mini LM'",)),
    ("model-id-too-long", _set("models.0.model_id", "m" * 64), INVALID, ("models[0]: invalid model_id", "1-63")),
    ("model-id-a-number", _set("models.0.model_id", 5), INVALID, ("models[0].model_id: expected a string, got 5",)),
    ("model-type", _set("models.0.model_type", "audio"), INVALID, ("models[0]: invalid model type 'audio'",)),
    ("tags-a-list", _set("models.0.tags", ["team"]), INVALID, ("models[0].tags: expected an object of strings",)),
    ("tag-value-a-number", _set("models.0.tags.team", 1), INVALID, ("models[0].tags.team: expected a string, got 1",)),
    ("same-model-twice-other-type", lambda d: d["models"].append({"model_id": "minilm", "model_type": "captioning"}),
     EXISTS, ("models[1]: import conflicts with the existing model minilm",)),
    ("semver", _set("versions.1.version", "1.1"), INVALID, ("versions[1]: invalid version '1.1'", "SemVer")),
    ("hash", _set("versions.0.checkpoint_hash", "abc"), INVALID, ("versions[0]: invalid checkpoint_hash 'abc'",)),
    ("batch-size-a-string", _set("versions.0.inference_config.max_batch_size", "x"), INVALID,
     ('versions[0].inference_config.max_batch_size: expected an integer, got "x"',)),
    ("batch-size-a-float", _set("versions.0.inference_config.max_batch_size", 8.5), INVALID,
     ("versions[0].inference_config.max_batch_size: expected an integer, got 8.5",)),
    ("batch-size-negative", _set("versions.0.inference_config.max_batch_size", -1), INVALID,
     ("versions[0]: inference_config.max_batch_size, max_delay_ms and max_batch_tokens must not be negative",)),
    ("engine-unknown", _set("versions.0.inference_config.engine", "tensorrt"), INVALID,
     ("versions[0]: inference_config.engine 'tensorrt' is unknown; use torch or onnxruntime",)),
    ("engine-for-another-loader",
     _both(_set("versions.0.inference_config.engine", "onnxruntime"), _set("versions.0.loader", "open-clip")),
     INVALID, ("versions[0]: inference_config.engine onnxruntime runs sentence-transformers versions only; "
               "this one uses open-clip",)),
    ("batch-size-beyond-int32", _set("versions.0.inference_config.max_batch_size", 2**40), INVALID,
     ("versions[0].inference_config.max_batch_size: 1099511627776 is out of range",)),
    ("trust-remote-code-a-string", _set("versions.0.inference_config.trust_remote_code", "yes"), INVALID,
     ('versions[0].inference_config.trust_remote_code: expected true or false, got "yes"',)),
    ("config-unknown-key", _set("versions.0.inference_config.max_batch", 4), INVALID,
     ("versions[0].inference_config.max_batch: unknown field",)),
    ("config-a-list", _set("versions.0.inference_config", [16, 2]), INVALID,
     ("versions[0].inference_config: expected an object, got a list",)),
    ("shape-a-string", _set("versions.0.signature.outputs.0.shape.1", "384"), INVALID,
     ('versions[0].signature.outputs[0].shape[1]: expected an integer, got "384"',)),
    ("parent-version", _set("versions.1.lineage.parent_version", "one"), INVALID, ("versions[1]: invalid version 'one'",)),
    ("source-uri-empty", _set("versions.0.source_uri", ""), INVALID, ("versions[0]: source_uri is required",)),
    ("source-uri-outside-artifact-roots", _set("versions.0.source_uri", "/etc/minilm"), INVALID, ("versions[0]:",)),
    ("loader-missing", _drop("versions.0.loader"), INVALID, ("versions[0].loader: required field is missing",)),
    ("version-status", _set("versions.0.status", "deleted"), INVALID, ("versions[0].status: expected one of ready, archived",)),
    ("version-of-unknown-model", _set("versions.1.model_id", "ghost"), NOT_FOUND, ("versions[1]: unknown model 'ghost'",)),
    ("nul-character", _set("versions.0.description", "a\x00b"), INVALID, ("versions[0].description: contains a NUL",)),
    ("lone-surrogate", _set("versions.0.tags.team", "\ud800"), INVALID, ("versions[0].tags.team: contains an unpaired",)),
    ("created-at", _set("versions.0.created_at", "yesterday"), INVALID, ("versions[0].created_at: expected an ISO 8601 time",)),
    ("alias-name", _set("aliases.0.alias", "Prod!"), INVALID, ("aliases[0]: invalid alias 'Prod!'",)),
    ("alias-to-unknown-version", _set("aliases.0.version", "9.9.9"), NOT_FOUND,
     ("aliases[0]: model 'minilm' has no version or alias '9.9.9'",)),
    ("alias-to-archived-version", _set("versions.1.status", "archived"), REFUSED,
     ("aliases[0]: version minilm 1.1.0 is archived",)),
    ("deployment-name", _set("deployments.0.name", "Text Embedding"), INVALID,
     ("deployments[0]: invalid deployment name 'Text Embedding'",)),
    ("weights-sum", _set("deployments.0.routes.1.weight", 20), INVALID, ("deployments[0]: route weights sum to 110",)),
    ("weight-a-string", _set("deployments.0.routes.0.weight", "90"), INVALID,
     ('deployments[0].routes[0].weight: expected an integer, got "90"',)),
    ("weight-over-100", _both(_set("deployments.0.routes.0.weight", 101), _set("deployments.0.routes.1.weight", -1)),
     INVALID, ("deployments[0]: weight 101 for version 1.0.0 is out of range",)),
    ("route-a-list", _set("deployments.0.routes.0", ["1.0.0", 90]), INVALID,
     ("deployments[0].routes[0]: expected an object, got a list",)),
    ("route-to-unregistered-version", _set("deployments.0.routes.1.version", "1.2.0"), NOT_FOUND,
     ("deployments[0]: model 'minilm' has no version 1.2.0",)),
    ("follow-missing-alias", _set("deployments.0.follow_alias", "staging"), NOT_FOUND,
     ("deployments[0]: model 'minilm' has no alias 'staging' to follow",)),
    ("run-status", _set("benchmark_runs.0.status", "done"), INVALID,
     ("benchmark_runs[0]: run status must be running, succeeded or failed",)),
    ("run-without-id", _set("benchmark_runs.0.run_id", ""), INVALID, ("benchmark_runs[0]: a benchmark run needs run_id",)),
    ("metric-twice", lambda d: d["benchmark_runs"][0]["metrics"].append({"name": "recall@10", "value": 0.1}),
     INVALID, ("benchmark_runs[0]: a run lists each metric once",)),
    ("metric-value-a-string", _set("benchmark_runs.0.metrics.0.value", "high"), INVALID,
     ('benchmark_runs[0].metrics[0].value: expected a number, got "high"',)),
    ("sample-null", _set("benchmark_runs.0.metrics.0.samples.2", None), INVALID,
     ("benchmark_runs[0].metrics[0].samples[2]: expected a number, got null",)),
    ("condition-a-list", _set("benchmark_runs.0.conditions.concurrency", [4]), INVALID,
     ("benchmark_runs[0].conditions.concurrency: expected a string, got a list",)),
    ("run-of-unknown-version", _set("benchmark_runs.0.version", "3.0.0"), NOT_FOUND,
     ("benchmark_runs[0]: model 'minilm' has no version or alias '3.0.0'",)),
]  # fmt: skip


async def _audit_count(stub: Stub) -> int:
    return len((await stub.ListAuditEvents(pb.ListAuditEventsRequest(page_size=500))).events)


async def _import(stub: Stub, text: str) -> pb.ImportRegistryResponse:
    return await stub.ImportRegistry(pb.ImportRegistryRequest(json=text), timeout=60)


async def _assert_empty(stub: Stub) -> None:
    exported = json.loads((await stub.ExportRegistry(pb.ExportRegistryRequest())).json)
    for section in ("models", "versions", "aliases", "deployments", "benchmark_runs"):
        assert exported[section] == [], f"{section} was written: {exported[section]}"
    assert await _audit_count(stub) == 0


async def _refused(stub: Stub, text: str, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _import(stub, text)
    details = err.value.details() or ""
    assert err.value.code() == code, details
    for word in words:
        assert word in details, details
    assert details.endswith("nothing was imported"), details
    await _assert_empty(stub)
    return details


async def test_the_base_document_imports(stub: Stub) -> None:
    counts = await _import(stub, json.dumps(BASE))
    assert (counts.models, counts.versions, counts.aliases, counts.deployments, counts.benchmark_runs) == (
        1, 2, 1, 1, 1,
    )  # fmt: skip
    deployment = await stub.GetDeployment(pb.GetDeploymentRequest(name="text"))
    assert deployment.revision == 1 and deployment.signature.embedding_dim == 384
    version = await stub.GetVersion(pb.GetVersionRequest(model_id="minilm", version="production"))
    assert version.version == "1.1.0" and version.lineage.parent_version == "1.0.0"
    assert version.inference_config.max_batch_size == 16


@pytest.mark.parametrize(("case", "mutate", "code", "words"), CASES, ids=[c[0] for c in CASES])
async def test_malformed_document_is_refused_whole(
    stub: Stub,
    case: str,
    mutate: Callable[[dict[str, Any]], None],
    code: grpc.StatusCode,
    words: tuple[str, ...],
) -> None:
    document = copy.deepcopy(BASE)
    mutate(document)
    await _refused(stub, json.dumps(document), code, *words)
    # The refused attempt left no trace: the valid document imports as into an empty registry.
    counts = await _import(stub, json.dumps(BASE))
    assert counts.unchanged == 0 and counts.versions == 2
    assert (await stub.GetDeployment(pb.GetDeploymentRequest(name="text"))).revision == 1


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", ("import is not valid JSON",)),
        ("[]", ("document: expected the import document, got a list",)),
        ('"modelyard-registry/1"', ("expected the import document",)),
        (f'{{"format": "{FORMAT}", "versions": [{{"model_id": 1{"0" * 5000}}}]}}', ("not valid JSON",)),
    ],
    ids=["not-json", "a-list", "a-string", "5000-digit-integer"],
)
async def test_not_an_export_is_invalid_argument(stub: Stub, text: str, words: tuple[str, ...]) -> None:
    await _refused(stub, text, INVALID, *words)


@pytest.mark.parametrize("depth", [33, 100_000])
async def test_deeply_nested_json_is_invalid_argument_not_internal(stub: Stub, depth: int) -> None:
    # 100,000 nested lists make Python's json parser raise RecursionError.
    text = f'{{"format": "{FORMAT}", "models": {"[" * depth}{"]" * depth}}}'
    await _refused(stub, text, INVALID, "nests deeper than 32 levels")


async def test_brackets_inside_strings_do_not_count_as_nesting(stub: Stub) -> None:
    document = copy.deepcopy(BASE)
    document["versions"][0]["description"] = '[{"' * 50_000 + '\\"]'
    counts = await _import(stub, json.dumps(document))
    assert counts.versions == 2
    stored = await stub.GetVersion(pb.GetVersionRequest(model_id="minilm", version="1.0.0"))
    assert stored.description == document["versions"][0]["description"]


@pytest_asyncio.fixture(loop_scope="session")
async def second_registry(
    postgres: PostgresInstance, migrated_template: str
) -> AsyncIterator[tuple[RegistryServer, str]]:
    """Another registry on its own fresh database, accepting messages up to 80 MiB."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.url())
    await admin.execute(f"CREATE DATABASE {name} TEMPLATE {migrated_template}")
    await admin.close()
    server = RegistryServer(
        RegistrySettings(
            database_url=postgres.url(name), port=0, metrics_port=None, max_message_bytes=80 * 2**20
        )
    )
    await server.start()
    try:
        yield server, name
    finally:
        await server.stop()
        admin = await asyncpg.connect(postgres.url())
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


def _big_document() -> str:
    document = copy.deepcopy(BASE)
    document["versions"][0]["description"] = "x" * (64 * 2**20 + 1)
    return json.dumps(document)


async def test_a_document_over_64_mib_is_refused(
    stub: Stub,
    registry: RegistryServer,
    second_registry: tuple[RegistryServer, str],
) -> None:
    text = _big_document()
    # A registry that accepts the message refuses the document, naming the limit.
    big_messages = [("grpc.max_send_message_length", 100 * 2**20)]
    async with grpc.aio.insecure_channel(second_registry[0].address, options=big_messages) as channel:
        other = Stub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _import(other, text)
        assert err.value.code() == INVALID, err.value.details()
        assert "imports at most 64 MiB" in (err.value.details() or "")
        await _assert_empty(other)
    # A registry with the default gRPC limit refuses the message itself.
    async with grpc.aio.insecure_channel(registry.address, options=big_messages) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _import(Stub(channel), text)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    await _assert_empty(stub)


async def test_a_rich_export_round_trips(stub: Stub, second_registry: tuple[RegistryServer, str]) -> None:
    await register(stub, "1.0.0")
    await register(stub, "1.1.0")
    await register(stub, "2.0.0-rc.1", dim=768)
    await stub.UpdateVersion(
        pb.UpdateVersionRequest(
            model_id="minilm", version="1.0.0", set_tags={"stage": "old"}, description="first [cut]"
        )
    )
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="production", version="1.1.0"))
    await stub.SetAlias(pb.SetAliasRequest(model_id="minilm", alias="canary", version="1.0.0"))
    await stub.CreateDeployment(
        pb.CreateDeploymentRequest(
            name="text", model_id="minilm", routes=routes_pb({"1.0.0": 90, "1.1.0": 10})
        )
    )
    await stub.CreateDeployment(
        pb.CreateDeploymentRequest(name="text-prod", model_id="minilm", follow_alias="production")
    )
    await stub.ArchiveVersion(pb.ArchiveVersionRequest(model_id="minilm", version="2.0.0-rc.1"))
    await stub.RecordBenchmarkRun(
        pb.RecordBenchmarkRunRequest(
            run=pb.BenchmarkRun(
                run_id="r1", suite="builtin", model_id="minilm", version="1.1.0",
                status=pb.RUN_STATUS_SUCCEEDED, conditions={"concurrency": "4"}, hardware="cpu",
                metrics=[
                    pb.Metric(name="recall@10", value=0.9, unit="ratio", samples=[0.8, 1.0]),
                    pb.Metric(name="p50_ms", value=12.5, unit="ms"),
                ],
            )
        )
    )  # fmt: skip
    exported = (await stub.ExportRegistry(pb.ExportRegistryRequest())).json

    async with open_channel(second_registry[0].address) as channel:
        other = Stub(channel)
        counts = await _import(other, exported)
        assert (counts.models, counts.versions, counts.aliases, counts.deployments, counts.benchmark_runs) == (
            1, 3, 2, 2, 1,
        )  # fmt: skip
        again = await _import(other, (await other.ExportRegistry(pb.ExportRegistryRequest())).json)
        assert again.unchanged == 9
        reexported = (await other.ExportRegistry(pb.ExportRegistryRequest())).json

    def stable(text: str) -> dict[str, Any]:
        """The export without what an import assigns anew (times, revisions)."""
        document = json.loads(text)
        for section in document.values():
            for entry in section if isinstance(section, list) else []:
                for volatile in ("updated_at", "revision", "created_at"):
                    entry.pop(volatile, None)
        return document

    assert stable(reexported) == stable(exported)
    # Versions keep their registration time.
    assert [v["created_at"] for v in json.loads(reexported)["versions"]] == [
        v["created_at"] for v in json.loads(exported)["versions"]
    ]
