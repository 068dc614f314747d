"""Bounds on what one request may cost the worker, each checked before the work it bounds.

- Per item, from the version: a text element may hold at most `max tokens x bytes_per_token` bytes
  (the model reads no further anyway); an image at most `max_image_bytes` encoded and
  `max_image_pixels` as its header states, read before anything is decoded.
- Per request: decoded pixels over all its images (`max_request_pixels`); total bytes are bounded by
  gRPC itself (the worker's `max_message_bytes` is its receive limit, refused before parsing).
- Per worker: items in flight (queued and running, all versions together), with max-min fairness
  between callers (see `Admission`).

Item limits raise `BadInput` (INVALID_ARGUMENT: the same request can never succeed); a full worker
raises `WorkerAtCapacity` (RESOURCE_EXHAUSTED: retry later).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from modelyard.inference.errors import BadInput, WorkerAtCapacity

# Used when neither the version's config nor the loaded model names a maximum sequence length:
# the position limit of the BERT family, the most common text encoders.
DEFAULT_TEXT_TOKENS = 512
# With no version loaded yet, the auto admission limit assumes the default max_batch_size.
_DEFAULT_BATCH = 32
# The auto admission limit holds this many full batches: one running (the instances' shares), the
# next ready when a pass ends, and room for a bulk client pipelining a few full batches beside
# light callers. Queueing more adds only latency; fair batching keeps light callers ahead of it.
AUTO_BATCHES_IN_FLIGHT = 8


@dataclass(frozen=True)
class ItemLimits:
    """Worker-wide settings the per-item and per-request checks derive their limits from."""

    text_bytes_per_token: int = 64
    max_image_pixels: int = 2048 * 2048
    max_image_bytes: int = 8 * 1024 * 1024
    max_request_pixels: int = 4 * 2048 * 2048


def text_token_limit(runtime: Any) -> int:
    """Tokens the version reads of one text: the config's `max_sequence_length` when set, else what
    the loaded model says (sentence-transformers `max_seq_length`, an open_clip tokenizer's
    `context_length`), else `DEFAULT_TEXT_TOKENS`."""
    spec = getattr(runtime, "spec", None)
    configured = spec.config.max_sequence_length if spec is not None else 0
    if configured > 0:
        return configured
    for owner, attribute in (("model", "max_seq_length"), ("tokenizer", "context_length")):
        value = getattr(getattr(runtime, owner, None), attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_TEXT_TOKENS


@dataclass(frozen=True)
class TextLimit:
    """The byte limit of one text element of one version, and what it derives from."""

    tokens: int
    bytes_per_token: int

    @property
    def max_bytes(self) -> int:
        return self.tokens * self.bytes_per_token

    def check(self, items: list[bytes], name: str, version: str) -> None:
        """O(items); runs before UTF-8 decoding and tokenizing, whose cost grows with the bytes."""
        limit = self.max_bytes
        for index, item in enumerate(items):
            if len(item) > limit:
                raise BadInput(
                    f"input {name!r}: element {index} is {len(item)} bytes; version {version} reads at most "
                    f"{self.tokens} tokens of a text, so it takes at most {limit} bytes per element "
                    f"({self.bytes_per_token} per token); truncate the text or split it into passages"
                )


def check_images(items: list[bytes], name: str, limits: ItemLimits) -> None:
    """Refuse images too large to decode, from their encoded size and header alone: `Image.open` is
    lazy, so this costs the same few microseconds per element whatever the image holds. Blocking
    (PIL); call it from the decode executor with `prepare`."""
    from PIL import Image, UnidentifiedImageError

    total = 0
    for index, item in enumerate(items):
        if len(item) > limits.max_image_bytes:
            raise BadInput(
                f"input {name!r}: element {index} is {len(item)} encoded bytes; this worker takes at most "
                f"{limits.max_image_bytes} per image; send a smaller (resized or JPEG) image"
            )
        try:
            with Image.open(io.BytesIO(item)) as image:
                width, height = image.size
        except Image.DecompressionBombError as exc:  # PIL's own, process-wide ceiling; ours is lower
            raise BadInput(
                f"input {name!r}: element {index} is too large to decode ({exc}); this worker decodes "
                f"at most {limits.max_image_pixels} pixels per image; resize it"
            ) from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise BadInput(
                f"input {name!r}: element {index} is not a decodable image ({type(exc).__name__}); "
                "send encoded PNG or JPEG bytes"
            ) from exc
        pixels = width * height
        if pixels > limits.max_image_pixels:
            raise BadInput(
                f"input {name!r}: element {index} is a {width}x{height} image ({pixels} pixels); this worker "
                f"decodes at most {limits.max_image_pixels} pixels per image; resize it (the model sees a "
                "few hundred pixels a side anyway)"
            )
        total += pixels
        if total > limits.max_request_pixels:
            raise BadInput(
                f"input {name!r}: elements 0..{index} hold {total} pixels; this worker decodes at most "
                f"{limits.max_request_pixels} pixels per request; send fewer or smaller images per request"
            )


def auto_items_in_flight(largest_batch: int) -> int:
    return AUTO_BATCHES_IN_FLIGHT * max(1, largest_batch)


class Admission:
    """Items in flight on the worker (admitted, not yet answered), with max-min fairness by caller.

    Below `limit`, every request is admitted. At the limit a request is admitted only while its
    caller holds (with it) at most a fair share, `limit / callers in flight`: a caller flooding the
    worker is refused once it holds its share, while one that holds little still gets in. Callers
    above their share were admitted below the limit, and each of the others holds at most a share,
    so the total never exceeds twice the limit. A request the worker cannot take is refused at once,
    never queued: a queue would make every caller behind it wait, the well-behaved ones too.

    Event-loop only (no lock): `enter` and `exit` are called from coroutines of one loop.
    """

    def __init__(self, limit: int = 0) -> None:
        self.configured = limit
        self.limit = limit if limit > 0 else auto_items_in_flight(_DEFAULT_BATCH)
        self.total = 0
        self._held: dict[str, int] = {}

    def fit_batches(self, largest_batch: int) -> None:
        """With no configured limit, size the auto limit for the largest `max_batch_size` served."""
        if self.configured <= 0:
            self.limit = auto_items_in_flight(largest_batch)

    def holds(self, caller: str) -> int:
        return self._held.get(caller, 0)

    def enter(self, caller: str, items: int) -> None:
        total = self.total
        held = self._held.get(caller, 0)
        if total and total + items > self.limit:
            callers = len(self._held) + (0 if held else 1)
            if held + items > self.limit / callers or total + items > 2 * self.limit:
                raise WorkerAtCapacity(
                    f"worker is at capacity: {total} items in flight (limit {self.limit}), {held} of them "
                    f"from this caller, which asked for {items} more; retry with backoff"
                )
        self.total = total + items
        self._held[caller] = held + items

    def exit(self, caller: str, items: int) -> None:
        self.total -= items
        left = self._held.get(caller, 0) - items
        if left > 0:
            self._held[caller] = left
        else:
            self._held.pop(caller, None)
