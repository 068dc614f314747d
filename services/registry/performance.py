"""The performance store: benchmark runs and their metrics per version, and the newest value of each
metric (what comparisons and promotion gates read)."""

from __future__ import annotations

import dataclasses

from modelyard.common.errors import NotFound
from modelyard.registry import paging
from modelyard.registry import repository as repo
from modelyard.registry.catalog import find_version
from modelyard.registry.db import Database
from modelyard.registry.domain import BenchmarkRun, VersionMetric
from modelyard.registry.paging import Page
from modelyard.registry.validation import check_run


class Performance:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record_run(self, run: BenchmarkRun, *, actor: str) -> BenchmarkRun:
        """Insert or replace a run (a running run is recorded again when it finishes)."""
        check_run(run)
        async with self.db.transaction() as conn:
            await find_version(conn, run.model_id, run.version)
            return await repo.save_run(conn, run=dataclasses.replace(run, created_by=run.created_by or actor))

    async def get_run(self, run_id: str, *, with_samples: bool) -> BenchmarkRun:
        async with self.db.connection() as conn:
            run = await repo.get_run(conn, run_id=run_id, with_samples=with_samples)
        if run is None:
            raise NotFound(f"unknown benchmark run {run_id!r}; `modelyard bench list` shows the stored runs")
        return run

    async def list_runs(
        self, *, model_id: str, version: str, suite: str, status: str, page_size: int, page_token: str
    ) -> Page[BenchmarkRun]:
        limit = paging.page_size(page_size)
        async with self.db.connection() as conn:
            rows = await repo.list_runs(
                conn,
                model_id=model_id,
                version=version,
                suite=suite,
                status=status,
                before_seq=paging.int_token(page_token),
                limit=limit + 1,
            )
        return paging.keyed_page(rows, limit)

    async def version_metrics(self, model_id: str, version: str, suite: str) -> list[VersionMetric]:
        async with self.db.connection() as conn:
            resolved = await find_version(conn, model_id, version)
            return await repo.version_metrics(conn, model_id=model_id, version=resolved.version, suite=suite)
