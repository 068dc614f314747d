"""The worker's routing table: which loaded versions serve each deployment, with what weight.

The table is replaced, never mutated, so a request sees one consistent set of routes; each loaded
version counts its in-flight requests so a version leaving the table is unloaded only once drained.
"""

from __future__ import annotations

import asyncio
import bisect
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from modelyard.inference.domain import VersionSpec
from modelyard.inference.errors import ModelNotFound, NotReady


class LoadedRuntime:
    """A version whose runtime is loaded and warm, with its batchers and in-flight count."""

    def __init__(self, spec: VersionSpec, runtime: Any, *, device: str = "cpu") -> None:
        self.spec = spec
        self.runtime = runtime
        self.device = device
        self.batchers: dict[str, Any] = {}
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def inflight(self) -> int:
        return self._inflight

    def enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def exit(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def drained(self) -> None:
        await self._idle.wait()


@dataclass(frozen=True)
class DeploymentRoutes:
    """An immutable snapshot of one deployment's routes; weight 0 = staged (pinned requests only)."""

    deployment: str
    model_id: str
    versions: Mapping[str, LoadedRuntime]
    weights: Mapping[str, int]
    revision: int = 0
    # Staged version -> percent of unpinned requests mirrored to it (shadow traffic).
    mirrors: Mapping[str, int] = field(default_factory=dict)
    _cumulative: tuple[int, ...] = field(init=False, repr=False)
    _order: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        order = tuple(v for v, w in self.weights.items() if w > 0 and v in self.versions)
        total, cumulative = 0, []
        for name in order:
            total += self.weights[name]
            cumulative.append(total)
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_cumulative", tuple(cumulative))

    @property
    def routable(self) -> bool:
        return bool(self._order)

    def choose(self, pinned: str = "", rng: random.Random | None = None) -> LoadedRuntime:
        if pinned:
            loaded = self.versions.get(pinned)
            if loaded is None:
                raise ModelNotFound(
                    f"version {pinned!r} of deployment {self.deployment!r} is not loaded on this worker; "
                    f"loaded: {', '.join(sorted(self.versions)) or 'none'}"
                )
            return loaded
        if not self._order:
            raise NotReady(f"deployment {self.deployment!r} has no version with traffic weight loaded yet")
        point = (rng or random).random() * self._cumulative[-1]
        return self.versions[self._order[bisect.bisect_right(self._cumulative, point)]]

    def shadow(self, rng: random.Random | None = None) -> LoadedRuntime | None:
        """The version to mirror one unpinned request to, drawn at its percent; None mostly."""
        for name, percent in self.mirrors.items():
            loaded = self.versions.get(name)
            if (
                loaded is not None
                and self.weights.get(name, 0) == 0
                and (rng or random).random() * 100 < percent
            ):
                return loaded
        return None


class RoutingTable:
    """Deployment name -> its current routes. Swapped atomically on the event loop."""

    def __init__(self) -> None:
        self._routes: dict[str, DeploymentRoutes] = {}
        self._rng = random.Random()

    def get(self, deployment: str) -> DeploymentRoutes:
        routes = self._routes.get(deployment)
        if routes is None:
            raise ModelNotFound(
                f"deployment {deployment!r} is not served by this worker; "
                f"it serves {', '.join(sorted(self._routes)) or 'nothing yet'}"
            )
        return routes

    def find(self, deployment: str) -> DeploymentRoutes | None:
        return self._routes.get(deployment)

    def deployments(self) -> list[str]:
        return sorted(self._routes)

    def swap(self, routes: DeploymentRoutes) -> DeploymentRoutes | None:
        """Install new routes for a deployment; return the ones they replaced."""
        previous = self._routes.get(routes.deployment)
        self._routes = {**self._routes, routes.deployment: routes}
        return previous

    def remove(self, deployment: str) -> DeploymentRoutes | None:
        previous = self._routes.get(deployment)
        self._routes = {k: v for k, v in self._routes.items() if k != deployment}
        return previous

    def in_use(self) -> set[int]:
        return {id(v) for routes in self._routes.values() for v in routes.versions.values()}

    @property
    def any_routable(self) -> bool:
        return any(routes.routable for routes in self._routes.values())

    @asynccontextmanager
    async def acquire(self, deployment: str, pinned: str = "") -> AsyncIterator[LoadedRuntime]:
        """Choose a version and hold it for the duration of one request."""
        loaded = self.get(deployment).choose(pinned, self._rng)
        loaded.enter()
        try:
            yield loaded
        finally:
            loaded.exit()
