"""Console output: one rich console, progress bars with rate and ETA, tables."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=False, highlight=False)


def log(message: str) -> None:
    console.print(message)


@contextmanager
def progress_bar(description: str, total: int, unit: str = "it", completed: int = 0) -> Iterator:
    """Yields advance(n=1, **fields); shows count, rate, elapsed and ETA."""
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
