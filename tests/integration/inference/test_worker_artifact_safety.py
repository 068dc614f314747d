"""Artifact safety as worker processes show it: a version registered before the artifact rules
(source outside the roots) is refused without the worker reading or publishing anything about the
file; a restarted worker does not serve a cache entry whose bytes changed; code from an artifact
runs only on a worker started with --allow-remote-code; the cache's size limit never evicts what
the worker routes, and a load that does not fit fails while the old version keeps serving."""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import grpc
import numpy as np
import pytest
from grpc import aio
from registry_support import Stub as RegistryStub
from worker_support import WorkerFactory, registry_version, text_request, wait_model_ready, with_custom_module

from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc
from modelyard.api import registry_pb2 as rpb
from modelyard.api import registry_pb2_grpc as rpb_grpc
from modelyard.inference.artifacts import checkpoint_hash

pytestmark = pytest.mark.slow

# Every word the tiny models know, so a change to any row of their embedding table shows.
TEXTS = [
    "the a an of to and in is on for with at by from cat dog bird fish sat ran runs fast slow red",
    "blue green yellow model serving weights swap route canary version embedding image caption text",
    "hello world photo picture small large tiny quick brown fox jumps over lazy",
]
QUICK = {"MODELYARD_WORKER_PREIMPORT": "false"}  # these workers need not guard against GC pauses


def _embed(address: str, deployment: str) -> tuple[str, np.ndarray]:
    with grpc.insecure_channel(address) as channel:
        response = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(text_request(deployment, TEXTS))
    output = response.outputs[0]
    return response.model_version, np.asarray(output.contents.fp32_contents).reshape(list(output.shape))


def _wait(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def _static(path: Path, version: str = "1.0.0", **config: bool) -> rpb.Deployment:
    spec = registry_version(path, version, model_id="tiny", dim=32)
    for key, value in config.items():
        setattr(spec.inference_config, key, value)
    return rpb.Deployment(
        name="tiny",
        model_id="tiny",
        routes=[rpb.Route(version=version, weight=100)],
        versions=[spec],
        revision=1,
    )


async def _versions(reg: RegistryStub, deployment: str) -> dict[str, rpb.LoadedVersion]:
    workers = (await reg.ListWorkers(rpb.ListWorkersRequest(deployment=deployment))).workers
    return {
        v.version: v for w in workers for d in w.deployments if d.deployment == deployment for v in d.versions
    }


async def _wait_state(
    reg: RegistryStub, deployment: str, version: str, state: int, within_s: float = 120
) -> rpb.LoadedVersion:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = (await _versions(reg, deployment)).get(version)
        if found is not None and found.state == state:
            return found
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{deployment}@{version} never reached state {state}")


async def _wait_unloaded(reg: RegistryStub, deployment: str, version: str) -> None:
    """Until the worker no longer reports `version` (drained and unloaded)."""
    deadline = time.monotonic() + 60
    while version in await _versions(reg, deployment):
        assert time.monotonic() < deadline, f"{version} still loaded"
        await asyncio.sleep(0.2)


async def test_a_version_from_outside_the_roots_is_refused_and_nothing_about_the_file_is_published(
    registry: object,
    database_url: str,
    spawn_worker: WorkerFactory,
    tiny_models: dict[str, Path],
    tmp_path: Path,
) -> None:
    address = registry.address  # type: ignore[attr-defined]
    passwd = checkpoint_hash("/etc/passwd")
    async with aio.insecure_channel(address) as channel:
        reg = rpb_grpc.RegistryServiceStub(channel)
        await reg.RegisterVersion(
            rpb.RegisterVersionRequest(
                version=registry_version(tiny_models["st0"], "1.0.0", model_id="tiny", dim=32),
                create_model=True,
                model_type=rpb.TEXT_EMBEDDING,
            )
        )
        # What a registry without the rule let anyone register: /etc/passwd, with a wrong hash.
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE model_versions SET source_uri = 'file:///etc/passwd', checkpoint_hash = $1",
                "0" * 64,
            )
        finally:
            await conn.close()
        await reg.CreateDeployment(
            rpb.CreateDeploymentRequest(
                name="tiny", model_id="tiny", routes=[rpb.Route(version="1.0.0", weight=100)]
            )
        )
        worker = spawn_worker(registry=address, deployments=("tiny",), env=QUICK)
        failed = await _wait_state(reg, "tiny", "1.0.0", rpb.FAILED)
    assert "outside the artifact roots" in failed.last_error
    assert passwd not in failed.last_error and passwd not in worker.log()
    cache = tmp_path / "cache"
    assert not cache.exists() or [p.name for p in cache.iterdir() if len(p.name) == 64] == []


def _tamper(path: Path) -> None:
    """4 KiB of 1000.0s in the middle of `path`, size and mtime kept (only ctime can tell)."""
    before = path.stat()
    with path.open("r+b") as handle:
        handle.seek((before.st_size // 2) & ~3)
        handle.write(struct.pack("<f", 1000.0) * 1024)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns


def test_a_restarted_worker_does_not_serve_a_changed_cache_entry(
    spawn_worker: WorkerFactory, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    deployment = _static(tiny_models["st0"])
    first = spawn_worker(static=[deployment], env=QUICK)
    wait_model_ready(first.address, "tiny")
    _, before = _embed(first.address, "tiny")
    assert first.terminate() == 0

    cache = tmp_path / "cache"
    entry = cache / checkpoint_hash(tiny_models["st0"])
    _tamper(entry / "artifact" / "model.safetensors")
    leftover = cache / f".{'e' * 64}-cutshort"  # a fill a crash cut short
    (leftover / "artifact").mkdir(parents=True)

    second = spawn_worker(static=[deployment], env=QUICK)
    wait_model_ready(second.address, "tiny")
    _, after = _embed(second.address, "tiny")
    np.testing.assert_allclose(after, before, atol=1e-6)  # the weights it serves are the registered ones
    assert "artifact.cache_corrupt" in second.log()
    assert checkpoint_hash(entry / "artifact") == checkpoint_hash(tiny_models["st0"])
    assert not leftover.exists()


def test_artifact_code_runs_only_on_a_worker_started_with_allow_remote_code(
    spawn_worker: WorkerFactory, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "ran.txt"
    custom = with_custom_module(tiny_models["st0"], tmp_path / "custom", marker)
    deployment = _static(custom, trust_remote_code=True)
    env = {**QUICK, "HF_MODULES_CACHE": str(tmp_path / "hf-modules")}

    refusing = spawn_worker(static=[deployment], env=env)
    _wait(lambda: "version.load_failed" in refusing.log(), "the load to fail")
    assert "MODELYARD_WORKER_ALLOW_REMOTE_CODE" in refusing.log()  # the refusal names the setting
    assert not marker.exists()  # the artifact's code never ran
    refusing.kill()

    allowing = spawn_worker(static=[deployment], env=env, extra=("--allow-remote-code",))
    wait_model_ready(allowing.address, "tiny")
    assert marker.read_text() == "ran"
    assert _embed(allowing.address, "tiny")[1].shape == (len(TEXTS), 32)


async def test_the_cache_limit_evicts_only_what_no_route_uses_and_keeps_serving_when_full(
    registry: object, spawn_worker: WorkerFactory, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    models = {"1.0.0": tiny_models["st0"], "1.1.0": tiny_models["st1"]}
    models["1.2.0"] = build_tiny_sentence_transformer(tmp_path / "st2", seed=2)
    size = max(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in models.values())
    address = registry.address  # type: ignore[attr-defined]
    async with aio.insecure_channel(address) as channel:
        reg = rpb_grpc.RegistryServiceStub(channel)
        for version, path in models.items():
            await reg.RegisterVersion(
                rpb.RegisterVersionRequest(
                    version=registry_version(path, version, model_id="tiny", dim=32),
                    create_model=True,
                    model_type=rpb.TEXT_EMBEDDING,
                )
            )
        created = await reg.CreateDeployment(
            rpb.CreateDeploymentRequest(
                name="tiny", model_id="tiny", routes=[rpb.Route(version="1.0.0", weight=100)]
            )
        )
        # Room for two of the three artifacts.
        env = {**QUICK, "MODELYARD_WORKER_CACHE_MAX_BYTES": str(int(size * 2.5))}
        worker = spawn_worker(registry=address, deployments=("tiny",), env=env)
        cache = tmp_path / "cache"

        async def route(routes: dict[str, int]) -> int:
            changed = await reg.SetRoutes(
                rpb.SetRoutesRequest(
                    name="tiny", routes=[rpb.Route(version=v, weight=w) for v, w in routes.items()]
                )
            )
            return changed.revision

        async def converged(revision: int) -> None:
            status = await reg.GetRolloutStatus(
                rpb.GetRolloutStatusRequest(deployment="tiny", revision=revision, wait_timeout_ms=120_000)
            )
            assert status.converged, status

        def cached() -> set[str]:
            hashes = {checkpoint_hash(p): v for v, p in models.items()}
            return {hashes[p.name] for p in cache.iterdir() if p.name in hashes}

        await converged(created.revision)
        await converged(await route({"1.1.0": 100}))
        assert cached() == {"1.0.0", "1.1.0"}
        await _wait_unloaded(reg, "tiny", "1.0.0")
        await converged(await route({"1.2.0": 100, "1.1.0": 0}))  # 1.0.0 is routed no more: it goes
        assert cached() == {"1.1.0", "1.2.0"}

        await route({"1.2.0": 100, "1.1.0": 0, "1.0.0": 0})  # both cached ones are routed: no room
        failed = await _wait_state(reg, "tiny", "1.0.0", rpb.FAILED)
        assert "cache_max_bytes" in failed.last_error and "in use on this worker" in failed.last_error
        assert cached() == {"1.1.0", "1.2.0"}
        version, _ = _embed(worker.address, "tiny")
        assert version == "1.2.0"  # still serving
