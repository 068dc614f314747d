"""The history line chart and which metrics a catalog card leads with: plotted values read back
exactly from the SVG, the axis holds every value, non-finite values are left out."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from modelyard.console.charts import Point, line_chart
from modelyard.console.present import headline_metrics

SVG = "{http://www.w3.org/2000/svg}"


def test_every_point_carries_its_exact_value_inside_the_axis() -> None:
    values = [0.75, 0.1 + 0.2, 0.875, float("nan"), 0.8125]
    svg = line_chart(
        "chart-history",
        "recall@10 <of> minilm",
        [
            Point(v, "scifact" if i != 2 else "nq", f"1.{i}.0", f"run {i}", {"run-id": f"r{i}"})
            for i, v in enumerate(values)
        ],
    )
    root = ET.fromstring(svg)
    points = [(c.get("data-run-id"), float(str(c.get("data-value")))) for c in root.iter(f"{SVG}circle")]
    assert points == [("r0", 0.75), ("r1", 0.1 + 0.2), ("r2", 0.875), ("r4", 0.8125)], "NaN is not drawn"
    bottom, top = float(str(root.get("data-bottom"))), float(str(root.get("data-top")))
    assert bottom <= 0.1 + 0.2 and top >= 0.875
    lines = {p.get("data-series"): p.get("points") for p in root.iter(f"{SVG}polyline")}
    assert set(lines) == {"scifact", "nq"} and len(str(lines["scifact"]).split()) == 3
    assert root.get("aria-label") == "recall@10 <of> minilm", "text is escaped, not markup"
    ys = [float(str(c.get("cy"))) for c in root.iter(f"{SVG}circle")]
    assert ys[2] < ys[0] < ys[1], "higher values sit higher"


def test_a_narrow_range_keeps_its_detail_and_nothing_is_nothing() -> None:
    root = ET.fromstring(line_chart("c", "t", [Point(v, "s", "v", "") for v in (181.5, 252.25)]))
    assert 0 < float(str(root.get("data-bottom"))) <= 181.5 and float(str(root.get("data-top"))) >= 252.25
    assert line_chart("c", "t", []) == "" and line_chart("c", "t", [Point(float("nan"), "s", "v", "")]) == ""


def test_cards_lead_with_quality_then_peak_throughput_then_p50_at_the_lowest_level() -> None:
    newest = {
        "mrr@10": 0.3, "ndcg@10": 0.4, "recall@100": 0.9, "recall@10": 0.5, "latency_ms": 9.0,
        "latency_p50_ms[c=4]": 5.0, "latency_p50_ms[c=1]": 3.0, "throughput_rps[c=1]": 100.0,
        "throughput_rps[c=4]": 350.5, "error_rate[c=4]": 0.0,
    }  # fmt: skip
    assert headline_metrics(newest) == ["recall@10", "ndcg@10", "throughput_rps[c=4]", "latency_p50_ms[c=1]"]
    assert headline_metrics({"bleu": 0.2, "token_f1": 0.4, "knn_accuracy@5": 0.9}) == [
        "bleu",
        "knn_accuracy@5",
    ]
    assert headline_metrics({"latency_p50_ms": 7.0, "latency_p50_ms[c=1]": 3.0}) == ["latency_p50_ms"]
    assert headline_metrics({}) == []
