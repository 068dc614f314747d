"""A stub on the in-process registry for each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from registry_support import Stub

from modelyard.client.channel import open_channel


@pytest_asyncio.fixture(loop_scope="session")
async def stub(registry) -> AsyncIterator[Stub]:  # type: ignore[no-untyped-def]
    async with open_channel(registry.address) as channel:
        yield Stub(channel)
