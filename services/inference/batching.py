"""Dynamic batching for one loaded version and input: queue requests until `max_batch_size`
items or `max_delay_ms`, run forward passes in an executor, scatter the rows back.

- Instances: up to `instances` passes of one batcher run at once (Triton's instance group), each
  in its own executor thread and each of at most `max_batch_size / instances` items, so that under
  load every instance has work. On CPU, two single-threaded instances beat one two-threaded pass:
  they never wait for each other at OpenMP barriers, and a thread preempted by the gRPC side
  stalls only its own pass.
- The executor pulls: when a pass ends, its thread takes whatever queued up meanwhile as its next
  batch and queues it on the executor again (behind other batchers' passes), so a model never
  waits for the event loop between passes. Those requests have waited a whole pass, past any delay.
- The event loop starts a pass only when an instance is free, and its delay is adaptive: it waits
  up to `max_delay_ms` (from the oldest request's arrival) only while the previous pass carried
  more than one request, so a lone caller never pays it.
- Solo lane: a lone request on an idle batcher runs on `solo_executor` when given (a thread using
  every core), so single-request latency is that of the widest pass.
- Fair queueing by caller: a request starts at the later of the batcher's virtual time (the
  latest start tag taken) and its caller's previous finish tag, and finishes its item count later;
  passes take requests in finish-tag order. One caller alone is served in arrival order; a caller
  whose requests are large or many runs its tags ahead, so a small request from a caller with
  little queued goes into the next pass instead of waiting behind everybody else's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from typing import Any

import numpy as np

# A batch function takes the concatenated items and returns per-output arrays or lists of N rows.
BatchFn = Callable[[list[Any]], dict[str, Any]]
BatchObserver = Callable[[int], None]
# Finish tags of callers are forgotten, once this many are kept, for those whose tag the virtual
# time has passed: for them the virtual time is the start tag anyway.
_TRACKED_CALLERS = 1024


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
    """Owned by one version; `close()` fails what is still queued and waits for the running pass."""

    def __init__(
        self,
        run_batch: BatchFn,
        *,
        max_batch_size: int,
        max_delay_s: float,
        executor: Executor,
        instances: int = 1,
        solo_executor: Executor | None = None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if instances < 1:
            raise ValueError("instances must be at least 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max(0.0, max_delay_s)
        self._executor = executor
        self.instances = instances
        # With several instances a pass takes its share, so that under load every instance has work.
        self._pass_items = max(1, max_batch_size // (instances + 1 if instances > 1 else 1))
        self._solo = solo_executor
        self._on_batch = on_batch
        # Shared by the event loop (appends) and executor threads (takes), under `_lock`.
        self._lock = threading.Lock()
        # A heap of (finish tag, arrival, start tag, request); see "Fair queueing" above.
        self._queue: list[tuple[int, int, int, _Pending]] = []
        self._arrivals = itertools.count()
        self._vtime = 0  # the latest start tag taken
        self._finish: dict[Hashable, int] = {}  # caller -> finish tag of its latest request
        self._queued_items = 0
        self._running = 0  # passes being formed or run, at most `instances`
        self._starting = False  # the event loop is forming a pass (at most one at a time)
        self._closed = False
        self._last_requests = 0
        self._passes: set[concurrent.futures.Future[None]] = set()
        # Event-loop side only: the task forming a pass, and its arrival waiter.
        self._starter: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def submit(self, items: list[Any], caller: Hashable = None) -> tuple[dict[str, Any], float]:
        """Return this request's rows of every output, and the seconds it waited in the queue.
        Requests of different `caller`s share the passes fairly (see the module docstring)."""
        if not items:
            raise ValueError("empty request")
        if len(items) > self.max_batch_size:
            raise ValueError(f"{len(items)} items exceed max_batch_size {self.max_batch_size}")
        loop = asyncio.get_running_loop()
        pending = _Pending(items, loop.create_future())
        with self._lock:
            if self._closed:
                raise RuntimeError("batcher closed")
            finish = self._finish
            begins = max(self._vtime, finish.get(caller, 0))
            if len(finish) >= _TRACKED_CALLERS and caller not in finish:
                self._finish = finish = {c: tag for c, tag in finish.items() if tag > self._vtime}
            finish[caller] = ends = begins + len(items)
            heapq.heappush(self._queue, (ends, next(self._arrivals), begins, pending))
            self._queued_items += len(items)
            start = self._claim_instance()
        if start:
            self._starter = loop.create_task(self._start(loop), name="batcher")
        elif self._waiter is not None:
            _wake(self._waiter)
        result = await pending.future
        return result, pending.started - pending.enqueued

    def _claim_instance(self) -> bool:
        """Whether the caller should start forming a pass (a free instance, nobody forming). Hold `_lock`."""
        if self._starting or self._running >= self.instances:
            return False
        self._starting = True
        self._running += 1
        return True

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Form a pass for a free instance: under load, give company `max_delay_s` to arrive."""
        if self._last_requests > 1 and self.max_delay_s > 0:
            with self._lock:
                oldest = min((entry[3].enqueued for entry in self._queue), default=0.0)
            deadline = oldest + self.max_delay_s
            while self._queued_items < self._pass_items:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                await self._arrival(loop, remaining)
        with self._lock:
            self._starting = False
            batch = self._take()
            again = bool(batch) and bool(self._queue) and self._claim_instance()
        self._hand_over(loop, batch)
        if again:  # more is queued than this pass took, and another instance is free
            self._starter = loop.create_task(self._start(loop), name="batcher")

    async def _arrival(self, loop: asyncio.AbstractEventLoop, within_s: float) -> None:
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(within_s, _wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()

    def _take(self) -> list[_Pending]:
        """Pop the next batch in finish-tag order (callers that went away are dropped). Hold `_lock`.
        An empty batch gives the instance back."""
        queue = self._queue
        batch: list[_Pending] = []
        count = 0
        while queue and not self._closed:
            size = len(queue[0][3].items)
            if batch and count + size > self._pass_items:
                break  # it starts the next batch, keeping tag order
            _, _, begins, pending = heapq.heappop(queue)
            self._vtime = max(self._vtime, begins)
            self._queued_items -= size
            if not pending.future.done():
                batch.append(pending)
                count += size
        if not batch:
            self._running -= 1
        return batch

    def _hand_over(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        """Queue one forward pass on the executor (FIFO with other batchers' passes); a lone
        request while no other pass runs goes to the solo lane."""
        if not batch:
            return
        lone = self._solo is not None and self._running == 1 and len(batch) == 1
        executor = self._solo if lone and self._solo is not None else self._executor
        try:
            future = executor.submit(self._forward, loop, batch)
        except RuntimeError as exc:  # executor shut down
            with self._lock:
                self._running -= 1
            _deliver(batch, None, exc)
            return
        with self._lock:
            self._passes.add(future)
        future.add_done_callback(self._passes.discard)

    def _forward(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        """Executor thread: run one pass, post the rows to the loop, take and queue the next batch."""
        self._last_requests = len(batch)
        items = batch[0].items if len(batch) == 1 else [item for p in batch for item in p.items]
        started = time.perf_counter()
        for p in batch:
            p.started = started
        if self._on_batch is not None:
            self._on_batch(len(items))
        outputs: dict[str, Any] | None = None
        error: BaseException | None = None
        try:
            outputs = self._run_batch(items)
        except Exception as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_deliver, batch, outputs, error)
        with self._lock:
            nxt = self._take()
        self._hand_over(loop, nxt)

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            queued = [entry[3] for entry in self._queue]
            self._queue.clear()
            self._queued_items = 0
        if self._starter is not None and not self._starter.done():
            self._starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starter
        for pending in queued:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("batcher closed"))
        with self._lock:
            running = list(self._passes)
        for future in running:  # let running passes end before their model is unloaded
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(future)


def _deliver(batch: list[_Pending], outputs: dict[str, Any] | None, error: BaseException | None) -> None:
    offset = 0
    for p in batch:
        n = len(p.items)
        if not p.future.done():
            if outputs is None:
                p.future.set_exception(error or RuntimeError("forward pass produced no outputs"))
            else:
                p.future.set_result({name: _rows(value, offset, n) for name, value in outputs.items()})
        offset += n


def _rows(value: Any, offset: int, n: int) -> Any:
    if isinstance(value, np.ndarray):
        return value[offset : offset + n]
    return list(value[offset : offset + n])
