"""Helpers the inference-worker tests share: tiny model artifacts, specs, OIP requests."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format
from support import ServerProcess, wait_until

from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.common.artifact_roots import ARTIFACT_ROOTS_ENV, ArtifactRoots
from modelyard.common.modelspec import InferenceConfig
from modelyard.inference.artifacts import ArtifactCache, checkpoint_hash
from modelyard.inference.domain import DeploymentSpec, VersionSpec

# The generated stub on a grpc.aio channel; its awaitable type exists only in the type stubs.
if TYPE_CHECKING:
    from modelyard.api.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceAsyncStub as InferenceStub
else:
    InferenceStub = oip_grpc.GRPCInferenceServiceStub

# spawn_worker(static=..., registry=..., deployments=..., extra=..., env=...) -> a running worker process
WorkerFactory = Callable[..., ServerProcess]


def png(color: tuple[int, int, int] = (10, 200, 30), size: int = 24) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def session_roots() -> ArtifactRoots:
    """The artifact roots of the test session (tests/conftest.py sets them in the environment)."""
    return ArtifactRoots.parse(os.environ[ARTIFACT_ROOTS_ENV])


def artifact_cache(root: Path, **options: Any) -> ArtifactCache:
    """An artifact cache in `root` that accepts the test session's artifact roots."""
    return ArtifactCache(root, session_roots(), **options)


def version_spec(
    path: Path,
    version: str,
    *,
    loader: str = "sentence-transformers",
    model_id: str = "tiny",
    checkpoint: str | None = None,
    **config: object,
) -> VersionSpec:
    return VersionSpec(
        model_id=model_id,
        version=version,
        source_uri=str(path),
        checkpoint_hash=checkpoint or checkpoint_hash(path),
        loader=loader,
        config=InferenceConfig(**{"max_batch_size": 16, "max_delay_ms": 2, "device": "cpu", **config}),  # type: ignore[arg-type]
    )


def deployment_spec(
    name: str, routes: dict[str, int], versions: list[VersionSpec], revision: int = 1
) -> DeploymentSpec:
    return DeploymentSpec(
        name=name,
        model_id=versions[0].model_id,
        routes=tuple(routes.items()),
        versions=tuple(versions),
        revision=revision,
    )


def registry_version(
    path: Path,
    version: str,
    *,
    model_id: str,
    loader: str = "sentence-transformers",
    checkpoint: str | None = None,
    quantization: str = "",
    max_batch_size: int = 32,
    max_delay_ms: int = 2,
    dim: int = 384,
) -> rpb.ModelVersion:
    return rpb.ModelVersion(
        model_id=model_id,
        version=version,
        source_uri=f"file://{path}",
        checkpoint_hash=checkpoint or checkpoint_hash(path),
        loader=loader,
        inference_config=rpb.InferenceConfig(
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
            device="cpu",
            dtype="float32",
            quantization=quantization,
        ),
        signature=rpb.Signature(
            inputs=[rpb.TensorSpec(name="text", datatype="BYTES", shape=[-1])],
            outputs=[rpb.TensorSpec(name="embedding", datatype="FP32", shape=[-1, dim])],
            embedding_dim=dim,
        ),
    )


def text_request(deployment: str, texts: list[str], version: str = "") -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=deployment, model_version=version)
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return request


def wait_model_ready(address: str, deployment: str, version: str = "", timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if stub.ModelReady(oip.ModelReadyRequest(name=deployment, version=version)).ready:
                return
            time.sleep(0.1)
    raise TimeoutError(f"{deployment}:{version or '*'} not ready on {address} after {timeout}s")


def start_static_http_worker(root: Path, deployment: rpb.Deployment) -> tuple[ServerProcess, str]:
    """`python -m modelyard.inference` serving `deployment` from a static file (no registry), with
    OIP over HTTP on a free port: (the process, the HTTP host:port it logged)."""
    static = root / "static.json"
    static.write_text(json.dumps([json_format.MessageToDict(deployment)]))
    process = ServerProcess(
        ["-m", "modelyard.inference", "--port", "0", "--metrics-port", "0", "--http-port", "0",
         "--no-preimport", "--static-deployments", str(static), "--cache-dir", str(root / "cache"),
         "--grace-period-s", "2"],
        timeout=120,
    )  # fmt: skip
    try:
        assert wait_until(lambda: any("http.started" in line for line in process.lines), 30), process.log()
    except BaseException:
        process.kill()
        raise
    line = next(line for line in process.lines if "http.started" in line)
    return process, line.split("address=", 1)[1].split()[0]


def start_worker(
    cache_dir: Path,
    *,
    registry: str,
    deployments: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """`python -m modelyard.inference` following `registry` for `deployments`, on free ports."""
    args = ["-m", "modelyard.inference", "--port", "0", "--metrics-port", "0", "--registry", registry]
    args += ["--cache-dir", str(cache_dir), "--grace-period-s", "5"]
    for name in deployments:
        args += ["--deployment", name]
    return ServerProcess([*args, *extra], env=env, timeout=120)


def with_custom_module(source: Path, target: Path, marker: Path) -> Path:
    """A copy of the tiny sentence-transformer at `source` whose Normalize module is a class of its
    own, shipped in the artifact; importing that class writes `marker` (proof that code ran)."""
    shutil.copytree(source, target)
    (target / "custom_norm.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from sentence_transformers.base.modules.normalize import Normalize\n\n\n"
        "class CustomNormalize(Normalize):\n"
        "    pass\n"
    )
    modules = json.loads((target / "modules.json").read_text())
    modules[2]["type"] = "custom_norm.CustomNormalize"
    (target / "modules.json").write_text(json.dumps(modules))
    return target
