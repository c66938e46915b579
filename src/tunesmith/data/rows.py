"""One row as read (RawRow), and how every reader describes a row it cannot keep.

A row is a dict, or an error string "<kind>: <text>" (the form Reject.reason uses) with the
place it was found and, for rows that could not be parsed or are too large, a short excerpt
of at most EXCERPT_CHARS characters. The readers (text_readers, json_document, table_readers)
build their rows and rejects with the helpers here, so the wording is the same for every format.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

EXCERPT_CHARS = 1000  # the most of a row a reject keeps as text
# CSV/Parquet cells under these columns hold JSON-encoded turn lists. Only these are parsed: a
# text column such as an alpaca "output" of "[1, 2, 3]" must stay text.
JSON_COLUMNS = ("messages", "conversations")


class RawRow(NamedTuple):
    """One row as read: a dict, or an error.

    text:   an excerpt (at most EXCERPT_CHARS characters, cut marked) of a row that could not be
            parsed or is too large; None otherwise
    offset: byte offset where the row starts (JSONL, JSON, CSV), else None
    index:  1-based element number in a JSON array (line is then the line it starts on), else None
    """

    line: int
    row: dict[str, Any] | None
    error: str | None
    text: str | None = None
    offset: int | None = None
    index: int | None = None


def too_large(what: str, size: int, limit: int) -> str:
    return (f"too_large: {what} is {size:,} bytes, over data.max_row_bytes={limit:,}; "
            "raise the limit or remove the row")


def cut(text: str, size: int, always: bool = False) -> str:
    """`text` itself when short (and not `always`), else its first EXCERPT_CHARS characters,
    marked as cut with the size of the whole row."""
    if len(text) <= EXCERPT_CHARS and not always:
        return text
    return text[:EXCERPT_CHARS] + f"…[truncated, {size} bytes]"


def row_size(value: Any) -> int:
    """Bytes of text in a row: the sum of its string and binary cells, nested ones included."""
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode())
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, dict):
        return sum(row_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(row_size(v) for v in value)
    return 0


def preview(value: Any, size: int) -> str:
    """A JSON-like excerpt of a big row built from its start only, marked as cut."""
    out: list[str] = []
    room = EXCERPT_CHARS

    def emit(piece: str) -> None:
        nonlocal room
        out.append(piece[: max(room, 0)])
        room -= len(piece)

    def walk(v: Any) -> None:
        if room <= 0:
            return
        if isinstance(v, dict):
            emit("{")
            for i, (k, x) in enumerate(v.items()):
                if room <= 0:
                    break
                emit((", " if i else "") + json.dumps(str(k), ensure_ascii=False) + ": ")
                walk(x)
            emit("}")
        elif isinstance(v, (list, tuple)):
            emit("[")
            for i, x in enumerate(v):
                if room <= 0:
                    break
                emit(", " if i else "")
                walk(x)
            emit("]")
        elif isinstance(v, str):
            emit(json.dumps(v[: room + 1], ensure_ascii=False))
        else:
            emit(repr(v[: room + 1]) if isinstance(v, (bytes, bytearray)) else json.dumps(v, default=str))

    walk(value)
    return "".join(out) + f"…[truncated, {size} bytes]"


def decode_json_columns(line: int, row: dict[str, Any], offset: int | None = None) -> RawRow:
    """Parse JSON-encoded turn lists in CSV cells (or Parquet/Arrow string columns)."""
    for key in JSON_COLUMNS:
        cell = row.get(key)
        if isinstance(cell, str) and cell.strip():
            try:
                row[key] = json.loads(cell)
            except json.JSONDecodeError as exc:
                error = f"bad_json: column '{key}': {exc.msg} at character {exc.pos + 1}"
                return RawRow(line, None, error, None, offset)
    return RawRow(line, row, None, None, offset)


def json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
