"""Applies deployment specs to the routing table: load new versions before unloading old ones,
switch routes atomically, drain and unload what left, retry loads that failed for a transient
reason while the version is still routed, and remember what happened for heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.common.log import event
from modelyard.common.states import VersionState
from modelyard.inference import metrics
from modelyard.inference.artifacts import ArtifactCache
from modelyard.inference.batching import CoreUse
from modelyard.inference.domain import DeploymentSpec, VersionSpec
from modelyard.inference.load_retry import LoadFailure, RetryPolicy, is_transient
from modelyard.inference.loaders import ModelRuntime, create_runtime
from modelyard.inference.routing import DeploymentRoutes, LoadedRuntime, RoutingTable

log = logging.getLogger("modelyard.inference.deployments")

# While a version loads (pure Python for much of it: building modules, tracing), the GIL changes
# hands every 0.5 ms instead of 5, so requests in flight wait less for it.
_LOADING_SWITCH_INTERVAL_S = 0.0005


@dataclass
class LoadedVersion:
    state: VersionState
    checkpoint_hash: str
    device: str = ""
    last_error: str = ""
    attempts: int = 0  # load attempts of this version spec so far (1 = the first)
    next_attempt_at: float | None = None  # epoch seconds of the planned retry; None = none planned


@dataclass
class DeploymentStatus:
    revision: int = 0
    versions: dict[str, LoadedVersion] = field(default_factory=dict)


class DeploymentApplier:
    """Owns every loaded version; one apply at a time per deployment, always the newest spec."""

    def __init__(
        self,
        table: RoutingTable,
        cache: ArtifactCache,
        load_executor: Executor,
        *,
        on_change: Callable[[], None] | None = None,
        on_applied: Callable[[str, DeploymentSpec | None], None] | None = None,
        retry: RetryPolicy | None = None,
        allow_remote_code: bool = False,
        pass_threads: int = 1,
        core_use: CoreUse | None = None,
    ) -> None:
        """`on_applied(name, spec)` is told what each deployment now serves after every swap (only
        the routes switched in and their versions), and `(name, None)` once it was removed."""
        self.table = table
        self.cache = cache
        self._load_executor = load_executor
        self._on_change = on_change or (lambda: None)
        self._on_applied = on_applied or (lambda name, spec: None)
        self._retry = retry or RetryPolicy()
        self.allow_remote_code = allow_remote_code  # the worker's setting, handed to every runtime
        self.pass_threads = pass_threads  # intra-op threads of one serving lane, for every runtime
        # A load keeps a core busy: while one runs, lone requests stay off the solo lane (`batching`).
        self._core_use = core_use or CoreUse()
        self.status: dict[str, DeploymentStatus] = {}
        self.last_error = ""
        self._desired: dict[str, DeploymentSpec | None] = {}
        self._appliers: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._idle: dict[str, asyncio.Event] = {}
        self._latest: dict[str, DeploymentSpec] = {}  # newest spec submitted, what a retry re-applies
        self._attempts: dict[tuple[str, str], tuple[VersionSpec, int]] = {}
        self._retries: dict[str, asyncio.Task[None]] = {}

    # --- requests -------------------------------------------------------------------------------
    def submit(self, spec: DeploymentSpec) -> None:
        """Make `spec` the wanted state of its deployment; applied in the background."""
        self._want(spec.name, spec)

    def delete(self, name: str) -> None:
        self._want(name, None)

    def names(self) -> set[str]:
        """Deployments this applier serves or is about to (submitted, not yet applied)."""
        pending = {name for name, spec in self._desired.items() if spec is not None}
        return set(self.table.deployments()) | set(self._latest) | pending

    def _want(self, name: str, spec: DeploymentSpec | None) -> None:
        # A newer spec (or a retry coming due) replaces any retry still planned for this deployment.
        planned = self._retries.pop(name, None)
        if planned is not None and planned is not asyncio.current_task():
            planned.cancel()
        for entry in self.status.get(name, DeploymentStatus()).versions.values():
            entry.next_attempt_at = None
        if spec is None:
            self._latest.pop(name, None)
        else:
            self._latest[name] = spec
        self._desired[name] = spec
        self._idle.setdefault(name, asyncio.Event()).clear()
        task = self._appliers.get(name)
        if task is None or task.done():
            self._appliers[name] = asyncio.create_task(self._run(name), name=f"apply:{name}")

    async def settled(self, name: str) -> None:
        """Wait until every submitted spec of `name` has been applied (or refused)."""
        await self._idle.setdefault(name, asyncio.Event()).wait()

    async def _run(self, name: str) -> None:
        while name in self._desired:
            spec = self._desired.pop(name)
            try:
                if spec is None:
                    await self._remove(name)
                else:
                    await self._apply(spec)
            except Exception as exc:  # keep serving whatever was there; report it
                log.exception("deployment.apply_failed", extra={"fields": {"deployment": name}})
                self.last_error = f"{name}: {exc}"
            self._on_change()
        self._idle[name].set()

    # --- applying -------------------------------------------------------------------------------
    async def _apply(self, spec: DeploymentSpec) -> None:
        current = self.table.find(spec.name)
        current_versions = dict(current.versions) if current else {}
        status = self.status.setdefault(spec.name, DeploymentStatus())
        loaded: dict[str, LoadedRuntime] = {}
        failures: dict[str, str] = {}
        retryable: list[str] = []
        fresh: list[LoadedRuntime] = []
        routed = {name for name, _weight in spec.routes}
        for key in [k for k in self._attempts if k[0] == spec.name and k[1] not in routed]:
            del self._attempts[key]  # a version that comes back later starts counting again
        for name, _weight in spec.routes:
            vspec = spec.version(name)
            if vspec is None:
                failures[name] = "the registry sent no details for this version"
                continue
            existing = current_versions.get(name)
            if existing is not None and existing.spec == vspec:
                loaded[name] = existing
                continue
            attempts = self._count_attempt(spec.name, vspec)
            status.versions[name] = LoadedVersion(
                VersionState.LOADING, vspec.checkpoint_hash, attempts=attempts
            )
            self._on_change()
            try:
                version = await self._load(spec.name, vspec)
            except Exception as exc:
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                transient = isinstance(exc, LoadFailure) and exc.transient
                failures[name] = message
                if transient:
                    retryable.append(name)
                status.versions[name] = LoadedVersion(
                    VersionState.FAILED, vspec.checkpoint_hash, last_error=message, attempts=attempts
                )
                event(
                    log,
                    "version.load_failed",
                    level=logging.WARNING,
                    deployment=spec.name,
                    version=name,
                    attempt=attempts,
                    transient=transient,
                    error=message,
                )
                continue
            loaded[name] = version
            fresh.append(version)

        for outcome in (
            "success",
            "failure",
        ):  # both series exist from the first swap, so increase() sees 0 -> 1
            metrics.SWAPS.labels(spec.name, spec.model_id, outcome)
        weighted_failures = [n for n, w in spec.routes if w > 0 and n in failures]
        if weighted_failures:
            # Keep what serves now; the new routes are refused whole.
            self.last_error = "; ".join(f"{spec.name}@{n}: {failures[n]}" for n in weighted_failures)
            metrics.SWAPS.labels(spec.name, spec.model_id, "failure").inc()
            for version in fresh:
                status.versions.pop(version.version, None)
                self._retire(spec.name, version)
            for name in [
                n for n, v in status.versions.items() if v.state == VersionState.FAILED and n not in routed
            ]:
                del status.versions[name]  # refused earlier, no longer wanted
            event(log, "routes.refused", deployment=spec.name, revision=spec.revision, error=self.last_error)
            self._plan_retry(spec, retryable)
            return

        routes = DeploymentRoutes(
            deployment=spec.name,
            model_id=spec.model_id,
            versions=loaded,
            weights={n: w for n, w in spec.routes if n in loaded},
            revision=spec.revision,
            mirrors={n: p for n, p in spec.mirrors if n in loaded},
        )
        previous = self.table.swap(routes)
        # A staged version that failed to load does not block the routes, but the swap was not clean.
        metrics.SWAPS.labels(spec.name, spec.model_id, "failure" if failures else "success").inc()
        metrics.APPLIED_REVISION.labels(spec.name).set(spec.revision)
        status.revision = spec.revision
        for name, version in loaded.items():
            attempts = self._attempts.get((spec.name, name), (version.spec, 1))[1]
            status.versions[name] = LoadedVersion(
                VersionState.SERVING, version.spec.checkpoint_hash, version.device, attempts=attempts
            )
        for name in [
            n for n, v in status.versions.items() if v.state == VersionState.FAILED and n not in failures
        ]:
            del status.versions[name]  # refused earlier, no longer wanted
        if not failures:
            self.last_error = ""
        self._publish_weights(spec.name, previous, routes)
        event(
            log,
            "routes.applied",
            deployment=spec.name,
            revision=spec.revision,
            routes=",".join(f"{n}={w}" for n, w in spec.routes if n in loaded),
        )
        if previous is not None:
            for name, version in previous.versions.items():
                if loaded.get(name) is not version:
                    self._retire(spec.name, version)
        self._on_applied(
            spec.name,
            DeploymentSpec(
                name=spec.name,
                model_id=spec.model_id,
                routes=tuple((n, w) for n, w in spec.routes if n in loaded),
                versions=tuple(v.spec for v in loaded.values()),
                revision=spec.revision,
                mirrors=tuple((n, p) for n, p in spec.mirrors if n in loaded),
            ),
        )
        self._plan_retry(spec, retryable)

    # --- retrying -------------------------------------------------------------------------------
    def _count_attempt(self, deployment: str, spec: VersionSpec) -> int:
        previous, count = self._attempts.get((deployment, spec.version), (None, 0))
        count = count + 1 if previous == spec else 1
        self._attempts[(deployment, spec.version)] = (spec, count)
        return count

    def _plan_retry(self, spec: DeploymentSpec, retryable: list[str]) -> None:
        """Apply `spec` again later if versions it routes failed for a reason that may clear."""
        if not retryable or not self._is_latest(spec):
            return
        failures = max(self._attempts[(spec.name, name)][1] for name in retryable)
        delay = self._retry.delay(failures)
        due = time.time() + delay
        status = self.status[spec.name]
        for name in retryable:
            status.versions[name].next_attempt_at = due
        self._retries[spec.name] = asyncio.create_task(
            self._retry_later(spec, delay), name=f"retry:{spec.name}"
        )
        event(
            log,
            "version.retry_planned",
            deployment=spec.name,
            versions=",".join(retryable),
            attempts=failures,
            retry_in_s=round(delay, 2),
        )

    async def _retry_later(self, spec: DeploymentSpec, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._is_latest(spec):
            self._want(spec.name, spec)

    def _is_latest(self, spec: DeploymentSpec) -> bool:
        """Still the newest spec of its deployment (a retry of anything older would go backwards)."""
        return self._latest.get(spec.name) is spec

    async def _remove(self, name: str) -> None:
        previous = self.table.remove(name)
        if previous is not None:
            self._publish_weights(name, previous, None)
            for version in previous.versions.values():
                self._retire(name, version)
        with contextlib.suppress(KeyError):
            metrics.APPLIED_REVISION.remove(name)
        self.status.pop(name, None)
        for key in [k for k in self._attempts if k[0] == name]:
            del self._attempts[key]
        self._on_applied(name, None)
        event(log, "deployment.removed", deployment=name)

    async def _load(self, deployment: str, spec: VersionSpec) -> LoadedRuntime:
        """Raises LoadFailure, saying whether the failure may clear on its own."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            path = await loop.run_in_executor(
                self._load_executor, self.cache.resolve, spec.source_uri, spec.checkpoint_hash
            )
        except Exception as exc:
            raise LoadFailure(exc, transient=is_transient(exc, fetching=True)) from exc
        fetched = time.perf_counter()
        phases: dict[str, float] = {}
        try:
            runtime = await loop.run_in_executor(self._load_executor, self._load_blocking, spec, path, phases)
        except Exception as exc:
            raise LoadFailure(exc, transient=is_transient(exc, fetching=False)) from exc
        seconds = time.perf_counter() - started
        # Where the time went: fetching (or finding in the cache), then each step of the load.
        timings: dict[str, Any] = {f"{name}_s": round(value, 3) for name, value in phases.items()}
        labels = (deployment, spec.model_id, spec.version)
        metrics.MODEL_LOAD_SECONDS.labels(*labels).observe(seconds)
        metrics.MODEL_LOADED.labels(*labels, spec.checkpoint_hash).set(1)
        metrics.MODEL_ENGINE.labels(*labels, runtime.engine).set(1)
        event(
            log,
            "version.loaded",
            deployment=deployment,
            version=spec.version,
            device=runtime.device,
            engine=runtime.engine,
            seconds=round(seconds, 3),
            fetch_s=round(fetched - started, 3),
            **timings,
        )
        return LoadedRuntime(spec, runtime, device=runtime.device)

    def _load_blocking(self, spec: VersionSpec, path: Path, phases: dict[str, float]) -> ModelRuntime:
        runtime = create_runtime(
            spec, path, allow_remote_code=self.allow_remote_code, pass_threads=self.pass_threads
        )
        interval = sys.getswitchinterval()
        sys.setswitchinterval(_LOADING_SWITCH_INTERVAL_S)
        try:
            with self._core_use.held():
                steps = (("load", runtime.load), ("optimize", runtime.optimize), ("warmup", runtime.warmup))
                for name, step in steps:
                    begun = time.perf_counter()
                    step()
                    phases[name] = time.perf_counter() - begun
        except BaseException:
            runtime.unload()
            raise
        finally:
            sys.setswitchinterval(interval)
        return runtime

    def _publish_weights(
        self, deployment: str, previous: DeploymentRoutes | None, current: DeploymentRoutes | None
    ) -> None:
        if previous is not None:
            for name, version in previous.versions.items():
                if current is None or name not in current.versions:
                    with contextlib.suppress(KeyError):
                        metrics.ROUTE_WEIGHT.remove(deployment, version.spec.model_id, name)
        if current is not None:
            for name, version in current.versions.items():
                metrics.ROUTE_WEIGHT.labels(deployment, version.spec.model_id, name).set(
                    current.weights.get(name, 0)
                )

    # --- draining -------------------------------------------------------------------------------
    def _retire(self, deployment: str, version: LoadedRuntime) -> None:
        status = self.status.get(deployment)
        if status is not None and status.versions.get(version.version, None) is not None:
            if status.versions[version.version].state == VersionState.SERVING:
                status.versions[version.version].state = VersionState.DRAINING
        task = asyncio.create_task(self._drain_and_unload(deployment, version), name="unload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drain_and_unload(self, deployment: str, version: LoadedRuntime) -> None:
        await version.drained()
        for batcher in version.batchers.values():
            await batcher.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._load_executor, version.runtime.unload)
        spec = version.spec
        status = self.status.get(deployment)
        routes = self.table.find(deployment)
        still_routed = routes is not None and version.version in routes.versions
        # A version routed away and back may be loaded again before this copy finished draining:
        # then its series describe the new copy.
        if not still_routed:
            metrics.MODEL_LOADED.labels(deployment, spec.model_id, spec.version, spec.checkpoint_hash).set(0)
            with contextlib.suppress(KeyError):
                metrics.MODEL_ENGINE.remove(deployment, spec.model_id, spec.version, version.runtime.engine)
        if status is not None and not still_routed:
            entry = status.versions.get(version.version)
            if entry is not None and entry.state in (VersionState.DRAINING, VersionState.SERVING):
                del status.versions[version.version]
        self._on_change()

    async def close(self) -> None:
        """Cancel pending applies and retries, then drain and unload every loaded version."""
        self._latest.clear()  # nothing is wanted any more: no retry comes due
        tasks = [*self._appliers.values(), *self._retries.values()]
        self._retries.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for name in self.table.deployments():
            previous = self.table.remove(name)
            if previous is not None:
                for version in previous.versions.values():
                    self._retire(name, version)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
