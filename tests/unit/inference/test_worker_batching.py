"""Dynamic batching: requests coalesce up to max_batch_size, each caller gets its own rows."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from modelyard.inference.batching import CoreUse, DynamicBatcher


class Recorder:
    def __init__(self, fail_on: object = None) -> None:
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


async def test_a_lone_request_stays_off_the_solo_lane_while_other_work_holds_a_core() -> None:
    """The solo lane's threads use every core: beside another version's pass or a load they would
    outnumber the cores, so a lone request then takes an instance."""
    pool = ThreadPoolExecutor(2, thread_name_prefix="instance")
    solo = ThreadPoolExecutor(1, thread_name_prefix="solo")
    core_use = CoreUse()
    release = threading.Event()

    def slow(items: list[Any]) -> dict[str, Any]:
        release.wait(5)
        return {"double": np.array([[x * 2] for x in items])}

    fast = Recorder()
    old, new = (
        DynamicBatcher(
            run,
            max_batch_size=8,
            max_delay_s=0,
            executor=pool,
            instances=2,
            solo_executor=solo,
            core_use=core_use,
        )
        for run in (slow, fast)
    )
    running = asyncio.ensure_future(old.submit([1]))  # the other version's pass, still running
    while core_use.count == 0:
        await asyncio.sleep(0.001)
    await new.submit([2])
    assert fast.threads <= {"instance_0", "instance_1"} and fast.threads
    release.set()
    await running
    while core_use.count:
        await asyncio.sleep(0.001)
    with core_use.held():  # a version loading
        await new.submit([3])
    assert "solo_0" not in fast.threads
    await new.submit([4])  # the machine to itself again
    assert "solo_0" in fast.threads
    assert core_use.count == 0
    for batcher in (old, new):
        await batcher.close()
    pool.shutdown()
    solo.shutdown()


def _words(count: int) -> list[str]:
    """Texts whose lengths arrive shuffled: 'w' * n for a fixed permutation of 1..count."""
    order = np.random.default_rng(7).permutation(count) + 1
    return ["w" * int(n) for n in order]


async def test_a_large_request_is_split_by_length_across_the_instances() -> None:
    passes: list[tuple[str, list[str]]] = []
    both = threading.Barrier(2, timeout=5)

    def run(items: list[Any]) -> dict[str, Any]:
        passes.append((threading.current_thread().name, list(items)))
        if len(passes) <= 2:
            both.wait()  # the first two parts only return once they run at the same time
        return {"length": np.array([[len(x)] for x in items]), "label": [x.encode() for x in items]}

    pool = ThreadPoolExecutor(2, thread_name_prefix="instance")
    solo = ThreadPoolExecutor(1, thread_name_prefix="solo")
    batcher = DynamicBatcher(
        run, max_batch_size=32, max_delay_s=0.01, executor=pool, instances=2, solo_executor=solo
    )
    texts = _words(32)
    rows, waited = await batcher.submit(texts, "c", [len(t) for t in texts])
    assert rows["length"].ravel().tolist() == [len(t) for t in texts]  # back in request order
    assert rows["label"] == [t.encode() for t in texts]
    assert waited >= 0
    share = 32 // 3
    assert [len(items) for _, items in passes] == [8, 8, 8, 8]  # the fewest parts of at most a share
    assert all(len(items) <= share for _, items in passes)
    # Each pass holds consecutive lengths, so it pads only to its own longest item.
    spans = sorted((min(map(len, items)), max(map(len, items))) for _, items in passes)
    assert spans == [(1, 8), (9, 16), (17, 24), (25, 32)]
    assert {name for name, _ in passes} <= {"instance_0", "instance_1"}  # parts never take the solo lane
    assert len({name for name, _ in passes}) == 2
    await batcher.close()
    pool.shutdown()
    solo.shutdown()


async def test_without_lengths_or_with_one_instance_a_request_stays_one_pass(executor: Any) -> None:
    recorder = Recorder()
    one = DynamicBatcher(recorder, max_batch_size=32, max_delay_s=0, executor=executor)
    await one.submit(list(range(32)), "c", list(range(32)))
    pool = ThreadPoolExecutor(2)
    two = DynamicBatcher(recorder, max_batch_size=32, max_delay_s=0, executor=pool, instances=2)
    await two.submit(list(range(32)))
    assert [len(b) for b in recorder.batches] == [32, 32]
    with pytest.raises(ValueError, match="lengths"):
        await two.submit([1, 2], "c", [1])
    await one.close()
    await two.close()
    pool.shutdown()


class Stepper:
    """A forward pass that returns only when the test lets it: `passes` holds each pass's items."""

    def __init__(self) -> None:
        self.passes: list[list[str]] = []
        self._go = threading.Semaphore(0)

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        self.passes.append(list(items))
        assert self._go.acquire(timeout=5), "the test never released this pass"
        return {"label": [x.encode() for x in items]}

    async def started(self, count: int) -> None:
        """Wait until `count` passes have begun."""
        for _ in range(500):
            if len(self.passes) >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"only {len(self.passes)} of {count} passes began")

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._go.release()


def _text(name: str, length: int) -> tuple[list[str], str, list[int]]:
    """submit() arguments: one item named `name`, its own caller, the given length."""
    return [name], name, [length]


async def test_queued_requests_of_similar_length_share_a_pass(executor: Any) -> None:
    stepper = Stepper()
    batcher = DynamicBatcher(stepper, max_batch_size=4, max_delay_s=0, executor=executor)
    gate = asyncio.ensure_future(batcher.submit(*_text("gate", 5)))
    await stepper.started(1)
    # Short and long texts arrive interleaved while the first pass runs.
    lengths = {f"t{i}": (12 if i % 2 == 0 else 120) + i for i in range(8)}
    queued = [asyncio.ensure_future(batcher.submit(*_text(name, n))) for name, n in lengths.items()]
    await asyncio.sleep(0.05)
    stepper.release(3)
    results = await asyncio.gather(gate, *queued)
    assert [rows["label"] for rows, _ in results[1:]] == [[name.encode()] for name in lengths]
    # In arrival order each pass would pad two short texts to a long one; grouped, none does.
    assert [sorted(p) for p in stepper.passes[1:]] == [["t0", "t2", "t4", "t6"], ["t1", "t3", "t5", "t7"]]
    await batcher.close()


async def test_a_pass_holds_at_most_its_token_budget_and_an_item_above_it_runs_alone(executor: Any) -> None:
    stepper = Stepper()
    batcher = DynamicBatcher(
        stepper, max_batch_size=8, max_delay_s=0, executor=executor, max_batch_tokens=200
    )
    gate = asyncio.ensure_future(batcher.submit(*_text("gate", 5)))
    await stepper.started(1)
    names = [f"m{i}" for i in range(6)]
    queued = [asyncio.ensure_future(batcher.submit(*_text(name, 60))) for name in names]
    huge = asyncio.ensure_future(batcher.submit(*_text("huge", 500)))
    await asyncio.sleep(0.05)
    stepper.release(10)
    await asyncio.gather(gate, *queued, huge)
    # 3 x 60 = 180 padded tokens fit in 200, 4 x 60 do not; 500 alone exceeds it and still runs.
    assert [sorted(p) for p in stepper.passes[1:]] == [names[:3], names[3:], ["huge"]]
    with pytest.raises(ValueError, match="max_batch_tokens"):
        DynamicBatcher(stepper, max_batch_size=8, max_delay_s=0, executor=executor, max_batch_tokens=-1)
    await batcher.close()


async def test_a_request_left_out_for_its_length_waits_at_most_max_skips_passes(executor: Any) -> None:
    from modelyard.inference.batching import MAX_SKIPS

    assert MAX_SKIPS == 2
    stepper = Stepper()
    batcher = DynamicBatcher(stepper, max_batch_size=2, max_delay_s=0, executor=executor)
    futures = [asyncio.ensure_future(batcher.submit(*_text("gate", 5)))]
    await stepper.started(1)
    # Caller x's long text queues behind its short one, so callers arriving later get earlier
    # fair-queueing tags; short texts keep arriving while each pass runs.
    futures.append(asyncio.ensure_future(batcher.submit(["x-short"], "x", [10])))
    futures.append(asyncio.ensure_future(batcher.submit(["x-long"], "x", [100])))
    futures += [asyncio.ensure_future(batcher.submit(*_text(f"f{i}", 10))) for i in range(3)]
    await asyncio.sleep(0.05)
    fresh = 3
    for started in range(2, 5):
        stepper.release()
        await stepper.started(started)
        futures += [asyncio.ensure_future(batcher.submit(*_text(f"f{fresh + i}", 10))) for i in range(2)]
        fresh += 2
        await asyncio.sleep(0.02)
    stepper.release(20)
    await asyncio.gather(*futures)
    taken = next(i for i, p in enumerate(stepper.passes) if "x-long" in p)
    # Passes 1 and 2 left it out for shorter texts; pass 3 takes it although shorter ones wait.
    assert taken == 1 + MAX_SKIPS, stepper.passes
    assert any(len(p) == 2 and p[0].startswith("f") for p in stepper.passes[taken + 1 :]), stepper.passes
    await batcher.close()


async def test_a_failing_part_fails_its_request_and_the_batcher_keeps_working() -> None:
    recorder = Recorder(fail_on=30)
    pool = ThreadPoolExecutor(2)
    batcher = DynamicBatcher(recorder, max_batch_size=32, max_delay_s=0, executor=pool, instances=2)
    items = list(range(32))
    with pytest.raises(RuntimeError, match="boom"):
        await batcher.submit(items, "c", items)
    rows, _ = await batcher.submit(list(range(12)), "c", list(range(12)))
    assert rows["double"].ravel().tolist() == [2 * x for x in range(12)]
    await batcher.close()
    pool.shutdown()


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
