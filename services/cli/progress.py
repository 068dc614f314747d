"""Progress bars and spinners on stderr, shown only when a person is watching a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from modelyard.cli.context import CliContext


@contextmanager
def spinner(ctx: CliContext, text: str) -> Iterator[None]:
    if not ctx.interactive:
        yield
        return
    with ctx.err.status(text):
        yield


@contextmanager
def byte_bar(ctx: CliContext, description: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """Yields `update(done, total)`."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=ctx.err,
        disable=not ctx.interactive,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, total_now: int) -> None:
            bar.update(task, completed=done, total=total_now)

        yield update


@contextmanager
def fraction_bar(ctx: CliContext) -> Iterator[Callable[[str, float, str], None]]:
    """Yields `update(key, fraction 0..1, message)`; one bar per key (e.g. per version)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.fields[key]:<12}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=ctx.err,
        disable=not ctx.interactive,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def update(key: str, fraction: float, message: str) -> None:
            if key not in tasks:
                tasks[key] = bar.add_task(message, total=1.0, key=key)
            bar.update(tasks[key], completed=max(0.0, min(1.0, fraction)), description=message[:60])

        yield update
