"""Fan-out of deployment changes to watchers: one LISTEN connection and a safety-net poll per
replica feed an in-memory tail of recent events that every watcher (and every subscriber, such as
the rollout waits) reads from."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import asyncpg
from prometheus_client import Gauge

from modelyard.common.log import event
from modelyard.common.states import EventKind
from modelyard.registry import repository
from modelyard.registry.db import CONNECTION_ERRORS, Database, connect
from modelyard.registry.domain import Deployment, DeploymentEvent

log = logging.getLogger("modelyard.registry.broadcast")

CHANNEL = "modelyard_deployments"
WATCHERS = Gauge("modelyard_registry_watchers", "Open WatchDeployments streams on this replica.")
ROUTE_WEIGHT = Gauge(
    "modelyard_deployment_route_weight",
    "Traffic weight of each routed version, as the registry last broadcast it.",
    ["deployment", "model", "version"],
)
REVISION = Gauge(
    "modelyard_deployment_revision", "Revision of each deployment's last change.", ["deployment"]
)

# What ends a LISTEN connection and makes the listener reconnect.
_LISTEN_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)


class DeploymentBroadcast:
    """Keeps the newest events in memory and wakes watchers when new ones arrive.

    Revisions are gap-free and commit in order (see `repository.next_revision`), so fetching
    `revision > last` after any wake-up (NOTIFY, local commit, or poll) never skips an event.
    """

    def __init__(self, db: Database, *, poll_interval_s: float, tail_size: int = 4096) -> None:
        self._db = db
        self._poll_interval_s = poll_interval_s
        self._tail: collections.deque[DeploymentEvent] = collections.deque(maxlen=tail_size)
        self._last = 0
        self._fetch_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncpg.Connection | None = None
        self._listening = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._exported: dict[str, tuple[str, list[str]]] = {}
        self._subscribers: list[Callable[[DeploymentEvent], None]] = []

    async def start(self) -> None:
        async with self._db.connection() as conn:
            self._last = await repository.current_revision(conn)
            for deployment in await repository.list_deployments(conn):
                self._export(DeploymentEvent(deployment.revision, EventKind.UPSERTED, "", deployment))
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name="broadcast-listen"),
            asyncio.create_task(self._poll_forever(), name="broadcast-poll"),
        ]

    def reconnect_now(self) -> None:
        """The database is back (e.g. the embedded server was restarted): LISTEN again without
        waiting out the backoff."""
        self._retry_now.set()

    async def wait_listening(self, within_s: float) -> bool:
        """True once the LISTEN connection is up (within `within_s` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), within_s)
        return self._listening.is_set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), 2)

    def subscribe(self, callback: Callable[[DeploymentEvent], None]) -> None:
        """Call `callback` (quick, synchronous) with every new event this replica learns of."""
        self._subscribers.append(callback)

    def kick(self) -> None:
        """Fetch now (after a local commit, or a NOTIFY)."""
        task = asyncio.get_running_loop().create_task(self.fetch())
        task.add_done_callback(_ignore_result)

    async def fetch(self) -> None:
        before = self._last
        async with self._fetch_lock:
            try:
                async with self._db.connection() as conn:
                    while True:
                        events = await repository.events_after(conn, revision=self._last, limit=500)
                        for ev in events:
                            self._tail.append(ev)
                            self._export(ev)
                            self._last = ev.revision
                            for callback in self._subscribers:
                                callback(ev)
                        if len(events) < 500:
                            break
            except Exception as exc:  # the poll retries; a watcher must not see this
                event(log, "broadcast.fetch_failed", level=logging.WARNING, error=str(exc))
        if self._last > before:
            self._wake()

    def _export(self, ev: DeploymentEvent) -> None:
        """Mirror the routing table into Prometheus gauges."""
        d = ev.deployment
        model_id, versions = self._exported.pop(d.name, (d.model_id, []))
        for version in versions:
            with contextlib.suppress(KeyError):
                ROUTE_WEIGHT.remove(d.name, model_id, version)
        if ev.kind == EventKind.DELETED:
            with contextlib.suppress(KeyError):
                REVISION.remove(d.name)
            return
        REVISION.labels(d.name).set(ev.revision)
        for route in d.routes:
            ROUTE_WEIGHT.labels(d.name, d.model_id, route.version).set(route.weight)
        self._exported[d.name] = (d.model_id, [r.version for r in d.routes])

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_beyond(self, revision: int, within_s: float) -> None:
        """Return once an event newer than `revision` is known, or after `within_s` seconds."""
        if self._last > revision:
            return
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), within_s)

    async def events_after(self, revision: int) -> list[DeploymentEvent]:
        """Events newer than `revision`: from memory while the tail holds them, else from the database."""
        if revision >= self._last:
            return []
        if self._tail and self._tail[0].revision <= revision + 1:
            return [ev for ev in self._tail if ev.revision > revision]
        async with self._db.connection() as conn:
            return await repository.events_after(conn, revision=revision, limit=1000)

    async def watch(
        self, names: Sequence[str], since_revision: int
    ) -> AsyncIterator[tuple[str, int, list[Deployment], str]]:
        """Yield (kind, revision, deployments, action): a snapshot unless resuming, then every change."""
        wanted = set(names)
        last = since_revision
        if since_revision <= 0 or since_revision > self._last:
            # Resuming from a revision this registry never issued is answered with a snapshot.
            await self.fetch()
            if since_revision <= 0 or since_revision > self._last:
                async with self._db.transaction(isolation="repeatable_read") as conn:
                    last = await repository.current_revision(conn)
                    deployments = await repository.list_deployments(conn)
                yield EventKind.SNAPSHOT, last, [d for d in deployments if not wanted or d.name in wanted], ""
        while True:
            for ev in await self.events_after(last):
                last = ev.revision
                if not wanted or ev.deployment.name in wanted:
                    yield ev.kind, ev.revision, [ev.deployment], ev.action
            await self.wait_beyond(last, within_s=15.0)

    async def _listen_forever(self) -> None:
        delay = 0.2
        while True:
            self._retry_now.clear()  # a wish to reconnect made during this attempt still counts
            try:
                lost = asyncio.Event()
                self._listener = await connect(self._db.url)
                self._listener.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await self._listener.add_listener(CHANNEL, self._on_notify)
                event(log, "broadcast.listening", channel=CHANNEL)
                delay = 0.2
                await self.fetch()  # whatever committed while we were not listening
                self._listening.set()
                await lost.wait()
                event(log, "broadcast.listener_lost", level=logging.WARNING)
            except asyncio.CancelledError:
                raise
            except _LISTEN_ERRORS as exc:
                event(log, "broadcast.listen_failed", level=logging.WARNING, error=str(exc), retry_s=delay)
            self._listening.clear()
            with contextlib.suppress(Exception):
                if self._listener is not None and not self._listener.is_closed():
                    self._listener.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry_now.wait(), delay)
            delay = min(delay * 2, 5.0)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        self.kick()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            await self.fetch()


def _ignore_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
