"""Request limits: the arithmetic of each limit, image header checks, fair admission and fair
batching, and the order in which the data plane applies them (before any decoding)."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from limits_support import png_bomb
from worker_support import png, version_spec

from modelyard.inference.batching import DynamicBatcher
from modelyard.inference.dataplane import DataPlane
from modelyard.inference.domain import InferenceRequest, InputTensor
from modelyard.inference.errors import BadInput, WorkerAtCapacity
from modelyard.inference.limits import (
    DEFAULT_TEXT_TOKENS,
    Admission,
    ItemLimits,
    TextLimit,
    check_images,
    text_token_limit,
)
from modelyard.inference.loaders.base import create_runtime
from modelyard.inference.routing import DeploymentRoutes, LoadedRuntime, RoutingTable

# --- per-item limits -------------------------------------------------------------------------------


def test_text_limit_is_the_version_tokens_times_bytes_per_token_and_names_the_element() -> None:
    limit = TextLimit(tokens=256, bytes_per_token=64)
    assert limit.max_bytes == 16384
    limit.check([b"x" * 16384, b"short"], "text", "1.0.0")  # at the limit: accepted
    with pytest.raises(BadInput) as refused:
        limit.check([b"fine", b"x" * 16385], "text", "1.0.0")
    message = refused.value.message
    assert "element 1" in message and "16385 bytes" in message and "16384" in message
    assert "256 tokens" in message and "truncate" in message


class _Config:
    def __init__(self, max_sequence_length: int) -> None:
        self.max_sequence_length = max_sequence_length


class _Spec:
    def __init__(self, max_sequence_length: int) -> None:
        self.config = _Config(max_sequence_length)


class _Holder:
    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


def test_text_tokens_come_from_the_config_else_the_model_else_a_default() -> None:
    assert text_token_limit(_Holder(spec=_Spec(128), model=_Holder(max_seq_length=256))) == 128
    assert text_token_limit(_Holder(spec=_Spec(0), model=_Holder(max_seq_length=256))) == 256
    assert text_token_limit(_Holder(spec=_Spec(0), tokenizer=_Holder(context_length=77))) == 77
    assert text_token_limit(_Holder(spec=_Spec(0))) == DEFAULT_TEXT_TOKENS


def test_loaded_models_report_their_sequence_length(tiny_st: Path, tiny_clip: Path) -> None:
    text = create_runtime(version_spec(tiny_st, "1"), tiny_st)
    text.load()
    clip = create_runtime(version_spec(tiny_clip, "1", loader="open-clip"), tiny_clip)
    clip.load()
    capped = create_runtime(version_spec(tiny_st, "2", max_sequence_length=20), tiny_st)
    capped.load()
    try:
        assert text_token_limit(text) == 48  # the tiny model's max_seq_length
        assert text_token_limit(clip) == 16  # the tiny CLIP's context length
        assert text_token_limit(capped) == 20
    finally:
        for runtime in (text, clip, capped):
            runtime.unload()


def _timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def test_a_decompression_bomb_is_refused_from_its_header_as_fast_as_a_small_image() -> None:
    bomb = png_bomb(12000, 12000)
    small = png()
    assert len(bomb) < 200 * 1024  # 137 KiB that would decode to 144 MB
    limits = ItemLimits()
    with pytest.raises(BadInput) as refused:
        check_images([small, bomb], "image", limits)
    assert "element 1" in refused.value.message and "12000x12000" in refused.value.message
    assert str(limits.max_image_pixels) in refused.value.message

    def refuse_bomb() -> None:
        with pytest.raises(BadInput):
            check_images([bomb], "image", limits)

    bomb_s = min(_timed(refuse_bomb) for _ in range(5))
    small_s = min(_timed(lambda: check_images([small], "image", limits)) for _ in range(5))
    # Only the header is read: the bomb costs what a 24x24 PNG costs, not a 144 MB decode.
    assert bomb_s < 20 * small_s + 0.001, (bomb_s, small_s)


def test_the_pixel_check_does_not_depend_on_pils_process_wide_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's own guard off (it is process-global)
    with pytest.raises(BadInput, match="3000x3000"):
        check_images([png_bomb(3000, 3000)], "image", ItemLimits(max_image_pixels=2000 * 2000))


def test_an_image_over_pils_own_ceiling_is_refused_with_our_message() -> None:
    with pytest.raises(BadInput, match="too large to decode") as refused:
        check_images([png_bomb(20000, 20000)], "image", ItemLimits())
    assert "element 0" in refused.value.message


def test_encoded_bytes_and_request_pixels_are_bounded() -> None:
    image = png(size=100)  # 10,000 pixels
    with pytest.raises(BadInput, match=r"element 0 is \d+ encoded bytes"):
        check_images([image], "image", ItemLimits(max_image_bytes=len(image) - 1))
    budget = ItemLimits(max_image_pixels=10_000, max_request_pixels=25_000)
    check_images([image, image], "image", budget)  # 20,000 pixels: within the request budget
    with pytest.raises(BadInput, match=r"elements 0\.\.2 hold 30000 pixels") as refused:
        check_images([image, image, image], "image", budget)
    assert "25000 pixels per request" in refused.value.message
    with pytest.raises(BadInput, match="not a decodable image"):
        check_images([b"\x89PNG not really"], "image", budget)


# --- admission -------------------------------------------------------------------------------------


def test_admission_admits_below_the_limit_and_refuses_a_caller_over_its_share() -> None:
    admission = Admission(limit=10)
    admission.enter("flood", 8)
    admission.enter("flood", 2)  # 10: at the limit, still admitted
    with pytest.raises(WorkerAtCapacity) as refused:
        admission.enter("flood", 1)
    assert "10 items in flight" in refused.value.message and "retry with backoff" in refused.value.message
    # A caller holding nothing gets in: its share is 10 / 2 callers.
    admission.enter("light", 1)
    admission.enter("light", 4)
    with pytest.raises(WorkerAtCapacity):
        admission.enter("light", 1)  # 6 > its share of 5
    admission.exit("flood", 10)
    admission.exit("light", 5)
    assert admission.total == 0 and admission.holds("flood") == admission.holds("light") == 0
    admission.enter("flood", 10)  # released: admitted again


def test_admission_never_exceeds_twice_its_limit_however_many_callers_arrive() -> None:
    admission = Admission(limit=16)
    admitted = refused = 0
    for round_ in range(20):
        for caller in range(40):
            try:
                admission.enter(f"c{caller}", 1 + (caller + round_) % 4)
                admitted += 1
            except WorkerAtCapacity:
                refused += 1
            assert admission.total <= 32
    assert admitted and refused


def test_an_idle_worker_admits_a_request_larger_than_its_limit() -> None:
    admission = Admission(limit=4)
    admission.enter("big", 32)  # a whole batch of a version whose batch exceeds the limit
    with pytest.raises(WorkerAtCapacity):
        admission.enter("big", 1)


def test_the_auto_limit_follows_the_largest_batch_and_a_configured_one_stays() -> None:
    auto = Admission()
    assert auto.limit == 256  # 8 default batches of 32
    auto.fit_batches(64)
    assert auto.limit == 512
    fixed = Admission(limit=50)
    fixed.fit_batches(64)
    assert fixed.limit == 50


# --- fair batching ---------------------------------------------------------------------------------


async def test_a_light_callers_request_goes_into_the_next_pass_not_behind_a_backlog() -> None:
    release = threading.Event()
    passes: list[list[Any]] = []

    def run(items: list[Any]) -> dict[str, Any]:
        passes.append(list(items))
        if len(passes) == 1:
            release.wait(5)
        return {"out": np.array([[0] for _ in items])}

    pool = ThreadPoolExecutor(1)
    batcher = DynamicBatcher(run, max_batch_size=4, max_delay_s=0, executor=pool)
    first = asyncio.ensure_future(batcher.submit(["f0"], caller="flood"))
    await asyncio.sleep(0.05)  # the first pass is running
    backlog = [
        asyncio.ensure_future(batcher.submit([f"f{i}a", f"f{i}b"], caller="flood")) for i in range(1, 6)
    ]
    await asyncio.sleep(0)
    light = asyncio.ensure_future(batcher.submit(["light"], caller="light"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, light, *backlog)
    assert "light" in passes[1], passes  # with one queue it would have come last
    # Each caller's own requests keep their order.
    flood = [item for p in passes for item in p if item != "light"]
    assert flood == ["f0"] + [f"f{i}{s}" for i in range(1, 6) for s in "ab"]
    await batcher.close()
    pool.shutdown()


async def test_a_light_caller_is_not_queued_behind_many_callers_in_lockstep() -> None:
    """Many callers with one request each hold equal start tags; the light caller's smaller finish
    tag puts it first (ordered by start tags it would wait for all of them)."""
    release = threading.Event()
    passes: list[list[Any]] = []

    def run(items: list[Any]) -> dict[str, Any]:
        passes.append(list(items))
        if len(passes) == 1:
            release.wait(5)
        return {"out": np.array([[0] for _ in items])}

    pool = ThreadPoolExecutor(1)
    batcher = DynamicBatcher(run, max_batch_size=4, max_delay_s=0, executor=pool)
    first = asyncio.ensure_future(batcher.submit(["first"], caller="c0"))
    await asyncio.sleep(0.05)  # the first pass is running
    others = [
        asyncio.ensure_future(batcher.submit([f"c{i}a", f"c{i}b"], caller=f"c{i}")) for i in range(1, 7)
    ]
    await asyncio.sleep(0)
    light = asyncio.ensure_future(batcher.submit(["light"], caller="light"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, light, *others)
    assert "light" in passes[1], passes
    await batcher.close()
    pool.shutdown()


# --- the data plane applies them before decoding ----------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def limited(tiny_st: Path, tiny_clip: Path) -> AsyncIterator[DataPlane]:
    table = RoutingTable()
    runtimes = []
    for deployment, path, loader in (
        ("text", tiny_st, "sentence-transformers"),
        ("clip", tiny_clip, "open-clip"),
    ):
        spec = version_spec(path, "1", loader=loader, max_batch_size=8, model_id=deployment)
        runtime = create_runtime(spec, path)
        runtime.load()
        runtimes.append(runtime)
        loaded = LoadedRuntime(spec, runtime)
        table.swap(DeploymentRoutes(deployment, deployment, {"1": loaded}, {"1": 100}))
    infer, decode = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    plane = DataPlane(
        table,
        infer,
        decode_executor=decode,
        limits=ItemLimits(max_image_pixels=64 * 64, max_request_pixels=3 * 64 * 64),
        admission=Admission(limit=10),
    )
    plane.routes_changed()
    yield plane
    infer.shutdown()
    decode.shutdown()
    for runtime in runtimes:
        runtime.unload()


def _request(deployment: str, name: str, items: list[bytes]) -> InferenceRequest:
    return InferenceRequest(deployment, "", "r", [InputTensor(name, "BYTES", [len(items)], items)])


async def test_an_oversized_text_is_refused_by_size_before_it_is_decoded(limited: DataPlane) -> None:
    # Invalid UTF-8 at its end: decoding it first would answer with the UTF-8 error instead.
    oversized = b"word " * 1000 + b"\xff"
    with pytest.raises(BadInput, match=r"element 1 is 5001 bytes; version 1 reads at most 48 tokens"):
        await limited.infer(_request("text", "text", [b"fine", oversized]), caller="a")
    assert limited.admission.total == 0  # released
    response = await limited.infer(_request("text", "text", [b"w" * 48 * 64]), caller="a")  # at the limit
    assert response.outputs[0].shape == [1, 32]


async def test_image_limits_apply_to_every_image_before_any_is_decoded(limited: DataPlane) -> None:
    with pytest.raises(BadInput, match="element 0 is a 12000x12000 image"):
        await limited.infer(_request("clip", "image", [png_bomb(12000, 12000)] * 8), caller="a")
    with pytest.raises(BadInput, match="pixels per request"):
        await limited.infer(_request("clip", "image", [png(size=64)] * 4), caller="a")
    response = await limited.infer(_request("clip", "image", [png(size=64)] * 3), caller="a")
    assert response.outputs[0].shape == [3, 16]
    assert limited.admission.total == 0


async def test_a_full_worker_refuses_at_once_and_a_light_caller_still_gets_in(limited: DataPlane) -> None:
    limited.admission.enter("flood", 10)  # as if a flood held every admitted item
    try:
        started = time.perf_counter()
        with pytest.raises(WorkerAtCapacity, match="at capacity: 10 items in flight"):
            await limited.infer(_request("text", "text", [b"x"] * 6), caller="heavy")  # over its share
        refused_s = time.perf_counter() - started
        served = time.perf_counter()
        response = await limited.infer(_request("text", "text", [b"hello"]), caller="light")
        served_s = time.perf_counter() - served
        assert response.outputs[0].shape == [1, 32]
        assert refused_s < served_s  # refused before any work, faster than serving one item
    finally:
        limited.admission.exit("flood", 10)
    assert limited.admission.total == 0


async def test_an_undecodable_image_is_still_invalid_input(limited: DataPlane) -> None:
    with pytest.raises(BadInput, match="element 1 is not a decodable image"):
        await limited.infer(_request("clip", "image", [png(), b"nope"]), caller="a")


def test_png_bomb_is_a_valid_png_of_its_size() -> None:
    from PIL import Image

    with Image.open(io.BytesIO(png_bomb(300, 200))) as image:
        assert image.size == (300, 200)
        image.load()


def test_invalid_utf8_names_its_element() -> None:
    from modelyard.inference.loaders.base import decode_texts

    assert decode_texts([b"caf\xc3\xa9"], "text") == ["café"]
    with pytest.raises(BadInput, match="element 2 is not valid UTF-8"):
        decode_texts([b"ok", b"fine", b"\xff"], "text")
