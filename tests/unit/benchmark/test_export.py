"""Exports: JSON parses back, CSV has one row per metric, Markdown is a table a reviewer can read."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import numpy as np
import pytest

from modelyard.benchmark.compare import compare_runs
from modelyard.benchmark.export import export_comparison
from modelyard.benchmark.results import MetricResult, RunRecord
from modelyard.common.errors import InvalidArgument


def _runs() -> tuple[RunRecord, RunRecord]:
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    latencies = rng.lognormal(3.0, 0.2, 300)

    def run(run_id: str, version: str, shift: float, speedup: float) -> RunRecord:
        return RunRecord(
            run_id,
            "stdlib-docstrings",
            "minilm",
            version,
            (
                MetricResult("recall@10", float(np.mean(scores + shift)), "", tuple(scores + shift)),
                MetricResult(
                    "latency_ms[c=2]", float(np.mean(latencies * speedup)), "ms", tuple(latencies * speedup)
                ),
                MetricResult("latency_p99_ms[c=2]", float(np.percentile(latencies * speedup, 99)), "ms"),
                MetricResult("throughput_rps[c=2]", float("nan"), "requests/s"),
            ),
            conditions={"concurrency": "2", "quantization": "int8-dynamic" if shift else ""},
            started_at=datetime(2026, 1, 1, tzinfo=UTC),
        )

    return run("r1", "1.0.0", 0.0, 1.0), run("r2", "1.1.0", 0.05, 0.7)


def test_comparison_json_round_trips_with_nan_as_null() -> None:
    baseline, candidate = _runs()
    comparison = compare_runs(baseline, candidate)
    document = json.loads(export_comparison(comparison, "json"))
    assert document["winner"] == comparison.winner
    assert document["baseline"]["version"] == "1.0.0"
    assert document["candidate"]["conditions"]["quantization"] == "int8-dynamic"
    metrics = {m["metric"]: m for m in document["metrics"]}
    assert metrics["recall@10"]["delta"] == pytest.approx(0.05)
    # Every query gained exactly 0.05, so the paired interval collapses onto it.
    assert metrics["recall@10"]["ci_low"] == pytest.approx(0.05)
    assert metrics["recall@10"]["ci_high"] == pytest.approx(0.05)
    assert metrics["throughput_rps[c=2]"]["baseline"] is None
    assert metrics["throughput_rps[c=2]"]["ci_low"] is None


def test_comparison_csv_has_a_row_per_metric() -> None:
    comparison = compare_runs(*_runs())
    rows = list(csv.DictReader(io.StringIO(export_comparison(comparison, "csv"))))
    assert [r["metric"] for r in rows] == [m.metric for m in comparison.metrics]
    recall = rows[0]
    assert float(recall["delta"]) == pytest.approx(0.05)
    assert recall["winner"] == "candidate"
    assert recall["paired"] == "True"


def test_comparison_markdown_is_a_table_with_intervals() -> None:
    comparison = compare_runs(*_runs())
    text = export_comparison(comparison, "markdown")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| metric | baseline | candidate | delta | 95% CI | winner |")
    assert len(rows) == 1 + len(comparison.metrics)
    assert "latency_p99_ms[c=2] ↓" in text
    assert "minilm 1.1.0 (candidate) vs minilm 1.0.0 (baseline)" in text
    assert all(line.count("|") == 7 for line in rows)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="json, csv, markdown"):
        export_comparison(compare_runs(*_runs()), "xml")
