"""Find data files and read their raw rows, each with the line a person would look at.

Readers never raise on a bad row: they yield it as an error with its line so the loader can
count and report it. Line numbers, all 1-based:
  .jsonl    the physical line in the file (blank lines are skipped but still counted)
  .json     the record's index in the top-level array (or the "data"/"examples" list)
  .parquet  the row index across the whole file
  .csv      the physical line where the record starts, the header being line 1, so the first
            data row is line 2 (for files without multi-line cells this is data row number + 1)
Errors are strings of the form "<kind>: <text>", the form Reject.reason uses.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tunesmith.errors import UsageError, UserError

SUPPORTED = (".jsonl", ".json", ".parquet", ".csv")
# CSV/Parquet cells under these columns hold JSON-encoded turn lists. Only these are parsed: a
# text column such as an alpaca "output" of "[1, 2, 3]" must stay text.
JSON_COLUMNS = ("messages", "conversations")
PARQUET_BATCH_ROWS = 1024


class RawRow(NamedTuple):
    """One row as read: a dict, or an error; `text` is the raw line when a JSONL line is unparsable."""

    line: int
    row: dict[str, Any] | None
    error: str | None
    text: str | None = None


def resolve_paths(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Expand a file, a folder (recursively), a glob, or a list of those into data files.

    Folders yield every supported file inside, sorted, skipping hidden files and folders (".git",
    ".ipynb_checkpoints"...). A glob keeps only supported files. A file named explicitly must have
    a supported extension. Duplicates are dropped, first occurrence kept.
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise UserError("no data path given; set data.path to a file, a folder or a glob")
    found: list[Path] = []
    for item in specs:
        found.extend(_resolve_one(str(item)))
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _resolve_one(spec: str) -> list[Path]:
    supported = ", ".join(SUPPORTED)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED:
            raise _unsupported(path)
        return [path]
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in SUPPORTED
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise UserError(f"no data files ({supported}) in folder {spec}")
        return files
    if any(c in spec for c in "*?["):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
        files = [p for p in matches if p.is_file() and p.suffix.lower() in SUPPORTED]
        if not files:
            why = f"{len(matches)} paths matched, none a {supported} file" if matches else "nothing matched"
            raise UserError(f"no data files match {spec!r} ({why})")
        return files
    raise UserError(f"data path not found: {spec} (relative paths are taken from {Path.cwd()})")


def _unsupported(path: Path) -> UsageError:
    kind = repr(path.suffix) if path.suffix else "(no extension)"
    return UsageError(f"{path}: unsupported file type {kind}; expected {', '.join(SUPPORTED)}")


def iter_raw_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Yield (line, row, error) for every row of a data file; exactly one of row/error is set."""
    for rec in iter_records(path):
        yield rec.line, rec.row, rec.error


def iter_records(path: str | os.PathLike) -> Iterator[RawRow]:
    """Like iter_raw_rows, plus the raw text of unparsable JSONL lines (for the rejects file)."""
    path = Path(path)
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
    if suffix not in readers:
        raise _unsupported(path)
    try:
        yield from readers[suffix](path)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    # Bytes, split on b"\n" only: str.splitlines would also split on U+2028 and friends, which are
    # legal inside JSON strings, and would shift every later line number.
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte-order mark written by some Windows editors
            if not raw.strip():
                continue
            raw = raw.rstrip(b"\r\n")  # else an error at the end of the line reads "line 2, column 1"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                error = f"bad_encoding: not UTF-8 (byte {exc.start + 1} of the line)"
                yield RawRow(line_no, None, error, raw.decode("utf-8", errors="replace"))
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RawRow(line_no, None, f"bad_json: {exc.msg} at column {exc.colno}", text)
                continue
            if isinstance(value, dict):
                yield RawRow(line_no, value, None)
            else:
                error = f"not_object: expected a JSON object, got {_json_type(value)}"
                yield RawRow(line_no, None, error)


def _read_json(path: Path) -> Iterator[RawRow]:
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        yield RawRow(1, None, f"bad_encoding: not UTF-8 (byte {exc.start + 1} of the file)")
        return
    except json.JSONDecodeError as exc:
        error = f"bad_json: {exc.msg} at column {exc.colno} (the whole file is unreadable)"
        yield RawRow(exc.lineno, None, error)
        return
    if isinstance(value, dict):
        for key in ("data", "examples"):
            if isinstance(value.get(key), list):
                value = value[key]
                break
        else:
            # A single object is read as a single row; if it is not an example, format detection
            # says so and lists its keys.
            yield RawRow(1, value, None)
            return
    if not isinstance(value, list):
        yield RawRow(1, None, f"not_object: expected a JSON array of objects, got {_json_type(value)}")
        return
    for index, item in enumerate(value, start=1):
        if isinstance(item, dict):
            yield RawRow(index, item, None)
        else:
            error = f"not_object: record {index} is {_json_type(item)}, expected an object"
            yield RawRow(index, None, error)


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = 0
    try:
        # Batches keep memory flat on large files: only PARQUET_BATCH_ROWS rows are Python objects.
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                index += 1
                yield _decode_json_columns(index, row)
    except (pa.ArrowException, ValueError) as exc:
        # Unreadable file (or a corrupt page part-way through): report it once and stop.
        yield RawRow(index + 1 if index else 0, None, f"bad_file: cannot read Parquet: {exc}")


class _NotUtf8(Exception):
    def __init__(self, line: int):
        super().__init__(line)
        self.line = line


def _utf8_lines(f) -> Iterator[str]:
    """Decode a binary file line by line, so a bad byte is reported at its own line (a text-mode
    file decodes ahead in 8 KiB chunks and would blame an earlier line)."""
    for line_no, raw in enumerate(f, start=1):
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _NotUtf8(line_no) from None


def _read_csv(path: Path) -> Iterator[RawRow]:
    # Whole conversations in one cell exceed csv's default 128 KiB field limit. The limit is
    # process-wide; raising it only ever admits more.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with open(path, "rb") as f:
        # csv.reader rather than DictReader: the same parsing, but the start line of each record
        # is known (DictReader skips blank lines, and multi-line cells shift a row count).
        reader = csv.reader(_utf8_lines(f))
        try:
            try:
                header = next(reader, None)
            except csv.Error as exc:
                yield RawRow(1, None, f"bad_csv: cannot read the header: {exc}")
                return
            if header is None:
                return
            while True:
                start = reader.line_num + 1
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield RawRow(start, None, f"bad_csv: {exc}")
                    continue
                if not cells:
                    continue  # blank line
                if len(cells) != len(header):
                    error = f"bad_csv: row has {len(cells)} cells but the header has {len(header)}"
                    yield RawRow(start, None, error)
                    continue
                yield _decode_json_columns(start, dict(zip(header, cells)))
        except _NotUtf8 as exc:
            # The csv reader cannot resume after its input fails, so the rest of the file is lost;
            # the message says so rather than letting those rows vanish from the counts unnoticed.
            error = f"bad_encoding: line {exc.line} is not UTF-8; the rest of the file was not read"
            yield RawRow(exc.line, None, error)


def _decode_json_columns(line: int, row: dict[str, Any]) -> RawRow:
    """Parse JSON-encoded turn lists in CSV cells (or Parquet string columns)."""
    for key in JSON_COLUMNS:
        cell = row.get(key)
        if isinstance(cell, str) and cell.strip():
            try:
                row[key] = json.loads(cell)
            except json.JSONDecodeError as exc:
                error = f"bad_json: column '{key}': {exc.msg} at character {exc.pos + 1}"
                return RawRow(line, None, error)
    return RawRow(line, row, None)


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
