"""Writes comparisons and runs as JSON, CSV or Markdown."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

from modelyard.benchmark.compare import Comparison
from modelyard.benchmark.results import RunRecord
from modelyard.common.errors import InvalidArgument

FORMATS = ("json", "csv", "markdown")

_COMPARISON_COLUMNS = (
    "metric", "unit", "baseline", "candidate", "delta", "ci_low", "ci_high",
    "higher_is_better", "winner", "paired", "baseline_samples", "candidate_samples",
)  # fmt: skip


def _check(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return fmt


def _number(value: float | None) -> float | None:
    """JSON has no NaN; a missing or undefined number is null."""
    return None if value is None or math.isnan(value) else value


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _run_header(run: RunRecord) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "suite": run.suite,
        "model_id": run.model_id,
        "version": run.version,
        "deployment": run.deployment,
        "status": run.status,
        "error": run.error,
        "conditions": dict(run.conditions),
        "hardware": run.hardware,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def export_comparison(comparison: Comparison, fmt: str) -> str:
    rows = [{column: getattr(m, column) for column in _COMPARISON_COLUMNS} for m in comparison.metrics]
    if _check(fmt) == "json":
        document = {
            "baseline": _run_header(comparison.baseline),
            "candidate": _run_header(comparison.candidate),
            "winner": comparison.winner,
            "resamples": comparison.resamples,
            "seed": comparison.seed,
            "metrics": [
                {k: _number(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows
            ],
        }
        return json.dumps(document, indent=2) + "\n"
    if fmt == "csv":
        return _csv(_COMPARISON_COLUMNS, rows)
    b, c = comparison.baseline, comparison.candidate
    lines = [
        f"## {b.suite}: {c.model_id} {c.version} (candidate) vs {b.model_id} {b.version} (baseline)",
        "",
        f"Overall winner: **{comparison.winner}**. Intervals: {comparison.resamples}-resample bootstrap, "
        "95%; a metric is a tie when its interval contains 0.",
        "",
        "| metric | baseline | candidate | delta | 95% CI | winner |",
        "|---|---|---|---|---|---|",
    ]
    for m in comparison.metrics:
        interval = f"[{_cell(m.ci_low)}, {_cell(m.ci_high)}]" if m.ci_low is not None else "n/a"
        arrow = "↑" if m.higher_is_better else "↓"
        unit = f" {m.unit}" if m.unit else ""
        lines.append(
            f"| {_md(m.metric)} {arrow} | {_cell(m.baseline)}{unit} | {_cell(m.candidate)}{unit} "
            f"| {_cell(m.delta)} | {interval} | {m.winner} |"
        )
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _csv(columns: Sequence[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) if isinstance(v, float) or v is None else v for k, v in row.items()})
    return buffer.getvalue()
