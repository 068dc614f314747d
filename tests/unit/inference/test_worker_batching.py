"""Dynamic batching: requests coalesce up to max_batch_size, each caller gets its own rows."""

from __future__ import annotations

import asyncio
import threading
import time
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


async def test_the_next_pass_starts_while_the_event_loop_is_blocked(executor: Any) -> None:
    release, second_started = threading.Event(), threading.Event()

    def run(items: list[Any]) -> dict[str, Any]:
        if items == [1]:
            release.wait(5)
        else:
            second_started.set()
        return {"double": np.array([[x * 2] for x in items])}

    batcher = DynamicBatcher(run, max_batch_size=4, max_delay_s=0.05, executor=executor)
    first = asyncio.ensure_future(batcher.submit([1]))
    await asyncio.sleep(0.05)  # the first pass is running
    second = asyncio.ensure_future(batcher.submit([2]))
    await asyncio.sleep(0)  # queued behind it
    release.set()
    # Blocks the event loop: the executor thread must take the queued request by itself.
    assert second_started.wait(5)
    assert (await first)[0]["double"].ravel().tolist() == [2]
    assert (await second)[0]["double"].ravel().tolist() == [4]
    await batcher.close()


async def test_instances_run_passes_at_once_each_with_its_share() -> None:
    running, peak, lock = 0, 0, threading.Lock()
    sizes: list[int] = []
    both = threading.Barrier(2, timeout=5)

    def run(items: list[Any]) -> dict[str, Any]:
        nonlocal running, peak
        sizes.append(len(items))
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            if 0 not in items:
                both.wait()  # only returns once two passes run at the same time
        finally:
            with lock:
                running -= 1
        return {"double": np.array([[x * 2] for x in items])}

    pool = ThreadPoolExecutor(2, thread_name_prefix="instance")
    batcher = DynamicBatcher(run, max_batch_size=12, max_delay_s=0.01, executor=pool, instances=2)
    await batcher.submit([0])
    await asyncio.gather(batcher.submit([0]), batcher.submit([0]))  # from here on it waits for company
    results = await asyncio.gather(*(batcher.submit([i]) for i in range(1, 9)))
    assert [r["double"].ravel().tolist() for r, _ in results] == [[2 * i] for i in range(1, 9)]
    assert peak == 2
    assert max(sizes) <= 12 // 3  # a share: the third goes to whichever instance frees up first
    await batcher.close()
    pool.shutdown()


async def test_a_lone_request_on_an_idle_batcher_takes_the_solo_lane() -> None:
    recorder = Recorder()
    pool = ThreadPoolExecutor(2, thread_name_prefix="instance")
    solo = ThreadPoolExecutor(1, thread_name_prefix="solo")
    batcher = DynamicBatcher(
        recorder, max_batch_size=8, max_delay_s=0.05, executor=pool, instances=2, solo_executor=solo
    )
    await batcher.submit([1])
    assert recorder.threads == {"solo_0"}
    await asyncio.gather(*(batcher.submit([i]) for i in range(2, 8)))
    assert any(t.startswith("instance") for t in recorder.threads)  # several requests: the instances
    await batcher.close()
    pool.shutdown()
    solo.shutdown()


async def test_close_waits_for_the_running_pass() -> None:
    finished = threading.Event()

    def run(items: list[Any]) -> dict[str, Any]:
        time.sleep(0.2)
        finished.set()
        return {"double": np.array([[x] for x in items])}

    pool = ThreadPoolExecutor(1)
    batcher = DynamicBatcher(run, max_batch_size=2, max_delay_s=0, executor=pool)
    request = asyncio.ensure_future(batcher.submit([1]))
    await asyncio.sleep(0.05)
    await batcher.close()
    assert finished.is_set()  # the model may be unloaded now: nothing runs on it any more
    assert (await request)[0]["double"].ravel().tolist() == [1]
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.submit([2])
    pool.shutdown()


@pytest.mark.parametrize(
    ("instances", "cores", "expected"),
    [(0, 2, (2, 1, 2)), (0, 8, (2, 4, 0)), (1, 2, (1, 2, 0)), (0, 1, (1, 1, 0)), (4, 2, (4, 1, 2))],
)
def test_lanes_never_hold_more_openmp_threads_than_cores(
    instances: int, cores: int, expected: tuple[int, int, int]
) -> None:
    import torch

    from modelyard.inference.worker import plan_lanes

    if instances == 0 and torch.cuda.is_available():
        expected = (1, cores, 0)  # one instance per GPU worker
    lanes = plan_lanes(instances, cores)
    assert (lanes.instances, lanes.threads_per_instance, lanes.solo_threads) == expected
