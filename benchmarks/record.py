"""Appending a benchmark's table to BENCHMARKS.md: a heading with the date and the machine, the
command that produced it, then the table."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, torch CPU fp32"


def append_section(title: str, command: str, body: str, file: str = "BENCHMARKS.md") -> None:
    """## title (date, machine), then `command`, then body, at the end of BENCHMARKS.md (or `file`, e.g.
    RELIABILITY.md)."""
    with open(ROOT / file, "a") as f:
        f.write(f"\n## {title} ({dt.date.today()}, {machine()})\n\n{command}\n\n{body}\n")
