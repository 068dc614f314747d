"""Paging of the registry's list RPCs: page sizes, opaque page tokens, and the `Page` a list returns."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from modelyard.common.errors import InvalidArgument

T = TypeVar("T")
MAX_PAGE = 500
DEFAULT_PAGE = 50
_INVALID_TOKEN = "invalid page_token: pass the next_page_token of the previous response unchanged"


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, and the token of the next one ("" on the last page)."""

    items: list[T] = field(default_factory=list)
    next_page_token: str = ""


def page_size(requested: int, default: int = DEFAULT_PAGE) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or default, MAX_PAGE)


def encode_token(value: int | str) -> str:
    return base64.urlsafe_b64encode(f"v1:{value}".encode()).decode()


def decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not text.startswith("v1:"):
        raise InvalidArgument(_INVALID_TOKEN)
    return text[3:]


def int_token(token: str) -> int:
    """A token carrying a row id (keyset paging, newest first); 0 for the first page."""
    value = decode_token(token)
    if not value.isdigit() and value:
        raise InvalidArgument(_INVALID_TOKEN)
    return int(value) if value else 0


def page_of(rows: Sequence[T], limit: int, cursor: Callable[[T], int | str]) -> Page[T]:
    """Rows fetched with `limit + 1`: the page, and a token for the next one when there is more."""
    items = list(rows[:limit])
    return Page(items, encode_token(cursor(items[-1])) if len(rows) > limit else "")


def keyed_page(rows: Sequence[tuple[int, T]], limit: int) -> Page[T]:
    """Like `page_of` for `(row id, item)` pairs, the id being the cursor."""
    page = page_of(rows, limit, lambda row: row[0])
    return Page([item for _, item in page.items], page.next_page_token)
