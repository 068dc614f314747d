"""Dynamic batching: requests coalesce up to max_batch_size, each caller gets its own rows."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from modelyard.inference.batching import DynamicBatcher


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.fail_on in items:
            raise RuntimeError("boom")
        return {
            "double": np.array([[x * 2] for x in items if isinstance(x, int)] or [[0]] * len(items)),
            "label": [f"item-{x}".encode() for x in items],
        }


@pytest.fixture
def executor() -> Any:
    pool = ThreadPoolExecutor(1, thread_name_prefix="test-infer")
    yield pool
    pool.shutdown()


async def test_concurrent_requests_share_forward_passes_and_get_their_own_rows(executor: Any) -> None:
    recorder = Recorder()
    batcher = DynamicBatcher(recorder, max_batch_size=8, max_delay_s=0.05, executor=executor)
    requests = [[i * 10 + j for j in range(1 + i % 3)] for i in range(12)]
    results = await asyncio.gather(*(batcher.submit(items) for items in requests))
    for items, (rows, waited) in zip(requests, results, strict=True):
        assert rows["double"].ravel().tolist() == [x * 2 for x in items]
        assert rows["label"] == [f"item-{x}".encode() for x in items]
        assert waited >= 0
    assert len(recorder.batches) < len(requests)
    assert all(len(batch) <= 8 for batch in recorder.batches)
    assert sorted(x for batch in recorder.batches for x in batch) == sorted(x for r in requests for x in r)
    assert recorder.threads == {"test-infer_0"}  # forward passes never run on the event loop
    await batcher.close()


async def test_a_request_larger_than_the_batch_limit_is_refused(executor: Any) -> None:
    batcher = DynamicBatcher(Recorder(), max_batch_size=2, max_delay_s=0, executor=executor)
    with pytest.raises(ValueError, match="exceed"):
        await batcher.submit([1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        await batcher.submit([])


async def test_a_failing_batch_fails_its_callers_and_the_batcher_keeps_working(executor: Any) -> None:
    recorder = Recorder(fail_on="bad")
    batcher = DynamicBatcher(recorder, max_batch_size=4, max_delay_s=0.02, executor=executor)
    outcomes = await asyncio.gather(batcher.submit(["bad"]), batcher.submit([1]), return_exceptions=True)
    assert any(isinstance(o, RuntimeError) for o in outcomes)
    rows, _ = await batcher.submit([3])
    assert rows["double"].ravel().tolist() == [6]
    await batcher.close()


async def test_arrival_order_is_kept_when_a_request_does_not_fit(executor: Any) -> None:
    recorder = Recorder()
    batcher = DynamicBatcher(recorder, max_batch_size=3, max_delay_s=0.05, executor=executor)
    await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3, 4]), batcher.submit([5]))
    assert recorder.batches[0] == [1, 2]
    assert [x for batch in recorder.batches for x in batch] == [1, 2, 3, 4, 5]
    await batcher.close()


async def test_a_lone_caller_never_waits_for_the_batch_delay(executor: Any) -> None:
    recorder = Recorder()
    # A 30 s delay would time the test out if a lone request ever waited for it.
    batcher = DynamicBatcher(recorder, max_batch_size=8, max_delay_s=30, executor=executor)
    for i in range(3):
        rows, _ = await asyncio.wait_for(batcher.submit([i]), 5)
        assert rows["double"].ravel().tolist() == [2 * i]
    assert recorder.batches == [[0], [1], [2]]
    await batcher.close()
