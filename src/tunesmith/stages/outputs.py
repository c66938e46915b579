"""Where stages write: output folders checked before any work starts."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError


def out_dir(path: str | Path, flag: str = "--out") -> Path:
    """The output folder `path`, created if needed; a file in its place is one clear error."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is a file; give a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    return out
