"""Artifacts in an object store, as a cluster keeps them. `modelyard up --auth --tls` with its
artifact store on an S3-compatible server (moto's standalone server, a process of its own on a free
port, reached over HTTP with credentials from the environment) imports its seed into the bucket;
the worker fetches it over S3 and checks its hash before serving it. A version whose bytes in the
bucket differ from its recorded hash fails to load while the routed one keeps serving; a version
in another bucket is refused at registration."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from up_support import UpStack, modelyard_up

from modelyard.client.sync import InferenceClient
from modelyard.inference.artifacts import checkpoint_hash
from modelyard.inference.tiny_models import build_tiny_sentence_transformer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

BUCKET = "modelyard-artifacts"
STORE = f"s3://{BUCKET}/store"
DEPLOYMENT = "text-embedding"
MODEL = "tiny-text"  # what `up --tiny-text` seeds
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "modelyard-test", "AWS_SECRET_ACCESS_KEY": "modelyard-test-secret"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ObjectStore:
    """The bucket as the test reads and rewrites it: boto3's plain blocking client. Not s3fs, which
    the services use: it keeps an event loop thread and HTTP sessions alive in the test process
    until the interpreter exits."""

    endpoint: str

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )

    def keys(self, prefix: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for item in listed.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return bytes(self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def write(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=BUCKET, Key=key, Body=data)


@pytest.fixture(scope="module")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    port = _free_port()
    log = (tmp_path_factory.mktemp("s3") / "moto.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the S3 server did not start"
                time.sleep(0.2)
        store = ObjectStore(endpoint)
        store.client().create_bucket(Bucket=BUCKET)
        yield store
    finally:
        server.terminate()
        server.wait(30)
        log.close()


class Stack(UpStack):
    def worker(self) -> InferenceClient:
        (address,) = [w["address"] for w in self.state["workers"] if w["deployment"] == DEPLOYMENT]
        return InferenceClient(
            address,
            token=self.env["MODELYARD_TOKEN"],
            tls=True,
            tls_ca_file=self.env["MODELYARD_TLS_CA_FILE"],
        )

    def loaded(self) -> dict[str, dict[str, Any]]:
        status = self.json("deployments", "status", DEPLOYMENT)
        return {
            v["version"]: v
            for w in status["workers"]
            for d in w.get("deployments", [])
            if d["deployment"] == DEPLOYMENT
            for v in d.get("versions", [])
        }


@pytest.fixture(scope="module")
def stack(object_store: ObjectStore) -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="modelyard-e2e-s3-"))
    root.chmod(0o755)  # the embedded PostgreSQL may run as an unprivileged user
    env = {
        **os.environ,
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": object_store.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "MODELYARD_ARTIFACT_STORE": STORE,
    }
    try:
        with modelyard_up(
            root, env, "--tiny-text", "--auth", "--tls", "--text-workers", "1",
            "--skip-seed", "image-embedding", "--skip-seed", "captioning", timeout_s=240,
        ) as running:  # fmt: skip
            for line in (root / "stack" / "client.env").read_text().splitlines():
                key, _, value = line.partition("=")
                env[key] = value
            yield Stack(env, running.state)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait(check: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return result


def test_the_seed_lives_in_the_bucket_and_the_worker_serves_it_from_there(
    stack: Stack, object_store: ObjectStore
) -> None:
    shown = stack.json("models", "show", MODEL, "0.1.0")["version"]
    checkpoint = shown["checkpoint_hash"]
    assert shown["source_uri"] == f"{STORE}/{checkpoint}", shown["source_uri"]
    stored = object_store.keys(f"store/{checkpoint}/")
    assert f"store/{checkpoint}/model.safetensors" in stored, stored
    with stack.worker() as worker:
        result = worker.embed_texts(DEPLOYMENT, ["a red fox", "model serving from a bucket"])
    assert result.version == "0.1.0" and result.vectors.shape == (2, 32)
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-4)
    assert stack.loaded()["0.1.0"]["checkpoint_hash"] == checkpoint


def test_bytes_changed_in_the_bucket_fail_the_load_and_the_routed_version_keeps_serving(
    stack: Stack, object_store: ObjectStore, tmp_path: Path
) -> None:
    source = build_tiny_sentence_transformer(tmp_path / "tiny-1", seed=1)
    imported = stack.json("models", "import", str(source), "--model", MODEL, "--version", "0.1.1")
    checkpoint = imported["checkpoint_hash"]
    assert imported["source_uri"] == f"{STORE}/{checkpoint}" == f"{STORE}/{checkpoint_hash(source)}"
    # After registration someone rewrites one byte of the weights in the bucket: what a tampered
    # or half-rewritten artifact looks like to a worker.
    weights = f"store/{checkpoint}/model.safetensors"
    data = bytearray(object_store.read(weights))
    data[-1] ^= 0xFF
    object_store.write(weights, bytes(data))
    # A version in another bucket is refused at registration: the registry's roots are the store.
    refused = stack.cli(
        "models", "register", "--model", MODEL, "--version", "0.1.2",
        "--source-uri", f"s3://another-bucket/{checkpoint}", "--checkpoint-hash", checkpoint,
        "--loader", "sentence-transformers", "--model-type", "text_embedding", check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "outside the artifact roots" in refused.stderr, refused.stderr
    stack.cli("deployments", "canary", DEPLOYMENT, "0.1.1", "--weight", "50")
    try:
        failed = _wait(
            lambda: (v := stack.loaded().get("0.1.1")) and v.get("state") == "FAILED" and v,
            "0.1.1 to fail its load",
        )
        assert "hash" in failed["last_error"].lower(), failed
        with stack.worker() as worker:
            for _ in range(20):  # half the traffic would go to 0.1.1 if it served: all gets 0.1.0
                assert worker.embed_texts(DEPLOYMENT, ["still served"]).version == "0.1.0"
    finally:
        stack.cli("deployments", "rollback", DEPLOYMENT)
    assert "0.1.0" in stack.loaded()
