"""The registry as the benchmark sees it: staging versions at weight 0, live workers, version settings."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import grpc

from modelyard.api import registry_pb2
from modelyard.benchmark.registry_store import registry_failure
from modelyard.benchmark.runner import WorkerInfo
from modelyard.client import ModelyardError, RegistryClient
from modelyard.common.errors import FailedPrecondition
from modelyard.common.log import event

log = logging.getLogger("modelyard.benchmark")


class RegistryVersionStager:
    """Stages a version on a deployment at weight 0 (StageVersion: other routes untouched), waits
    until every live worker reports it loaded (GetRolloutStatus), and removes that route again
    afterwards (UnstageVersion, which never touches a route with traffic). Those two RPCs are all
    the benchmark's token may change in a deployment.

    Concurrent runs staging the same version share one staged route (counted); the route goes
    when the last of them unstages. A version that some route already names is never touched."""

    def __init__(
        self,
        registry: RegistryClient,
        *,
        rollout_timeout_s: float = 300.0,
        poll_s: float = 1.0,
    ) -> None:
        self._registry = registry
        self.rollout_timeout_s = rollout_timeout_s
        self.poll_s = poll_s
        self._lock = asyncio.Lock()
        self._staged: Counter[tuple[str, str]] = Counter()

    async def stage(self, deployment: str, version: str, *, reason: str = "") -> None:
        key = (deployment, version)
        async with self._lock:
            current = await self._deployment(deployment)
            if self._staged[key] > 0 or not any(r.version == version for r in current.routes):
                revision = current.revision
                if self._staged[key] == 0:
                    revision = await self._add_staged_route(deployment, version, reason)
                self._staged[key] += 1
                ours = True
            else:  # routed by someone else: load it if needed, but it is not ours to remove
                revision, ours = current.revision, False
        try:
            await self._wait_loaded(deployment, version, revision)
        except BaseException:
            if ours:
                await self.unstage(deployment, version)
            raise

    async def unstage(self, deployment: str, version: str) -> None:
        key = (deployment, version)
        async with self._lock:
            if self._staged[key] == 0:
                return
            self._staged[key] -= 1
            if self._staged[key] > 0:
                return
            del self._staged[key]
            try:
                await self._registry.unstage_version(
                    registry_pb2.UnstageVersionRequest(
                        name=deployment, version=version, reason=f"benchmark: unstage {version}"
                    )
                )
            except ModelyardError as error:
                if error.code == grpc.StatusCode.FAILED_PRECONDITION:
                    return  # someone gave it traffic meanwhile: no longer ours to remove
                raise registry_failure(error, "UnstageVersion") from None
            event(log, "version.unstaged", deployment=deployment, version=version)

    async def _add_staged_route(self, deployment: str, version: str, reason: str) -> int:
        try:
            updated = await self._registry.stage_version(
                registry_pb2.StageVersionRequest(
                    name=deployment, version=version, reason=reason or f"benchmark: stage {version}"
                )
            )
        except ModelyardError as error:
            raise registry_failure(error, "StageVersion") from None
        event(log, "version.staged", deployment=deployment, version=version, revision=updated.revision)
        return int(updated.revision)

    async def _deployment(self, name: str) -> registry_pb2.Deployment:
        try:
            return await self._registry.get_deployment(registry_pb2.GetDeploymentRequest(name=name))
        except ModelyardError as error:
            raise registry_failure(error, "GetDeployment") from None

    async def _wait_loaded(self, deployment: str, version: str, revision: int) -> None:
        """Until the rollout of `revision` converged; a worker failing to load the version ends it."""
        deadline = time.monotonic() + self.rollout_timeout_s
        while True:
            wait_s = max(min(self.poll_s, deadline - time.monotonic()), 0.0)
            try:
                status = await self._registry.get_rollout_status(
                    registry_pb2.GetRolloutStatusRequest(
                        deployment=deployment, revision=revision, wait_timeout_ms=int(wait_s * 1000)
                    ),
                    timeout=self._registry.settings.timeout_s + wait_s,
                )
            except ModelyardError as error:
                raise registry_failure(error, "GetRolloutStatus") from None
            if status.converged:
                return
            failed = [
                w.detail for w in status.workers if w.detail.startswith("failed") and version in w.detail
            ]
            if failed:
                raise FailedPrecondition(f"staging {version} on {deployment} failed: {'; '.join(failed)}")
            if time.monotonic() >= deadline:
                details = "; ".join(f"{w.worker_id}: {w.detail}" for w in status.workers)
                raise FailedPrecondition(
                    f"staged {version} on {deployment}, but the workers did not all load it within "
                    f"{self.rollout_timeout_s:g}s ({details or 'no live worker serves the deployment'})"
                )


class RegistryDirectory:
    """Live workers of a deployment (ListWorkers) and a version's inference settings (GetVersion)."""

    def __init__(self, registry: RegistryClient) -> None:
        self._registry = registry

    async def workers(self, deployment: str) -> list[WorkerInfo]:
        try:
            reply = await self._registry.list_workers(registry_pb2.ListWorkersRequest(deployment=deployment))
        except ModelyardError as error:
            raise registry_failure(error, "ListWorkers") from None
        found = []
        for worker in reply.workers:
            versions = [v for d in worker.deployments if d.deployment == deployment for v in d.versions]
            found.append(
                WorkerInfo(
                    worker_id=worker.worker_id,
                    address=worker.address,
                    serving=frozenset(v.version for v in versions if v.state == registry_pb2.SERVING),
                    devices={v.version: v.device for v in versions if v.device},
                )
            )
        return found

    async def version_conditions(self, model_id: str, version: str) -> dict[str, str]:
        try:
            found = await self._registry.get_version(
                registry_pb2.GetVersionRequest(model_id=model_id, version=version)
            )
        except ModelyardError as error:
            raise registry_failure(error, "GetVersion") from None
        config = found.inference_config
        settings = {
            "loader": found.loader,
            "checkpoint_hash": found.checkpoint_hash,
            "max_batch_size": str(config.max_batch_size),
            "max_delay_ms": str(config.max_delay_ms),
            "max_batch_tokens": str(config.max_batch_tokens),
            "device": config.device,
            "dtype": config.dtype,
            "quantization": config.quantization or "none",
            "engine": config.engine or "torch",
        }
        return {f"version.{k}": v for k, v in settings.items() if v}
