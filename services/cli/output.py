"""Human output: aligned tables and value formatting; `--json` output goes through `CliContext`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from google.protobuf.timestamp_pb2 import Timestamp
from rich import box
from rich.table import Table

from modelyard.api import registry_pb2 as rpb
from modelyard.cli.context import CliContext, get_context

F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    """`--json` on a subcommand, equivalent to the global `modelyard --json`."""

    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            get_context().json = True

    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=set_json,
        help="Print machine-readable JSON instead of tables.",
    )(func)


def table(
    ctx: CliContext,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    title: str | None = None,
    right: Sequence[str] = (),
) -> None:
    """Print an aligned table; numeric columns named in `right` are right-aligned."""
    out = Table(
        box=box.SIMPLE_HEAD, safe_box=True, show_edge=False, title=title, title_justify="left", pad_edge=False
    )
    for column in columns:
        out.add_column(column, justify="right" if column in right else "left", overflow="fold")
    for row in rows:
        out.add_row(*("" if cell is None else str(cell) for cell in row))
    ctx.out.print(out)


def key_values(ctx: CliContext, pairs: Sequence[tuple[str, object]]) -> None:
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        ctx.out.print(f"{key:<{width}}  {value}", markup=False, highlight=False)


def when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    moment = datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def routes_text(routes: Iterable[rpb.Route]) -> str:
    parts = [
        f"{r.version}={r.weight}"
        + (f" (shadow {r.mirror_percent}%)" if r.mirror_percent else " (staged)" if r.weight == 0 else "")
        for r in routes
    ]
    return ", ".join(parts) or "-"


def short_hash(checkpoint: str) -> str:
    return checkpoint[:12] if checkpoint else "-"


def tags_text(tags: Any) -> str:
    return ", ".join(f"{k}={v}" if v else k for k, v in sorted(dict(tags).items())) or "-"


def model_type_name(value: rpb.ModelType.ValueType) -> str:
    return rpb.ModelType.Name(value).lower() if value else "-"


def number(value: float, unit: str = "") -> str:
    """A metric value with a sensible number of digits."""
    if value != value:  # NaN
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.4f}"
    return f"{text} {unit}".strip()


def version_state_name(value: rpb.VersionState.ValueType) -> str:
    return rpb.VersionState.Name(value).lower() if value else "-"
