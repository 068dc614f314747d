"""The demo flow as a user runs it: `modelyard up` and every step through `modelyard` subprocesses
(tiny text models instead of MiniLM, to stay fast on two cores), in two configurations: the
default (no auth, plaintext, loopback) and the one users deploy — admin and reader tokens and TLS
on every server and client."""

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

from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.common.auth import new_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
DEPLOYMENT = "text-embedding"


@dataclass
class Stack:
    up: subprocess.Popen[str]
    state: dict[str, Any]
    env: dict[str, str]
    root: Path
    production: bool = False
    admin_token: str = ""
    reader_token: str = ""

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

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "modelyard.cli.main", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def channel(self, address: str) -> grpc.Channel:
        """A channel as a backend service would open it: TLS with the stack's CA when it is on."""
        if not self.production:
            return grpc.insecure_channel(address)
        ca = Path(self.state["tls_ca_file"]).read_bytes()
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca))

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.reader_token}"),) if self.production else ()

    def pids(self) -> list[int]:
        return [
            self.state["registry"]["pid"],
            self.state["benchmark"]["pid"],
            *(w["pid"] for w in self.state["workers"]),
        ]


@pytest.fixture(scope="module", params=["default", "production"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    production = request.param == "production"
    root = Path(tempfile.mkdtemp(prefix=f"modelyard-e2e-{request.param}-"))
    root.chmod(0o755)  # the embedded PostgreSQL may run as an unprivileged user
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "MODELYARD_ARTIFACT_STORE": str(root / "artifacts"),
    }
    admin_token, reader_token = (new_token(), new_token()) if production else ("", "")
    extra: list[str] = []
    if production:
        # The user's own tokens, as an operator sets them; `up --tls` makes the certificates.
        env["MODELYARD_ADMIN_TOKENS"] = f"ops:{admin_token}"
        env["MODELYARD_READER_TOKENS"] = f"dash:{reader_token}"
        extra = ["--tls"]
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
            "--console-port",
            "0",
            "--skip-seed",
            DEPLOYMENT,
            *extra,
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
    if production:
        for name in ("MODELYARD_ADMIN_TOKENS", "MODELYARD_READER_TOKENS"):
            del env[name]  # the CLI is a client: it holds one token, not the servers' lists
        env.update(
            MODELYARD_TOKEN=admin_token, MODELYARD_TLS="true", MODELYARD_TLS_CA_FILE=state["tls_ca_file"]
        )
    yield Stack(up, state, env, root, production, admin_token, reader_token)
    if up.poll() is None:
        up.kill()
        up.wait()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_text(stack: Stack) -> Path:
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    return build_tiny_sentence_transformer(stack.root / "tiny-text")


class SteadyLoad:
    """A backend calling ModelInfer back to back (with a reader token over TLS in production)."""

    def __init__(self, stack: Stack, address: str) -> None:
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(stack, address), daemon=True)
        self._thread.start()

    def _run(self, stack: Stack, address: str) -> None:
        metadata = stack.call_metadata()
        with stack.channel(address) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                try:
                    response = stub.ModelInfer(
                        text_request(DEPLOYMENT, ["hello world", "a red fox"]), timeout=30, metadata=metadata
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
    # The change stream (a server stream: it carries its token like every unary call), from here
    # on: the canary, the promotion and the rollback.
    watch = stack.popen(
        "--json",
        "deployments",
        "watch",
        DEPLOYMENT,
        "--since",
        str(staged["deployment"]["revision"]),
        "--count",
        "3",
    )

    worker = next(w for w in stack.state["workers"] if w["deployment"] == DEPLOYMENT)
    load = SteadyLoad(stack, worker["address"])
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

        canary = stack.json("deployments", "canary", DEPLOYMENT, "1.1.0", "--weight", "30", "--wait")
        assert canary["rollout"]["converged"] is True
        assert [(r["version"], r["weight"]) for r in canary["deployment"]["routes"]] == [
            ("1.0.0", 70),
            ("1.1.0", 30),
        ]
        before = load.versions["1.1.0"]
        deadline = time.monotonic() + 10
        while load.versions["1.1.0"] <= before + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert load.versions["1.1.0"] > before + 3, "the canary gets traffic"

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
            ("1.0.0", 70),
            ("1.1.0", 30),
        ]
        time.sleep(0.5)
    finally:
        load.stop()
    assert load.failures == []
    assert load.versions["1.0.0"] > 0 and load.versions["1.1.0"] > 0
    actions = [e["action"] for e in stack.json("deployments", "history", DEPLOYMENT)]
    assert actions[:4] == ["deployment.rollback", "alias.follow", "routes.set", "routes.set"]

    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["action"] for e in events] == ["routes.set", "alias.follow", "deployment.rollback"]


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


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


def test_each_process_holds_only_its_own_credentials(stack: Stack) -> None:
    services = {
        "registry": stack.state["registry"]["pid"],
        "benchmark": stack.state["benchmark"]["pid"],
        **{w["name"]: w["pid"] for w in stack.state["workers"]},
    }
    environs = {name: _environ(pid) for name, pid in services.items()}
    tokens = {name: env.get("MODELYARD_TOKEN", "") for name, env in environs.items()}
    if not stack.production:
        assert set(tokens.values()) == {""}
        return
    for name, env in environs.items():
        text = "\n".join(f"{k}={v}" for k, v in env.items())
        assert stack.admin_token not in text and stack.reader_token not in text, f"{name} holds a user token"
        assert env["MODELYARD_TLS"] == "true" and env["MODELYARD_TLS_CERT_FILE"], name
    assert tokens["registry"] == "", "the registry calls nobody: it holds verifiers only"
    clients = [t for name, t in tokens.items() if name != "registry"]
    assert all(clients) and len(set(clients)) == len(clients), "each client process has its own token"


def test_tokens_and_tls_are_enforced_when_on(stack: Stack) -> None:
    anonymous = {k: v for k, v in stack.env.items() if k != "MODELYARD_TOKEN"}
    listed = subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", "models", "list"],
        env=anonymous, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    reader = stack.cli(
        "--token", stack.reader_token or "unused", "deployments", "rollback", DEPLOYMENT, check=False
    )
    plaintext = {k: v for k, v in stack.env.items() if not k.startswith("MODELYARD_TLS")}
    insecure = subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", "--timeout", "3", "models", "list"],
        env=plaintext, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if not stack.production:
        assert listed.returncode == 0 and insecure.returncode == 0
        return
    assert listed.returncode == 3 and "missing credentials" in single_error_line(listed.stderr)
    assert reader.returncode == 3
    assert "'dash' holds a reader token, which may not call RollbackDeployment" in single_error_line(
        reader.stderr
    )
    assert insecure.returncode == 4, insecure.stderr
    single_error_line(insecure.stderr)
    # The backend's reader token over TLS may call models; without a token it may not.
    worker = next(w for w in stack.state["workers"] if w["deployment"] == "captioning")
    with stack.channel(worker["address"]) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(oip.ServerReadyRequest(), timeout=10, metadata=stack.call_metadata()).ready
        with pytest.raises(grpc.RpcError) as refused:
            stub.ServerReady(oip.ServerReadyRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_workers_serve_oip_over_http_as_over_grpc(stack: Stack) -> None:
    """`modelyard up` gives each worker an OIP HTTP port (HTTPS and tokens in production), listed in
    stack.json; tritonclient.http gets the embedding the gRPC side gives for the same image."""
    import io

    import numpy as np
    import tritonclient.http as triton
    from PIL import Image

    worker = next(w for w in stack.state["workers"] if w["deployment"] == "image-embedding")
    url = worker["http_url"]
    assert url.startswith("https://" if stack.production else "http://") and url.endswith("/v2"), url
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 90)).save(buffer, format="PNG")
    png = buffer.getvalue()
    request = oip.ModelInferRequest(
        model_name="image-embedding",
        inputs=[oip.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1],
                                                       contents=oip.InferTensorContents(bytes_contents=[png]))],
    )  # fmt: skip
    with stack.channel(worker["address"]) as channel:
        reply = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=30, metadata=stack.call_metadata()
        )
    output = reply.outputs[0]
    expected = np.array(output.contents.fp32_contents, dtype=np.float32).reshape(list(output.shape))
    host = url.split("://", 1)[1].removesuffix("/v2")
    options = {"ca_certs": stack.state["tls_ca_file"]} if stack.production else {}
    headers = {"Authorization": f"Bearer {stack.reader_token}"} if stack.production else {}
    with triton.InferenceServerClient(host, ssl=stack.production, ssl_options=options) as client:
        image = triton.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([png], dtype=object), binary_data=True)
        result = client.infer("image-embedding", [image], headers=headers)
        assert result.get_response()["model_version"] == reply.model_version
        np.testing.assert_allclose(result.as_numpy("embedding"), expected, atol=1e-6)
        if stack.production:
            with pytest.raises(triton.InferenceServerException, match=r"credentials|token"):
                client.infer("image-embedding", [image])


def test_sigterm_stops_every_process(stack: Stack) -> None:
    pids = stack.pids()
    stack.up.send_signal(signal.SIGTERM)
    assert stack.up.wait(60) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (stack.root / "stack" / "stack.json").exists()
