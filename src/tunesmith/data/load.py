"""Load training data: read files, detect formats, validate, and account for every row.

Every row read ends up either as an Example or as a Reject saying where it is (file:line) and
why, so `len(examples) + len(rejects) == total` always holds. Reject reasons have the form
"<kind>: <text>"; `kind` is a short stable key (bad_json, missing_field, role_order...) used to
count rejects by cause, and later stages add their own kinds (e.g. "overlong").
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.example import Example, Reject
from tunesmith.data.formats import (
    EXPECTED,
    FORMATS,
    RowProblem,
    detect_format,
    extra_fields,
    to_messages,
)
from tunesmith.data.readers import iter_records, resolve_paths
from tunesmith.errors import DataError, UsageError
from tunesmith.io import write_jsonl
from tunesmith.ui import progress_bar

ON_ERROR = ("fail", "skip")
MAX_LISTED = 20  # rejects listed in a DataError message; the rest are counted
PROGRESS_EVERY = 1000  # rows between progress-bar refreshes
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class LoadResult:
    """What loading produced. Invariant: len(examples) + len(rejects) == total.

    format_counts counts the kept examples by format (it sums to len(examples)).
    """

    examples: list[Example]
    rejects: list[Reject]
    total: int
    format_counts: dict[str, int] = field(default_factory=dict)


def load_examples(
    spec: str | os.PathLike | Sequence[str | os.PathLike],
    fmt: str = "auto",
    on_error: str = "fail",
    rejects_path: Path | None = None,
    show_progress: bool = False,
) -> LoadResult:
    """Read every row under `spec` (file, folder, glob or a list of them) into Examples.

    fmt:          "auto" detects the format per row; "alpaca", "sharegpt" or "messages" forces one.
    on_error:     "fail" raises DataError listing the rejected rows; "skip" keeps the good rows.
    rejects_path: where to write the rejects as JSONL. Written whenever given, even when there
                  are none (so a stale file from an earlier run never misleads) and also before
                  a DataError, so the full list is there when the message shows only the first.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise UsageError(f"unknown data format {fmt!r}; expected auto, {', '.join(FORMATS)}")
    if on_error not in ON_ERROR:
        raise UsageError(f"unknown on_error {on_error!r}; expected one of {', '.join(ON_ERROR)}")
    paths = resolve_paths(spec)

    examples: list[Example] = []
    rejects: list[Reject] = []
    formats: Counter[str] = Counter()
    total = 0
    with progress_bar("reading data", None, "rows", show=show_progress) as advance:
        for path in paths:
            source = str(path)
            for rec in iter_records(path):
                total += 1
                if total % PROGRESS_EVERY == 0:
                    advance(PROGRESS_EVERY, extra=source)
                if rec.error is not None:
                    rejects.append(Reject(source, rec.line, rec.error, rec.text))
                    continue
                item = convert_row(rec.row, fmt, source, rec.line)
                if isinstance(item, Reject):
                    rejects.append(item)
                else:
                    examples.append(item)
                    formats[item.meta["format"]] += 1
        advance(total % PROGRESS_EVERY)

    result = LoadResult(examples, rejects, total, dict(sorted(formats.items())))
    if rejects_path is not None:
        write_rejects(rejects, rejects_path)
    if rejects and on_error == "fail":
        raise DataError(_fail_message(result, rejects_path))
    return result


def convert_row(row: dict[str, Any], fmt: str, source: str, line: int) -> Example | Reject:
    """One parsed row to an Example (meta: its format, plus unused fields) or a Reject."""
    row_fmt = detect_format(row) if fmt == "auto" else fmt
    if row_fmt is None:
        return Reject(source, line, _unknown_format(row), row)
    try:
        messages = to_messages(row, row_fmt)
    except RowProblem as problem:
        return Reject(source, line, str(problem), row)
    meta: dict[str, Any] = {"format": row_fmt}
    extras = extra_fields(row, row_fmt)
    if extras:
        meta["fields"] = extras
    return Example(messages, source, line, meta)


def write_rejects(rejects: Iterable[Reject], path: str | os.PathLike) -> Path:
    """Write rejects as JSONL (one Reject.to_json per line), atomically; returns the path.

    Values JSON cannot hold (Parquet dates, decimals, bytes) are written as text."""
    write_jsonl(path, (r.to_json() for r in rejects))
    return Path(path)


def reason_kind(reason: str) -> str:
    """The kind of a reject reason ("role_order: turns 2 and 3..." -> "role_order"); "other" if none."""
    head, sep, _ = reason.partition(":")
    return head.strip() if sep and _KIND.match(head.strip()) else "other"


def summarize(result: LoadResult) -> dict[str, Any]:
    """Counts for reports: total, kept, rejected, rejects by kind (most frequent first), formats.

    Counts come from the current lists, so rejects added by later stages are included.
    """
    kinds = Counter(reason_kind(r.reason) for r in result.rejects)
    return {
        "total": result.total,
        "kept": len(result.examples),
        "rejected": len(result.rejects),
        "by_reason": dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
        "formats": dict(result.format_counts),
    }


def _unknown_format(row: dict[str, Any]) -> str:
    keys = list(row)
    shown = ", ".join(repr(k) for k in keys[:10])
    if len(keys) > 10:
        shown += f", ... ({len(keys)} keys)"
    return f"unknown_format: row has keys [{shown}]; expected {EXPECTED}"


def _fail_message(result: LoadResult, rejects_path: Path | None) -> str:
    rejects = result.rejects
    lines = [f"{len(rejects)} of {result.total} rows cannot be used:"]
    lines += [f"  {r.where()}: {r.reason}" for r in rejects[:MAX_LISTED]]
    if len(rejects) > MAX_LISTED:
        lines.append(f"  ... and {len(rejects) - MAX_LISTED} more")
    kinds = summarize(result)["by_reason"]
    lines.append(
        f"{len(result.examples)} kept, {len(rejects)} rejected ("
        + ", ".join(f"{k}: {n}" for k, n in kinds.items())
        + ")."
    )
    if rejects_path is not None:
        lines.append(f"All rejected rows are in {rejects_path}.")
    lines.append("Hint: fix the rows or set data.on_error: skip to train on the rest.")
    return "\n".join(lines)
