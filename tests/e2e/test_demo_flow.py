"""The demo flow as a user runs it: `modelyard up` and every step through `modelyard` subprocesses
(tiny text models instead of MiniLM, to stay fast on two cores)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import free_port, single_error_line
from worker_support import text_request

from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
DEPLOYMENT = "text-embedding"


@dataclass
class Stack:
    up: subprocess.Popen[str]
    state: dict[str, Any]
    env: dict[str, str]
    root: Path

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "modelyard.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"modelyard {' '.join(args)} -> {done.returncode}\n{done.stderr}"
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.cli("--json", *args).stdout)

    def pids(self) -> list[int]:
        return [
            self.state["registry"]["pid"],
            self.state["benchmark"]["pid"],
            *(w["pid"] for w in self.state["workers"]),
        ]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="modelyard-e2e-"))
    root.chmod(0o755)  # the embedded PostgreSQL may run as an unprivileged user
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MODELYARD_ARTIFACT_STORE": str(root / "artifacts")}
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelyard.cli.main",
            "up",
            "--data-dir",
            str(root / "stack"),
            "--registry-port",
            "0",
            "--benchmark-port",
            "0",
            "--skip-seed",
            DEPLOYMENT,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state_file = root / "stack" / "stack.json"
    deadline = time.monotonic() + 240
    while not state_file.exists() and up.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not state_file.exists():
        up.kill()
        out, err = up.communicate()
        pytest.fail(f"modelyard up did not come up:\n{out}\n{err}")
    state = json.loads(state_file.read_text())
    env["MODELYARD_REGISTRY_ADDRESS"] = state["registry"]["address"]
    env["MODELYARD_BENCHMARK_ADDRESS"] = state["benchmark"]["address"]
    yield Stack(up, state, env, root)
    if up.poll() is None:
        up.kill()
        up.wait()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_text(stack: Stack) -> Path:
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    return build_tiny_sentence_transformer(stack.root / "tiny-text")


class SteadyLoad:
    def __init__(self, address: str) -> None:
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(address,), daemon=True)
        self._thread.start()

    def _run(self, address: str) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                try:
                    response = stub.ModelInfer(
                        text_request(DEPLOYMENT, ["hello world", "a red fox"]), timeout=30
                    )
                    self.versions[response.model_version] += 1
                except grpc.RpcError as error:
                    self.failures.append(f"{error.code().name}: {error.details()}")
                self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_stack_serves_the_tiny_demo_models_labelled_as_such(stack: Stack) -> None:
    models = {m["model_id"]: m for m in stack.json("models", "list")}
    for model_id in ("tiny-clip", "tiny-captioner"):
        assert "tiny demo model" in models[model_id]["description"]
        assert models[model_id]["tags"] == {"tiny-demo-model": "true"}
    deployments = {d["name"]: d for d in stack.json("deployments", "list")}
    assert "tiny demo model" in deployments["image-embedding"]["description"]
    assert "tiny demo model" in deployments["captioning"]["description"]
    status = stack.json("deployments", "status", "captioning")
    assert status["rollout"]["converged"] is True


def test_upgrade_flow_benchmark_promote_switch_rollback(stack: Stack, tiny_text: Path) -> None:
    t = str(tiny_text)
    stack.cli(
        "models", "import", t, "--model", "tiny-text", "--version", "1.0.0", "--tag", "tiny-demo-model=true"
    )
    imported = stack.json(
        "models", "import", t, "--model", "tiny-text", "--version", "1.1.0", "--quantization", "int8-dynamic"
    )
    assert imported["inference_config"]["quantization"] == "int8-dynamic"
    assert imported["source_uri"].startswith(f"file://{stack.root / 'artifacts'}/")
    assert imported["signature"]["embedding_dim"] == 32

    stack.cli("models", "alias", "tiny-text", "production", "1.0.0")
    stack.cli(
        "deployments", "create", DEPLOYMENT, "--model", "tiny-text", "--follow-alias", "production", "--wait"
    )
    staged = stack.json("deployments", "set-routes", DEPLOYMENT, "1.0.0=100", "1.1.0=0", "--wait")
    assert staged["rollout"]["converged"] is True

    worker = next(w for w in stack.state["workers"] if w["deployment"] == DEPLOYMENT)
    load = SteadyLoad(worker["address"])
    try:
        runs = stack.json("bench", "run", DEPLOYMENT, "1.0.0", "1.1.0", "--suite", "stdlib-docstrings")
        assert [r["version"] for r in runs] == ["1.0.0", "1.1.0"]
        assert all(r["status"] == "RUN_STATUS_SUCCEEDED" for r in runs), runs
        recall = {
            r["version"]: next(m["value"] for m in r["metrics"] if m["name"] == "recall@10") for r in runs
        }
        comparison = stack.json("bench", "compare", runs[0]["run_id"], runs[1]["run_id"])
        assert comparison["winner"] in ("baseline", "candidate", "tie", "mixed")
        assert {m["metric"] for m in comparison["metrics"]} >= {"recall@10", "ndcg@10"}
        markdown = stack.cli("bench", "export", runs[0]["run_id"], runs[1]["run_id"], "--format", "markdown")
        assert "recall@10" in markdown.stdout

        # A gate above what was measured is refused, naming the metric; nothing switches.
        refused = stack.cli(
            "deployments",
            "promote",
            DEPLOYMENT,
            "1.1.0",
            "--gate",
            f"recall@10 >= {recall['1.1.0'] + 0.01:.4f}",
            check=False,
        )
        assert refused.returncode == 3
        assert "recall@10" in single_error_line(refused.stderr)

        promoted = stack.json(
            "deployments",
            "promote",
            DEPLOYMENT,
            "1.1.0",
            "--gate",
            f"recall@10 >= {recall['1.1.0'] - 0.01:.4f}",
            "--wait",
        )
        assert promoted["promotion"]["gates"][0]["passed"] is True
        assert promoted["rollout"]["converged"] is True
        before = load.versions["1.1.0"]
        deadline = time.monotonic() + 10
        while load.versions["1.1.0"] <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        status = stack.json("deployments", "status", DEPLOYMENT)
        assert [(r["version"], r["weight"]) for r in status["deployment"]["routes"]] == [("1.1.0", 100)]
        assert status["workers"] and all(w["state"] == "serving" for w in status["workers"])
        served = [v["version"] for d in status["workers"][0]["deployments"] for v in d["versions"]]
        assert "1.1.0" in served

        rolled = stack.json("deployments", "rollback", DEPLOYMENT, "--wait")
        assert [(r["version"], r.get("weight", 0)) for r in rolled["deployment"]["routes"]] == [
            ("1.0.0", 100),
            ("1.1.0", 0),
        ]
        time.sleep(0.5)
    finally:
        load.stop()
    assert load.failures == []
    assert load.versions["1.0.0"] > 0 and load.versions["1.1.0"] > 0
    actions = [e["action"] for e in stack.json("deployments", "history", DEPLOYMENT)]
    assert actions[:3] == ["deployment.rollback", "alias.follow", "routes.set"]


def test_user_mistakes_are_one_line_with_distinct_exit_codes(stack: Stack, tmp_path: Path) -> None:
    unknown = stack.cli("deployments", "status", "no-such-deployment", check=False)
    assert unknown.returncode == 3 and "unknown deployment 'no-such-deployment'" in single_error_line(
        unknown.stderr
    )

    (tmp_path / "weights.bin").write_bytes(b"x")
    bad_version = stack.cli(
        "models",
        "import",
        str(tmp_path),
        "--model",
        "m",
        "--version",
        "1.x",
        "--loader",
        "sentence-transformers",
        check=False,
    )
    assert bad_version.returncode == 2 and "invalid version '1.x'" in single_error_line(bad_version.stderr)

    refused_version = stack.cli("deployments", "canary", "captioning", "v2", check=False)
    assert refused_version.returncode == 3, refused_version.stderr
    single_error_line(refused_version.stderr)

    missing = stack.cli(
        "models", "import", str(tmp_path / "missing"), "--model", "m", "--version", "1.0.0", check=False
    )
    assert missing.returncode == 2 and "no model at" in single_error_line(missing.stderr)

    down = stack.cli("--registry", f"127.0.0.1:{free_port()}", "models", "list", check=False)
    assert down.returncode == 4 and "is `modelyard up` running?" in single_error_line(down.stderr)


def test_sigterm_stops_every_process(stack: Stack) -> None:
    pids = stack.pids()
    stack.up.send_signal(signal.SIGTERM)
    assert stack.up.wait(60) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (stack.root / "stack" / "stack.json").exists()
