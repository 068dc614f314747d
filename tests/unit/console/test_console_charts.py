"""Server-rendered charts: the plotted values read back exactly from the SVG; intervals only where
the samples average to the stored value."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from modelyard.console.charts import Bar, Group, bar_chart
from modelyard.console.compare import mean_interval


def test_every_bar_carries_its_exact_value_and_interval() -> None:
    svg = bar_chart(
        "chart-quality",
        "Quality <b>",
        [
            Group("recall@10", "ratio", [Bar("baseline", 0.1 + 0.2, 0.2, 0.4), Bar("candidate", 0.875)]),
            Group("ndcg@10", "", [Bar("baseline", 2 / 3), Bar("candidate", float("nan"))]),
        ],
        fixed_top=1.0,
    )
    root = ET.fromstring(svg)
    bars = [
        (e.get("data-metric"), e.get("data-side"), e.get("data-value"), e.get("data-low"))
        for e in root.iter("{http://www.w3.org/2000/svg}rect")
        if "bar" in (e.get("class") or "").split()
    ]
    assert [(m, s, float(str(v))) for m, s, v, _ in bars][:3] == [
        ("recall@10", "baseline", 0.1 + 0.2),
        ("recall@10", "candidate", 0.875),
        ("ndcg@10", "baseline", 2 / 3),
    ]
    assert bars[0][3] == repr(0.2) and bars[1][3] is None
    assert root.get("aria-label") == "Quality <b>", "text is escaped, not markup"


def test_an_empty_chart_is_nothing() -> None:
    assert bar_chart("x", "nothing", []) == ""


def test_mean_interval_brackets_the_mean_and_is_reproducible() -> None:
    samples = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    low, high = mean_interval(samples, 0.75)  # type: ignore[misc]
    assert 0.0 <= low < 0.75 < high <= 1.0
    assert mean_interval(samples, 0.75) == (low, high)
    assert mean_interval(samples, 0.9) is None, "a value the samples do not average to"
    assert mean_interval([0.5], 0.5) is None
