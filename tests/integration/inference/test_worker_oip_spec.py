"""Must-show 1: a client written only from the public OIP v2 spec, in its own process, calls every
RPC; the served MiniLM embeddings equal in-process SentenceTransformer.encode within 1e-5."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from worker_support import WorkerFactory, registry_version, text_request, wait_model_ready

from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb

pytestmark = pytest.mark.slow

SPEC_CLIENT = Path(__file__).parent / "oip_spec" / "spec_client.py"
TEXTS = [
    "Model serving without restarts.",
    "A cat sat on the mat.",
    "Hot-swapping weights while requests keep flowing is the point of this worker.",
    "é ü 漢字 emoji 🚀",
]


def test_spec_client_calls_every_rpc_and_minilm_matches_encode(
    spawn_worker: WorkerFactory, minilm_dir: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    deployment = rpb.Deployment(
        name="text-embedding",
        model_id="minilm",
        routes=[rpb.Route(version="1.0.0", weight=100)],
        versions=[registry_version(minilm_dir, "1.0.0", model_id="minilm")],
        revision=1,
    )
    worker = spawn_worker(static=[deployment])
    wait_model_ready(worker.address, "text-embedding")
    run = subprocess.run(
        [sys.executable, str(SPEC_CLIENT), worker.address, "text-embedding", *TEXTS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["server"]["name"] == "modelyard-worker"
    assert got["metadata"] == {
        "name": "text-embedding",
        "versions": ["1.0.0"],
        "platform": "sentence-transformers",
        "inputs": [["text", "BYTES", [-1]]],
        "outputs": [["embedding", "FP32", [-1, 384]]],
    }
    typed, raw = got["typed"], got["raw"]
    assert (typed["id"], typed["model_name"], typed["model_version"]) == ("typed", "text-embedding", "1.0.0")
    assert (typed["name"], typed["datatype"], typed["shape"]) == ("embedding", "FP32", [4, 384])
    assert typed["raw_outputs"] == 0  # typed request -> typed answer
    assert raw["model_version"] == "1.0.0" and raw["typed_values"] == 0  # raw request -> raw answer

    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(np.array(typed["data"]), reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(raw["data"]), reference, atol=1e-5, rtol=0)
    assert worker.terminate() == 0


def test_sigterm_lets_in_flight_requests_finish_then_exits(
    spawn_worker: WorkerFactory, minilm_dir: Path
) -> None:
    deployment = rpb.Deployment(
        name="text-embedding",
        model_id="minilm",
        routes=[rpb.Route(version="1.0.0", weight=100)],
        versions=[registry_version(minilm_dir, "1.0.0", model_id="minilm", max_batch_size=32)],
        revision=1,
    )
    worker = spawn_worker(static=[deployment], extra=("--grace-period-s", "30"))
    wait_model_ready(worker.address, "text-embedding")
    with grpc.insecure_channel(worker.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        long_texts = [" ".join(TEXTS) + str(i) for i in range(32)]
        # Forward passes queued up, then SIGTERM while they run.
        futures = [stub.ModelInfer.future(text_request("text-embedding", long_texts)) for _ in range(6)]
        time.sleep(0.3)
        assert not all(f.done() for f in futures), "requests finished before SIGTERM; the test proves nothing"
        worker.proc.send_signal(signal.SIGTERM)
        responses = [f.result(timeout=60) for f in futures]
    assert all(r.model_version == "1.0.0" and list(r.outputs[0].shape) == [32, 384] for r in responses)
    assert worker.proc.wait(30) == 0
    assert "worker.stopping" in worker.log()
