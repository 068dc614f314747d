"""Dynamic batching for one loaded version and input: queue requests until `max_batch_size`
items or `max_delay_ms`, run one forward pass in an executor, scatter the rows back.

The delay is adaptive: a batcher waits for more requests only while it is under concurrent load
(its previous forward pass carried more than one request), so a lone caller never pays
`max_delay_ms`, while concurrent callers still coalesce into large batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

# A batch function takes the concatenated items and returns per-output arrays or lists of N rows.
BatchFn = Callable[[list[Any]], dict[str, Any]]
BatchObserver = Callable[[int], None]


class _Pending:
    __slots__ = ("enqueued", "future", "items", "started")

    def __init__(self, items: list[Any], future: asyncio.Future[dict[str, Any]]) -> None:
        self.items = items
        self.future = future
        self.enqueued = time.perf_counter()
        self.started = 0.0


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class DynamicBatcher:
    """Owned by one version; `close()` cancels its task and fails what is still queued."""

    def __init__(
        self,
        run_batch: BatchFn,
        *,
        max_batch_size: int,
        max_delay_s: float,
        executor: Executor | None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max(0.0, max_delay_s)
        self._executor = executor
        self._on_batch = on_batch
        # A plain deque plus one waiter future: asyncio.Queue with wait_for() costs a task per get.
        self._queue: deque[_Pending] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_requests = 0

    async def submit(self, items: list[Any]) -> tuple[dict[str, Any], float]:
        """Return this request's rows of every output, and the seconds it waited in the queue."""
        if not items:
            raise ValueError("empty request")
        if len(items) > self.max_batch_size:
            raise ValueError(f"{len(items)} items exceed max_batch_size {self.max_batch_size}")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._loop(), name="batcher")
        pending = _Pending(items, loop.create_future())
        self._queue.append(pending)
        if self._waiter is not None:
            _wake(self._waiter)
        result = await pending.future
        return result, pending.started - pending.enqueued

    async def _arrival(self, within_s: float | None) -> None:
        """Wait until a request is queued, or `within_s` seconds."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(within_s, _wake, waiter) if within_s is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def _next_batch(self) -> list[_Pending]:
        queue = self._queue
        while not queue:
            await self._arrival(None)
        first = queue.popleft()
        batch, count = [first], len(first.items)
        delay = self.max_delay_s if self._last_requests > 1 else 0.0
        deadline = time.perf_counter() + delay
        while count < self.max_batch_size:
            if not queue:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                await self._arrival(remaining)
                continue
            if count + len(queue[0].items) > self.max_batch_size:
                break  # it starts the next batch, keeping arrival order
            nxt = queue.popleft()
            batch.append(nxt)
            count += len(nxt.items)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            batch = [p for p in batch if not p.future.done()]  # callers that went away
            if not batch:
                continue
            self._last_requests = len(batch)
            items = batch[0].items if len(batch) == 1 else [item for p in batch for item in p.items]
            started = time.perf_counter()
            for p in batch:
                p.started = started
            if self._on_batch is not None:
                self._on_batch(len(items))
            try:
                outputs = await loop.run_in_executor(self._executor, self._run_batch, items)
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(RuntimeError("batcher closed during the forward pass"))
                raise
            except Exception as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            offset = 0
            for p in batch:
                n = len(p.items)
                if not p.future.done():
                    p.future.set_result({name: _rows(value, offset, n) for name, value in outputs.items()})
                offset += n

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("batcher closed"))


def _rows(value: Any, offset: int, n: int) -> Any:
    if isinstance(value, np.ndarray):
        return value[offset : offset + n]
    return list(value[offset : offset + n])
