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
  every core), so single-request latency is that of the widest pass. Only while nothing else in
  the worker takes a core (`CoreUse`: other batchers' passes, a version loading): beside them its
  threads would outnumber the cores and wait for each other at every OpenMP barrier.
- Fair queueing by caller: a request starts at the later of the batcher's virtual time (the
  latest start tag taken) and its caller's previous finish tag, and finishes its item count later;
  passes take requests in finish-tag order. One caller alone is served in arrival order; a caller
  whose requests are large or many runs its tags ahead, so a small request from a caller with
  little queued goes into the next pass instead of waiting behind everybody else's.
- Passes are grouped by length: each request carries its items' lengths (tokens, or an estimate),
  and a pass pads every item to its longest. A pass takes the oldest request by tag (the anchor),
  then, from the next few passes' worth of queued requests, those that add the least padding:
  shorter ones waste the pass's longest length minus theirs, a longer one the growth times the
  items already taken. Besides `max_batch_size` items, a pass holds at most `max_batch_tokens`
  padded tokens (items x longest), both divided among the instances like the items. A request left
  out for its length is counted; one left out `MAX_SKIPS` times goes into the next pass whatever
  its length, so grouping delays nobody by more than that many passes.
- Large requests are split by length: with several instances, a request of more items than a
  pass's share, given each item's length (tokens, or characters as their proxy), is sorted by it
  and cut into consecutive parts of at most a share each. The parts queue as requests of the same
  caller, so free instances run them at once, and each pass pads only to the longest item of its
  part, as `SentenceTransformer.encode` does with its input. The rows go back in request order.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

# A batch function takes the concatenated items and returns per-output arrays or lists of N rows.
BatchFn = Callable[[list[Any]], dict[str, Any]]
BatchObserver = Callable[[int], None]
# Finish tags of callers are forgotten, once this many are kept, for those whose tag the virtual
# time has passed: for them the virtual time is the start tag anyway.
_TRACKED_CALLERS = 1024
# A request left out of this many passes for its length goes into the next one whatever it is.
MAX_SKIPS = 2
# A pass chooses among this many passes' worth of the oldest queued items.
_WINDOW_PASSES = 4


class _Pending:
    __slots__ = ("enqueued", "future", "items", "length", "part", "skipped", "started")

    def __init__(
        self, items: list[Any], future: asyncio.Future[dict[str, Any]], length: int = 0, part: bool = False
    ) -> None:
        self.items = items
        self.future = future
        self.enqueued = time.perf_counter()
        self.started = 0.0
        self.length = length  # its longest item's length; 0 when not known
        self.skipped = 0  # passes that left it out for its length
        self.part = part  # one part of a split request: never alone on the solo lane


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class CoreUse:
    """How many pieces of work that each keep a core busy run in the worker now: forward passes of
    every batcher sharing its lanes, and version loads. Threads of any kind enter and leave."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def enter(self) -> int:
        """Count one more; return how many ran before it."""
        with self._lock:
            self._count += 1
            return self._count - 1

    def leave(self) -> None:
        with self._lock:
            self._count -= 1

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @property
    def count(self) -> int:
        return self._count


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
        max_batch_tokens: int = 0,
        core_use: CoreUse | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if instances < 1:
            raise ValueError("instances must be at least 1")
        if max_batch_tokens < 0:
            raise ValueError("max_batch_tokens must not be negative")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max(0.0, max_delay_s)
        self._executor = executor
        self.instances = instances
        # With several instances a pass takes its share, so that under load every instance has work.
        share = instances + 1 if instances > 1 else 1
        self._pass_items = max(1, max_batch_size // share)
        # Padded tokens a pass may hold; 0: no bound. A request above it still runs, alone.
        self.max_batch_tokens = max_batch_tokens
        self._pass_tokens = max_batch_tokens // share if max_batch_tokens else 0
        self._solo = solo_executor
        self._core_use = core_use or CoreUse()  # shared by the worker's batchers: see "Solo lane"
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

    async def submit(
        self, items: list[Any], caller: Hashable = None, lengths: Sequence[int] | None = None
    ) -> tuple[dict[str, Any], float]:
        """Return this request's rows of every output, and the seconds it waited in the queue.
        Requests of different `caller`s share the passes fairly (see the module docstring);
        `lengths` (one per item, in tokens or an estimate of them) lets passes group requests of
        similar length and a large request be split across instances by length."""
        if not items:
            raise ValueError("empty request")
        if len(items) > self.max_batch_size:
            raise ValueError(f"{len(items)} items exceed max_batch_size {self.max_batch_size}")
        if lengths is not None and len(lengths) != len(items):
            raise ValueError(f"{len(lengths)} lengths given for {len(items)} items")
        loop = asyncio.get_running_loop()
        if lengths is None or self.instances < 2 or len(items) <= self._pass_items:
            pending = _Pending(items, loop.create_future(), max(lengths, default=0) if lengths else 0)
            self._enqueue(loop, [pending], caller)
            result = await pending.future
            return result, pending.started - pending.enqueued
        order = sorted(range(len(items)), key=lengths.__getitem__)
        cuts = _cuts(len(items), self._pass_items)
        parts = [
            _Pending([items[i] for i in order[a:b]], loop.create_future(), lengths[order[b - 1]], part=True)
            for a, b in itertools.pairwise(cuts)
        ]
        self._enqueue(loop, parts, caller)
        outcomes = await asyncio.gather(*(p.future for p in parts), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        results = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
        inverse = np.empty(len(items), dtype=np.intp)
        inverse[order] = np.arange(len(items))
        merged = {name: _joined([r[name] for r in results], inverse) for name in results[0]}
        return merged, min(p.started for p in parts) - parts[0].enqueued

    def _enqueue(self, loop: asyncio.AbstractEventLoop, requests: list[_Pending], caller: Hashable) -> None:
        """Queue `requests` (one request, or the parts of one) with consecutive fair-queueing tags."""
        with self._lock:
            if self._closed:
                raise RuntimeError("batcher closed")
            finish = self._finish
            begins = max(self._vtime, finish.get(caller, 0))
            if len(finish) >= _TRACKED_CALLERS and caller not in finish:
                self._finish = finish = {c: tag for c, tag in finish.items() if tag > self._vtime}
            for pending in requests:
                ends = begins + len(pending.items)
                heapq.heappush(self._queue, (ends, next(self._arrivals), begins, pending))
                self._queued_items += len(pending.items)
                begins = ends
            finish[caller] = begins
            start = self._claim_instance()
        if start:
            self._starter = loop.create_task(self._start(loop), name="batcher")
        elif self._waiter is not None:
            _wake(self._waiter)

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
        """Pop the next batch (callers that went away are dropped). Hold `_lock`. An empty batch
        gives the instance back. In finish-tag order while every request fits; otherwise grouped
        by length around the oldest (see "Passes are grouped by length" above)."""
        queue = self._queue
        # The oldest requests, in tag order, up to a few passes' worth of items.
        window: list[tuple[int, int, int, _Pending]] = []
        items = longest = 0
        fits = True
        while queue and not self._closed and items < _WINDOW_PASSES * self._pass_items:
            entry = heapq.heappop(queue)
            pending = entry[3]
            if pending.future.done():
                self._vtime = max(self._vtime, entry[2])
                self._queued_items -= len(pending.items)
                continue
            window.append(entry)
            items += len(pending.items)
            longest = max(longest, pending.length)
            fits = fits and items <= self._pass_items and self._within_tokens(items, longest)
        if not window:
            self._running -= 1
            return []
        by_length = longest > 0
        if fits:
            chosen = window
        elif by_length:
            chosen = self._choose(window)
        else:  # lengths unknown: as many as fit, in tag order
            chosen, items = [], 0
            for entry in window:
                if chosen and items + len(entry[3].items) > self._pass_items:
                    break
                chosen.append(entry)
                items += len(entry[3].items)
        taken = {id(entry[3]) for entry in chosen}
        for entry in window:
            if id(entry[3]) in taken:
                self._vtime = max(self._vtime, entry[2])
                self._queued_items -= len(entry[3].items)
            else:
                entry[3].skipped += by_length
                heapq.heappush(queue, entry)
        return [entry[3] for entry in chosen]

    def _within_tokens(self, items: int, longest: int) -> bool:
        return not self._pass_tokens or items * longest <= self._pass_tokens

    def _choose(self, window: list[tuple[int, int, int, _Pending]]) -> list[tuple[int, int, int, _Pending]]:
        """One pass from `window` (tag order): the oldest, then those left out too often, in tag
        order, then the least padding first, within the pass's items and tokens."""
        anchor = window[0][3]
        chosen = [window[0]]
        items, longest = len(anchor.items), anchor.length
        rest = []
        for entry in window[1:]:
            pending = entry[3]
            size = len(pending.items)
            if pending.skipped >= MAX_SKIPS:
                if items + size <= self._pass_items and self._within_tokens(
                    items + size, max(longest, pending.length)
                ):
                    chosen.append(entry)
                    items += size
                    longest = max(longest, pending.length)
                continue  # one that does not fit is at most the next pass's anchor or overdue
            rest.append(entry)
        rest.sort(key=lambda entry: (entry[3].length, entry[1]))
        split = bisect.bisect_right([entry[3].length for entry in rest], longest)
        # Each list is taken from its end: the longest shorter one, the shortest longer one, and
        # of equal lengths the oldest first.
        shorter = sorted(rest[:split], key=lambda entry: (entry[3].length, -entry[1]))
        longer = list(reversed(rest[split:]))
        while (shorter or longer) and items < self._pass_items:
            below = (longest - shorter[-1][3].length) * len(shorter[-1][3].items) if shorter else None
            above = (longer[-1][3].length - longest) * items if longer else None
            side = shorter if above is None or (below is not None and below <= above) else longer
            entry = side.pop()
            pending = entry[3]
            size = len(pending.items)
            grown = max(longest, pending.length)
            if items + size > self._pass_items or not self._within_tokens(items + size, grown):
                if side is longer:
                    longer.clear()  # every longer one needs at least as many tokens
                continue
            chosen.append(entry)
            items += size
            longest = grown
        return chosen

    def _hand_over(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        """Queue one forward pass on the executor (FIFO with other batchers' passes); a lone
        request while nothing else takes a core goes to the solo lane."""
        if not batch:
            return
        others = self._core_use.enter()
        lone = self._solo is not None and others == 0 and len(batch) == 1 and not batch[0].part
        executor = self._solo if lone and self._solo is not None else self._executor
        try:
            future = executor.submit(self._forward, loop, batch)
        except RuntimeError as exc:  # executor shut down
            self._core_use.leave()
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
        finally:
            self._core_use.leave()
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


def _cuts(count: int, share: int) -> list[int]:
    """Boundaries of the fewest parts of at most `share` items, their sizes differing by at most one."""
    parts = -(-count // share)
    return [count * k // parts for k in range(parts + 1)]


def _joined(values: list[Any], inverse: np.ndarray) -> Any:
    """The parts' rows of one output, concatenated in sorted order, put back in request order."""
    if all(isinstance(v, np.ndarray) for v in values):
        return np.concatenate(values)[inverse]
    flat = [row for value in values for row in value]
    return [flat[i] for i in inverse]


def _rows(value: Any, offset: int, n: int) -> Any:
    if isinstance(value, np.ndarray):
        return value[offset : offset + n]
    return list(value[offset : offset + n])
