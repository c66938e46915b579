"""Writing a curation step's outputs: kept rows, removed rows with reasons, and a JSON report.

    <out>/kept.jsonl     kept rows in messages format ({"messages": [...]}), input order
    <out>/removed.jsonl  {"row", "source", "line", "reason", "messages"} per removed row
    <out>/report.json    counts, clusters or hits, options and timings

Files are written to a temporary name and renamed, so a stopped run never leaves a half file
that looks complete. The examples are read once more, in the same order as the step read them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.example import Example
from tunesmith.io import atomic_open, write_json


def write_curated(examples: Iterable[Example], keep: np.ndarray, reasons: dict[int, str], out_dir: str | os.PathLike,
                  report: dict[str, Any]) -> dict[str, Path]:
    """Write kept.jsonl, removed.jsonl and report.json into out_dir; returns their paths.

    kept.jsonl rows read back as the same examples: their own fields (id, category...), tools and
    origin (the file:line they were first read from) travel with them."""
    out = Path(out_dir)
    paths = {"kept": out / "kept.jsonl", "removed": out / "removed.jsonl", "report": out / "report.json"}
    n = 0
    with atomic_open(paths["kept"]) as kept, atomic_open(paths["removed"]) as removed:
        for i, ex in enumerate(examples):
            n += 1
            if keep[i]:
                kept.write(json.dumps(ex.to_row(), ensure_ascii=False, default=str) + "\n")
            else:
                removed.write(json.dumps({"row": i, "source": ex.source, "line": ex.line, "origin": ex.origin,
                                          "id": ex.meta.get("id"), "reason": reasons.get(i, ""),
                                          "messages": ex.messages}, ensure_ascii=False, default=str) + "\n")
        if n != len(keep):
            raise ValueError(f"examples changed between passes: {n} rows now, {len(keep)} before")
    write_json(paths["report"], report, indent=1)
    return paths
