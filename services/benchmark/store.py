"""Where finished runs go: the registry's performance store in production, memory in tests."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from modelyard.benchmark.results import MetricResult, RunRecord
from modelyard.common.errors import InvalidArgument, NotFound


class RunStore(Protocol):
    async def record(self, run: RunRecord) -> RunRecord: ...

    async def get(self, run_id: str, *, with_samples: bool = True) -> RunRecord: ...

    async def list(
        self,
        *,
        model_id: str = "",
        version: str = "",
        suite: str = "",
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[RunRecord], str]: ...


def without_samples(run: RunRecord) -> RunRecord:
    return dataclasses.replace(run, metrics=tuple(MetricResult(m.name, m.value, m.unit) for m in run.metrics))


class InMemoryRunStore:
    """Keeps runs in insertion order; pages are offsets. For tests and a registry-less dev mode."""

    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}

    async def record(self, run: RunRecord) -> RunRecord:
        self._runs[run.run_id] = run
        return run

    async def get(self, run_id: str, *, with_samples: bool = True) -> RunRecord:
        try:
            run = self._runs[run_id]
        except KeyError:
            raise NotFound(f"no benchmark run {run_id!r}") from None
        return run if with_samples else without_samples(run)

    async def list(
        self,
        *,
        model_id: str = "",
        version: str = "",
        suite: str = "",
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[RunRecord], str]:
        try:
            offset = int(page_token) if page_token else 0
        except ValueError:
            raise InvalidArgument(f"invalid page_token {page_token!r}") from None
        size = page_size if page_size > 0 else 50
        matching = [
            without_samples(r)
            for r in self._runs.values()
            if (not model_id or r.model_id == model_id)
            and (not version or r.version == version)
            and (not suite or r.suite == suite)
        ]
        page = matching[offset : offset + size]
        next_token = str(offset + size) if offset + size < len(matching) else ""
        return page, next_token
