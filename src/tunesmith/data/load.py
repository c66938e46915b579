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

from tunesmith.data.columns import apply_columns
from tunesmith.data.example import Example, Reject, excerpt
from tunesmith.data.formats import EXPECTED, FORMATS, RowProblem, detect_format, extra_fields, parse_row
from tunesmith.data.readers import iter_records, resolve_paths, scan
from tunesmith.errors import DataError, UsageError
from tunesmith.io import write_jsonl
from tunesmith.ui import progress_bar

ON_ERROR = ("fail", "skip")
MAX_LISTED = 20  # rejects listed in a DataError message; the rest are counted
PROGRESS_EVERY = 1000  # rows between progress-bar refreshes
DEFAULT_MAX_ROW_BYTES = 16 * 2**20
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class Source:
    """One entry of data.train: a file, folder or glob, read as `format` with `columns` renamed."""

    path: str
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadResult:
    """What loading produced. Invariant: len(examples) + len(rejects) == total.

    format_counts counts the kept examples by format (it sums to len(examples)); files has one
    entry per file read (path, kind, rows, kept, rejected, formats) and skipped the files of a
    folder that were not read, with the reason.
    """

    examples: list[Example]
    rejects: list[Reject]
    total: int
    format_counts: dict[str, int] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    kept: int = 0  # rows that became examples (== len(examples) unless they were not kept)


def load_examples(
    spec: str | os.PathLike | Sequence[str | os.PathLike],
    fmt: str = "auto",
    on_error: str = "fail",
    rejects_path: Path | None = None,
    show_progress: bool = False,
    columns: dict[str, str] | None = None,
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
) -> LoadResult:
    """Read every row under `spec` (file, folder, glob or a list of them) into Examples.

    fmt:          "auto" detects the format per row; a name from FORMATS forces one.
    on_error:     "fail" raises DataError listing the rejected rows; "skip" keeps the good rows.
    rejects_path: where to write the rejects as JSONL. Written whenever given, even when there
                  are none (so a stale file from an earlier run never misleads) and also before
                  a DataError, so the full list is there when the message shows only the first.
    columns:      {field tunesmith reads: column in the file}, e.g. {"prompt": "question"}.
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    sources = [Source(str(s), fmt, dict(columns or {})) for s in specs]
    return load_sources(sources, on_error, rejects_path, show_progress, max_row_bytes)


def load_sources(sources: Sequence[Source], on_error: str = "fail", rejects_path: Path | None = None,
                 show_progress: bool = False, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
                 keep_examples: bool = True) -> LoadResult:
    """Read several sources, each with its own format and column mapping (see load_examples).

    keep_examples=False validates without keeping the examples (memory stays flat whatever the
    data's size: only counts and the rejects, each cut to an excerpt, are kept); the kept count
    is then in `result.kept` and the per-file counts."""
    if on_error not in ON_ERROR:
        raise UsageError(f"unknown on_error {on_error!r}; expected one of {', '.join(ON_ERROR)}")
    for src in sources:
        if src.format != "auto" and src.format not in FORMATS:
            raise UsageError(f"unknown data format {src.format!r}; expected auto, {', '.join(FORMATS)}")
    if not sources:
        resolve_paths([])  # the usual "no data path given" message
    result = LoadResult([], [], 0)
    formats: Counter[str] = Counter()
    with progress_bar("reading data", None, "rows", show=show_progress) as advance:
        for src in sources:
            files, skipped = _files(src.path)
            result.skipped += skipped
            for path, kind in files:
                counts = _read_file(path, kind, src, max_row_bytes, result, formats, advance, keep_examples)
                result.files.append(counts)
        advance(result.total % PROGRESS_EVERY)
    result.format_counts = dict(sorted(formats.items()))
    if rejects_path is not None:
        write_rejects(result.rejects, rejects_path)
    if result.rejects and on_error == "fail":
        raise DataError(_fail_message(result, rejects_path))
    return result


def _files(spec: str) -> tuple[list[tuple[Path, str]], list[dict[str, str]]]:
    """(path, kind) of every file a spec names, and the files of its folders that were skipped."""
    found, skipped = scan(spec)
    return [(f.path, f.kind) for f in found], [{"path": str(p), "reason": why} for p, why in skipped]


def _read_file(path: Path, kind: str, src: Source, max_row_bytes: int, result: LoadResult,
               formats: Counter, advance, keep_examples: bool = True) -> dict[str, Any]:
    source = str(path)
    rows = kept = 0
    file_formats: Counter[str] = Counter()
    for rec in iter_records(path, max_row_bytes=max_row_bytes):
        rows += 1
        result.total += 1
        if result.total % PROGRESS_EVERY == 0:
            advance(PROGRESS_EVERY, extra=source)
        index, offset = rec.index, rec.offset
        if rec.error is not None:
            result.rejects.append(Reject(source, rec.line, rec.error, rec.text, offset, index))
            continue
        item = convert_row(rec.row, src.format, source, rec.line, src.columns, index)
        if isinstance(item, Reject):
            item.offset = offset
            if not keep_examples:
                item.raw = excerpt(item.raw)
            result.rejects.append(item)
        else:
            if keep_examples:
                result.examples.append(item)
            result.kept += 1
            kept += 1
            formats[item.meta["format"]] += 1
            file_formats[item.meta["format"]] += 1
    return {"path": source, "kind": kind, "rows": rows, "kept": kept, "rejected": rows - kept,
            "formats": dict(sorted(file_formats.items())), "columns": dict(src.columns)}


def convert_row(row: dict[str, Any], fmt: str, source: str, line: int, columns: dict[str, str] | None = None,
                index: int | None = None) -> Example | Reject:
    """One parsed row to an Example or a Reject.

    meta: its format, its own "id", "origin" (when the row was written by an earlier tunesmith
    step), "index" (JSON arrays) and "fields" (every column the format does not read)."""
    if columns:
        try:
            row = apply_columns(row, columns)
        except RowProblem as problem:
            return Reject(source, line, str(problem), row, index=index)
    origin = row.get("origin") if isinstance(row.get("origin"), str) else None
    if origin is not None:
        row = {k: v for k, v in row.items() if k != "origin"}
    row_fmt = detect_format(row) if fmt == "auto" else fmt
    if row_fmt is None:
        return Reject(source, line, _unknown_format(row), row, index=index)
    try:
        parsed = parse_row(row, row_fmt)
    except RowProblem as problem:
        return Reject(source, line, str(problem), row, index=index)
    meta: dict[str, Any] = {"format": row_fmt}
    if row.get("id") not in (None, ""):
        meta["id"] = row["id"]
    if origin:
        meta["origin"] = origin
    if index is not None:
        meta["index"] = index
    extras = extra_fields(row, row_fmt)
    if extras:
        meta["fields"] = extras
    return Example(parsed.messages, source, line, meta, parsed.tools, parsed.rejected)


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
        "kept": len(result.examples) if result.examples or not result.kept else result.kept,
        "rejected": len(result.rejects),
        "by_reason": dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
        "formats": dict(result.format_counts),
        "files": list(result.files),
        "skipped": list(result.skipped),
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
        f"{result.kept} kept, {len(rejects)} rejected ("
        + ", ".join(f"{k}: {n}" for k, n in kinds.items())
        + ")."
    )
    if rejects_path is not None:
        lines.append(f"All rejected rows are in {rejects_path}.")
    lines.append("Hint: fix the rows or set data.on_error: skip to train on the rest.")
    return "\n".join(lines)
