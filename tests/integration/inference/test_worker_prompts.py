"""A real worker process serving a tiny E5-style model (prompts `query: ` / `passage: `): over gRPC and
over HTTP a request picks its prompt with the `prompt_name` parameter and gets
`SentenceTransformer.encode(prompt_name=...)`'s embeddings; the model metadata names the prompts; a
prompt the model does not define is refused with INVALID_ARGUMENT / HTTP 400."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx2
import numpy as np
import pytest
import tritonclient.http as triton_http
from prompt_support import with_prompts
from tritonclient.utils import InferenceServerException
from worker_support import registry_version, start_static_http_worker, text_request, wait_model_ready

from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb

TEXTS = ["the cat sat on the mat", "hello world", "a quick brown fox jumps over the lazy dog"]
ATOL = 1e-4


@pytest.fixture(scope="module")
def e5(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_prompts(tiny_models["st0"], tmp_path_factory.mktemp("prompts") / "e5")


@pytest.fixture(scope="module")
def worker(e5: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(gRPC address, HTTP address) of `python -m modelyard.inference` serving deployment `e5`."""
    root = tmp_path_factory.mktemp("worker")
    deployment = rpb.Deployment(
        name="e5", model_id="e5", routes=[rpb.Route(version="1.0.0", weight=100)],
        versions=[registry_version(e5, "1.0.0", model_id="e5", dim=32)], revision=1,
    )  # fmt: skip
    process, http_address = start_static_http_worker(root, deployment)
    try:
        wait_model_ready(process.address, "e5")
        yield process.address, http_address
        assert process.terminate() == 0, process.log()
    finally:
        process.kill()


def _encode(path: Path, prompt_name: str) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return np.asarray(SentenceTransformer(str(path), device="cpu").encode(TEXTS, prompt_name=prompt_name))


def _grpc_infer(address: str, **parameters: oip.InferParameter) -> np.ndarray:
    request = text_request("e5", TEXTS)
    for name, value in parameters.items():
        request.parameters[name].CopyFrom(value)
    with grpc.insecure_channel(address) as channel:
        reply = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    output = reply.outputs[0]
    return np.array(output.contents.fp32_contents, dtype=np.float32).reshape(list(output.shape))


def _text_input(texts: list[str]) -> triton_http.InferInput:
    tensor = triton_http.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return tensor


def test_grpc_requests_pick_their_prompt_and_the_metadata_names_them(
    worker: tuple[str, str], e5: Path
) -> None:
    address, _ = worker
    query = _grpc_infer(address, prompt_name=oip.InferParameter(string_param="query"))
    passage = _grpc_infer(address, prompt_name=oip.InferParameter(string_param="passage"))
    np.testing.assert_allclose(query, _encode(e5, "query"), rtol=0, atol=ATOL)
    np.testing.assert_allclose(passage, _encode(e5, "passage"), rtol=0, atol=ATOL)
    assert np.abs(query - passage).max() > 1e-2
    with grpc.insecure_channel(address) as channel:
        meta = oip_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(oip.ModelMetadataRequest(name="e5"))
    assert {k: v.string_param for k, v in meta.parameters.items()} == {
        "prompt_name.choice.passage": "passage: ",
        "prompt_name.choice.query": "query: ",
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (oip.InferParameter(string_param="nope"), "'nope', not one of version 1.0.0's prompts: passage"),
        (oip.InferParameter(int64_param=1), "send a string"),
    ],
)
def test_grpc_refuses_a_prompt_the_model_does_not_define(
    worker: tuple[str, str], value: oip.InferParameter, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _grpc_infer(worker[0], prompt_name=value)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (refused.value.details() or "")


def test_http_requests_pick_their_prompt_and_a_bad_one_is_a_400(worker: tuple[str, str], e5: Path) -> None:
    _, http_address = worker
    with triton_http.InferenceServerClient(http_address) as client:
        query = client.infer("e5", [_text_input(TEXTS)], parameters={"prompt_name": "query"})
        meta = client.get_model_metadata("e5")
        with pytest.raises(InferenceServerException) as refused:
            client.infer("e5", [_text_input(TEXTS)], parameters={"prompt_name": "nope"})
    np.testing.assert_allclose(query.as_numpy("embedding"), _encode(e5, "query"), rtol=0, atol=ATOL)
    assert meta["parameters"]["prompt_name.choice.query"] == "query: "
    assert refused.value.status() == "400" and "passage" in refused.value.message()
    body = {
        "inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}],
        "parameters": {"prompt_name": 7},
    }
    reply = httpx2.post(f"http://{http_address}/v2/models/e5/infer", json=body, timeout=30)
    assert reply.status_code == 400 and "send a string" in reply.json()["error"]
