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
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A batch function takes the concatenated items and returns per-output arrays or lists of N rows.
BatchFn = Callable[[list[Any]], dict[str, Any]]
BatchObserver = Callable[[int], None]


@dataclass
class _Pending:
    items: list[Any]
    future: asyncio.Future[dict[str, Any]]
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0


class DynamicBatcher:
    """Owned by one version; `close()` cancels its task after the queue empties."""

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
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._carry: _Pending | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_requests = 0

    async def submit(self, items: list[Any]) -> tuple[dict[str, Any], float]:
        """Return this request's rows of every output, and the seconds it waited in the queue."""
        if not items:
            raise ValueError("empty request")
        if len(items) > self.max_batch_size:
            raise ValueError(f"{len(items)} items exceed max_batch_size {self.max_batch_size}")
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="batcher")
        pending = _Pending(items, asyncio.get_running_loop().create_future())
        await self._queue.put(pending)
        result = await pending.future
        return result, pending.started - pending.enqueued

    async def _next_batch(self) -> list[_Pending]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, count = [first], len(first.items)
        delay = self.max_delay_s if self._last_requests > 1 else 0.0
        deadline = time.perf_counter() + delay
        while count < self.max_batch_size:
            try:
                nxt = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if count + len(nxt.items) > self.max_batch_size:
                self._carry = nxt  # starts the next batch, keeping arrival order
                break
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
            items = [item for p in batch for item in p.items]
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
                rows = {name: _rows(value, offset, n) for name, value in outputs.items()}
                offset += n
                if not p.future.done():
                    p.future.set_result(rows)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._carry is not None or not self._queue.empty():
            pending = self._carry or self._queue.get_nowait()
            self._carry = None
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("batcher closed"))


def _rows(value: Any, offset: int, n: int) -> Any:
    if isinstance(value, np.ndarray):
        return value[offset : offset + n]
    return list(value[offset : offset + n])
