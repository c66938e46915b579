"""Console output: one rich console, and the one progress bar every long step uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=False, highlight=False)


def log(message: str) -> None:
    console.print(message)


def quiet(*_args, **_kwargs) -> None:
    """A `log` that prints nothing (ranks other than 0, tests)."""


def no_progress(n: int = 1, extra: str = "") -> None:
    """An `advance` that shows nothing."""


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "it", completed: int = 0,
                 show: bool = True) -> Iterator[Callable[..., None]]:
    """Yields advance(n=1, extra=""): a bar with count, rate, elapsed and ETA (total None: no ETA,
    the rate is still shown); with show=False, a no-op."""
    if not show:
        yield no_progress
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
               TextColumn("{task.fields[extra]}")]
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(description, total=total, completed=completed, rate="", extra="")

        def advance(n: int = 1, extra: str = "") -> None:
            prog.advance(task, n)
            t = prog.tasks[0]
            speed = t.finished_speed or t.speed
            prog.update(task, rate=f"{speed:.1f} {unit}/s" if speed else "", extra=extra)

        yield advance
