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


def write_curated(examples: Iterable[Example], keep: np.ndarray, reasons: dict[int, str], out_dir: str | os.PathLike,
                  report: dict[str, Any]) -> dict[str, Path]:
    """Write kept.jsonl, removed.jsonl and report.json into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"kept": out / "kept.jsonl", "removed": out / "removed.jsonl", "report": out / "report.json"}
    tmp = {k: p.with_name(p.name + ".tmp") for k, p in paths.items()}
    n = 0
    with open(tmp["kept"], "w", encoding="utf-8") as kept, open(tmp["removed"], "w", encoding="utf-8") as removed:
        for i, ex in enumerate(examples):
            n += 1
            if keep[i]:
                kept.write(json.dumps({"messages": ex.messages}, ensure_ascii=False) + "\n")
            else:
                removed.write(json.dumps({"row": i, "source": ex.source, "line": ex.line, "reason": reasons.get(i, ""),
                                          "messages": ex.messages}, ensure_ascii=False) + "\n")
    if n != len(keep):
        raise ValueError(f"examples changed between passes: {n} rows now, {len(keep)} before")
    tmp["report"].write_text(json.dumps(report, indent=1, ensure_ascii=False, default=_plain) + "\n", encoding="utf-8")
    for k, p in paths.items():
        os.replace(tmp[k], p)
    return paths


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and tuples in reports."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
