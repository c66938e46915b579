"""Progress bars for the curation passes (rich, via tunesmith.ui), or nothing when not wanted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(description: str, total: int | None, show: bool, unit: str = "rows") -> Iterator[Callable[..., None]]:
    """Yields advance(n): a bar with count, rate and ETA when `show`, else a no-op."""
    if not show:
        yield lambda n=1, extra="": None
        return
    from tunesmith import ui

    with ui.progress_bar(description, total, unit=unit) as advance:  # total None: no ETA, rate still shown
        yield advance
