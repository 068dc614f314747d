"""Failed loads: which are retried (transient) and which are not (permanent), the backoff, and the
applier retrying while the version is routed, on tiny models in one process."""

from __future__ import annotations

import asyncio
import errno
import random
import shutil
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import pytest_asyncio
from worker_support import artifact_cache, deployment_spec, version_spec

from modelyard.common.errors import PermissionDenied
from modelyard.common.states import VersionState
from modelyard.inference.artifacts import checkpoint_hash
from modelyard.inference.deployments import DeploymentApplier
from modelyard.inference.errors import (
    ArtifactRefused,
    ArtifactUnavailable,
    BadInput,
    CacheFull,
    CheckpointMismatch,
    RemoteCodeRefused,
    UnknownLoader,
    UnsupportedConfig,
)
from modelyard.inference.load_retry import RetryPolicy, is_transient
from modelyard.inference.routing import RoutingTable


class OutOfMemoryError(RuntimeError):
    """Named like torch's CUDA out-of-memory error."""


@pytest.mark.parametrize(
    ("error", "fetching", "transient"),
    [
        (ArtifactUnavailable("artifact file:///x does not exist"), True, True),
        (OSError(errno.ENOSPC, "No space left on device"), True, True),
        (PermissionError(errno.EACCES, "Permission denied"), True, True),
        (OSError(errno.ENOSPC, "No space left on device"), False, True),
        (OSError(errno.EMFILE, "Too many open files"), False, True),
        (MemoryError(), False, True),
        (OutOfMemoryError("CUDA out of memory"), False, True),
        (CacheFull("every cache entry is in use"), True, True),
        (CheckpointMismatch("artifact has sha256 a, registered b"), True, False),
        (ArtifactRefused("outside the artifact roots"), True, False),
        (RemoteCodeRefused("asks for trust_remote_code"), False, False),
        (UnknownLoader("names loader 'nope'"), False, False),
        (UnsupportedConfig("unknown quantization 'int4'"), False, False),
        (BadInput("bad vocabulary"), False, False),
        (PermissionDenied("remote code not allowed"), False, False),
        (OSError("model dir does not appear to have a file named config.json"), False, False),
        (PermissionError(errno.EACCES, "Permission denied"), False, False),
        (ValueError("state dict shapes differ"), False, False),
        (KeyError("pooling"), False, False),
    ],
)
def test_transient_and_permanent_failures(error: Exception, fetching: bool, transient: bool) -> None:
    assert is_transient(error, fetching=fetching) is transient


def test_backoff_doubles_up_to_the_ceiling_and_jitter_stays_within_it() -> None:
    policy = RetryPolicy(initial_s=0.5, max_s=6.0, jitter=0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0]
    spread = RetryPolicy(initial_s=1.0, max_s=8.0, jitter=0.2)
    rng = random.Random(7)
    delays = [spread.delay(3, rng) for _ in range(500)]
    assert 3.2 <= min(delays) < 3.4 and 4.6 < max(delays) <= 4.8  # 4 s +- 20 %
    assert all(spread.delay(20, rng) <= 8.0 for _ in range(200))


@pytest_asyncio.fixture(loop_scope="session")
async def applier(tmp_path: Path) -> AsyncIterator[DeploymentApplier]:
    load = ThreadPoolExecutor(1)
    applier = DeploymentApplier(
        RoutingTable(),
        artifact_cache(tmp_path / "cache"),
        load,
        retry=RetryPolicy(initial_s=0.05, max_s=0.2, jitter=0),
    )
    yield applier
    await applier.close()
    load.shutdown()


async def _until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _attempts(applier: DeploymentApplier, version: str) -> int:
    entry = applier.status["emb"].versions.get(version)
    return entry.attempts if entry is not None else 0


def _publish(source: Path, target: Path) -> None:
    """Make the artifact appear at `target` at once (copied beside it, then renamed)."""
    staging = target.with_name(target.name + ".partial")
    shutil.copytree(source, staging)
    staging.rename(target)


@pytest.mark.parametrize("weight", [100, 0], ids=["weighted", "staged"])
async def test_a_version_whose_artifact_appears_later_is_retried_until_it_serves(
    applier: DeploymentApplier, tiny_st: Path, tiny_st_other: Path, tmp_path: Path, weight: int
) -> None:
    v1 = version_spec(tiny_st, "1")
    late = tmp_path / "late-artifact"
    v2 = version_spec(late, "2", checkpoint=checkpoint_hash(tiny_st_other))
    applier.submit(deployment_spec("emb", {"1": 100}, [v1], revision=1))
    await asyncio.wait_for(applier.settled("emb"), 60)
    routes = {"2": 100} if weight else {"1": 100, "2": 0}
    applier.submit(deployment_spec("emb", routes, [v1, v2], revision=2))

    await _until(
        lambda: (
            _attempts(applier, "2") >= 3 and applier.status["emb"].versions["2"].state == VersionState.FAILED
        )
    )
    failed = applier.status["emb"].versions["2"]
    assert "does not exist" in failed.last_error
    assert applier.table.get("emb").revision == (1 if weight else 2)
    assert "1" in applier.table.get("emb").versions  # what served keeps serving meanwhile

    _publish(tiny_st_other, late)
    await _until(lambda: "2" in applier.table.get("emb").versions)
    routes_now = applier.table.get("emb")
    assert routes_now.revision == 2 and dict(routes_now.weights) == routes  # converged on its own
    served = applier.status["emb"].versions["2"]
    assert served.state == VersionState.SERVING and served.attempts >= 4 and served.next_attempt_at is None


async def test_a_permanent_failure_is_not_retried(applier: DeploymentApplier, tiny_st: Path) -> None:
    v1 = version_spec(tiny_st, "1")
    mismatched = version_spec(tiny_st, "2", checkpoint="0" * 64)
    applier.submit(deployment_spec("emb", {"1": 100}, [v1], revision=1))
    await asyncio.wait_for(applier.settled("emb"), 60)
    applier.submit(deployment_spec("emb", {"2": 100}, [v1, mismatched], revision=2))
    await asyncio.wait_for(applier.settled("emb"), 60)
    await asyncio.sleep(0.5)  # ten times the first backoff
    failed = applier.status["emb"].versions["2"]
    assert failed.state == VersionState.FAILED and "sha256" in failed.last_error
    assert failed.attempts == 1 and failed.next_attempt_at is None


async def test_a_newer_spec_cancels_the_retry_of_a_version_no_longer_routed(
    applier: DeploymentApplier, tiny_st: Path, tiny_st_other: Path, tmp_path: Path
) -> None:
    v1 = version_spec(tiny_st, "1")
    late = tmp_path / "late-artifact"
    v2 = version_spec(late, "2", checkpoint=checkpoint_hash(tiny_st_other))
    applier.submit(deployment_spec("emb", {"1": 100}, [v1], revision=1))
    await asyncio.wait_for(applier.settled("emb"), 60)
    applier.submit(deployment_spec("emb", {"2": 100}, [v1, v2], revision=2))
    await _until(lambda: _attempts(applier, "2") >= 2)  # being retried

    applier.submit(deployment_spec("emb", {"1": 100}, [v1], revision=3))  # 2 is no longer routed
    await asyncio.wait_for(applier.settled("emb"), 60)
    _publish(tiny_st_other, late)
    await asyncio.sleep(1.0)  # five times the longest backoff
    assert set(applier.table.get("emb").versions) == {"1"} and applier.table.get("emb").revision == 3
    assert set(applier.status["emb"].versions) == {"1"}
