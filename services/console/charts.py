"""Server-rendered SVG charts (grouped bars; points joined by lines): no chart library, no script.
Every plotted value is also on its element as `data-value` (repr of the float, so it reads back
exactly), a bar's interval as `data-low` / `data-high`: tests and scripts read the chart from the DOM."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

WIDTH, HEIGHT = 640, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 28, 52
SIDES = ("baseline", "candidate")


@dataclass(frozen=True)
class Bar:
    side: str  # "baseline" or "candidate"
    value: float
    low: float | None = None  # 95% interval, when the samples give one
    high: float | None = None


@dataclass(frozen=True)
class Group:
    metric: str
    unit: str
    bars: list[Bar]


def _nice_top(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.3f}".rstrip("0").rstrip(".")


def bar_chart(chart_id: str, title: str, groups: list[Group], *, fixed_top: float | None = None) -> str:
    """Grouped bars, one group per metric and one bar per side, whiskers where an interval is known."""
    if not groups:
        return ""
    finite = [
        v
        for g in groups
        for b in g.bars
        for v in (b.value, b.high if b.high is not None else b.value)
        if math.isfinite(v)
    ]
    top = fixed_top if fixed_top is not None else _nice_top(max(finite, default=1.0))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def y(value: float) -> float:
        clamped = min(max(value, 0.0), top)
        return _TOP + plot_h - clamped / top * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" data-top="{top!r}">',
        f'<text class="chart-title" x="{_LEFT}" y="16">{escape(title)}</text>',
    ]
    for i in range(5):
        tick = top * i / 4
        ty = y(tick)
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}"/>')
        parts.append(
            f'<text class="tick" x="{_LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end">{_label(tick)}</text>'
        )
    slot = plot_w / len(groups)
    bar_w = min(48.0, slot / (len(SIDES) + 1))
    for index, group in enumerate(groups):
        x0 = _LEFT + index * slot + (slot - bar_w * len(group.bars)) / 2
        parts.append(
            f'<g class="group" data-metric="{escape(group.metric)}" data-unit="{escape(group.unit)}">'
        )
        for offset, bar in enumerate(group.bars):
            x = x0 + offset * bar_w
            value_ok = math.isfinite(bar.value)
            top_y = y(bar.value) if value_ok else y(0)
            interval = ""
            if bar.low is not None and bar.high is not None:
                interval = f' data-low="{bar.low!r}" data-high="{bar.high!r}"'
            parts.append(
                f'<rect class="bar {bar.side}" x="{x + 2:.1f}" y="{top_y:.1f}" width="{bar_w - 4:.1f}" '
                f'height="{y(0) - top_y:.1f}" data-metric="{escape(group.metric)}" data-side="{bar.side}" '
                f'data-value="{bar.value!r}"{interval}><title>{escape(group.metric)} {bar.side}: '
                f"{_label(bar.value)} {escape(group.unit)}</title></rect>"
            )
            if bar.low is not None and bar.high is not None:
                cx = x + bar_w / 2
                ylo, yhi = y(bar.low), y(bar.high)
                parts.append(
                    f'<g class="whisker {bar.side}" data-metric="{escape(group.metric)}" data-side="{bar.side}">'
                    f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{ylo:.1f}" y2="{yhi:.1f}"/>'
                    f'<line x1="{cx - 5:.1f}" x2="{cx + 5:.1f}" y1="{ylo:.1f}" y2="{ylo:.1f}"/>'
                    f'<line x1="{cx - 5:.1f}" x2="{cx + 5:.1f}" y1="{yhi:.1f}" y2="{yhi:.1f}"/></g>'
                )
        label_x = _LEFT + index * slot + slot / 2
        parts.append(
            f'<text class="label" x="{label_x:.1f}" y="{HEIGHT - _BOTTOM + 16}" text-anchor="middle">'
            f"{escape(group.metric)}</text></g>"
        )
    legend_y = HEIGHT - 12
    for offset, side in enumerate(SIDES):
        lx = _LEFT + offset * 120
        parts.append(f'<rect class="legend {side}" x="{lx}" y="{legend_y - 10}" width="12" height="12"/>')
        parts.append(f'<text class="legend-label" x="{lx + 18}" y="{legend_y}">{side}</text>')
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class Point:
    """One observation of a line chart, placed by its position in the list (evenly spaced)."""

    value: float
    series: str  # points of one series are joined by a line (e.g. one suite)
    label: str  # under the x axis (e.g. the version)
    title: str  # shown on hover
    data: dict[str, str] = field(default_factory=dict)  # more `data-*` attributes
    highlight: bool = False


def _value_range(values: list[float]) -> tuple[float, float, float]:
    """Bottom, top and tick step that hold every value, on round numbers; 0 at the bottom when no
    value is negative and zero is near (a history of small changes keeps its detail otherwise)."""
    lo, hi = min(values), max(values)
    if lo == hi:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice_top((hi - lo) / 4)
    bottom, top = math.floor(lo / step) * step, math.ceil(hi / step) * step
    if min(values) >= 0 and (bottom < 0 or bottom <= (top - bottom) / 2):
        bottom = 0.0
        step = _nice_top(top / 4)
        top = math.ceil(hi / step) * step
    return bottom, top, step


def line_chart(
    chart_id: str, title: str, points: list[Point], *, unit: str = "", width: int = 760, height: int = 300
) -> str:
    """Points left to right in list order, each series joined by a line; non-finite values are not
    drawn (the caller says how many it left out). Labels thin out so that at most 12 show."""
    shown = [(i, p) for i, p in enumerate(points) if math.isfinite(p.value)]
    if not shown:
        return ""
    bottom, top, step = _value_range([p.value for _, p in shown])
    plot_w, plot_h = width - _LEFT - _RIGHT - 8, height - _TOP - _BOTTOM
    slot = plot_w / len(points)

    def x(index: int) -> float:
        return _LEFT + 8 + slot * (index + 0.5)

    def y(value: float) -> float:
        return _TOP + plot_h - (value - bottom) / (top - bottom) * plot_h

    series = list(dict.fromkeys(p.series for _, p in shown))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart line-chart" id="{escape(chart_id)}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" data-unit="{escape(unit)}" '
        f'data-bottom="{bottom!r}" data-top="{top!r}" data-points="{len(shown)}">',
        f'<text class="chart-title" x="{_LEFT}" y="16">{escape(title)}</text>',
    ]
    ticks = round((top - bottom) / step)
    for i in range(ticks + 1):
        tick = bottom + step * i
        ty = y(tick)
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{width - _RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}"/>')
        parts.append(
            f'<text class="tick" x="{_LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end">{_label(tick)}</text>'
        )
    for k, name in enumerate(series):
        line = " ".join(f"{x(i):.1f},{y(p.value):.1f}" for i, p in shown if p.series == name)
        parts.append(
            f'<polyline class="series series-{k % 6}" data-series="{escape(name)}" points="{line}"/>'
        )
    every = max(1, math.ceil(len(points) / 12))
    for i, p in shown:
        extra = "".join(f' data-{escape(key)}="{escape(value)}"' for key, value in p.data.items())
        mark = " highlight" if p.highlight else ""
        parts.append(
            f'<circle class="point series-{series.index(p.series) % 6}{mark}" cx="{x(i):.1f}" '
            f'cy="{y(p.value):.1f}" r="{7 if p.highlight else 5}" data-index="{i}" data-value="{p.value!r}" '
            f'data-series="{escape(p.series)}"{extra}><title>{escape(p.title)}</title></circle>'
        )
    for i, p in enumerate(points):
        if i % every == 0 or i == len(points) - 1:
            parts.append(
                f'<text class="label" x="{x(i):.1f}" y="{height - _BOTTOM + 16}" text-anchor="middle">'
                f"{escape(p.label)}</text>"
            )
    legend_y = height - 12
    for k, name in enumerate(series):
        lx = _LEFT + k * 160
        parts.append(
            f'<rect class="legend series-{k % 6}" x="{lx}" y="{legend_y - 10}" width="12" height="12"/>'
        )
        parts.append(f'<text class="legend-label" x="{lx + 18}" y="{legend_y}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
