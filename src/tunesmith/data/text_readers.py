"""Read text data files: JSONL, JSON and CSV, each maybe gzip-compressed.

Files are read as bytes and decoded per row, so a bad byte is reported at its own line and a
UTF-16/32 file is one clear reject (with the iconv line that fixes it). A JSONL line is read
with a bounded readline: a line over the row limit is skipped in SKIP_CHUNK pieces, never held
whole. A .json file is sniffed first (json_shape): one JSON value per line, as datasets'
to_json writes, is read as JSONL; anything else as one document (json_document). A cut or
corrupt gzip stream ends a file's rows with one reject that says how many came before it.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from tunesmith.data.json_document import read_json
from tunesmith.data.rows import EXCERPT_CHARS, RawRow, cut, decode_json_columns, json_type, preview, row_size, too_large

SNIFF_BYTES = 2**20  # the most of a line read to tell JSONL from a JSON document
SKIP_CHUNK = 2**16  # read size when skipping the rest of an over-long line
_UTF8_BOM = codecs.BOM_UTF8
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb", buffering=2**20)


def head(path: Path, size: int = 4) -> bytes:
    """The first bytes of the (decompressed) file; b"" when unreadable (the reader says why)."""
    try:
        with _open(path) as f:
            return f.read(size)
    except (OSError, *_GZIP_ERRORS):
        return b""


def read_text_file(path: Path, suffix: str, limit: int) -> Iterator[RawRow]:
    problem = encoding_problem(head(path))
    if problem:
        yield RawRow(1, None, problem + _iconv_hint(problem, path), None, 0)
        return
    base = suffix.removesuffix(".gz")
    if base == ".json" and json_shape(path) == "jsonl":
        base = ".jsonl"
    read = {".jsonl": _read_jsonl, ".json": read_json, ".csv": _read_csv}[base]
    with _open(path) as f:
        rows = read(f, limit)
        yield from _guard_gzip(path, rows) if suffix.endswith(".gz") else rows


def _guard_gzip(path: Path, rows: Iterator[RawRow]) -> Iterator[RawRow]:
    """Pass rows on; a corrupt or cut gzip stream ends them with one reject saying so."""
    count, line = 0, 0
    try:
        for rec in rows:
            count, line = count + 1, rec.line
            yield rec
    except _GZIP_ERRORS as exc:
        error = (f"bad_gzip: {path.name} is corrupt or cut short ({exc}); {count:,} rows were read "
                 "before it and the rest of the file was not read")
        yield RawRow(line + 1, None, error)


def encoding_problem(head: bytes) -> str | None:
    """"bad_encoding: file is UTF-16 ..." for a UTF-16/32 file (by its byte-order mark or its
    zero bytes, as json.detect_encoding reads them), else None. UTF-8 (with or without BOM) is fine."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if head.startswith(bom):
            return f"bad_encoding: file is {name} (byte-order mark)"
    if len(head) >= 4 and not head.startswith(_UTF8_BOM):
        name = None
        if head[0] == 0:
            name = "UTF-32BE" if head[1] == 0 else "UTF-16BE"
        elif head[1] == 0:
            name = "UTF-32LE" if head[2] == 0 and head[3] == 0 else "UTF-16LE"
        if name:
            return f"bad_encoding: file is {name} (no byte-order mark; judged by its zero bytes)"
    return None


def _iconv_hint(problem: str, path: Path) -> str:
    name = problem.split(" ")[3]
    stem = path.name.split(".")[0]
    rest = path.name[len(stem):]
    out = f"{stem}.utf8{rest.removesuffix('.gz')}"
    if rest.lower().endswith(".gz"):
        return f"; save it as UTF-8, e.g. gunzip -c {path.name} | iconv -f {name} -t UTF-8 > {out}"
    return f"; save it as UTF-8, e.g. iconv -f {name} -t UTF-8 {path.name} > {out}"


def json_shape(path: Path) -> str:
    """Tell a .json file's shape from its start: "array", "jsonl" (one JSON value per line, as
    datasets' to_json writes), "object", "document" (anything else) or "empty".

    JSONL when the first line is a complete JSON value and another line follows; or when the
    first line is not (a broken row, or over SNIFF_BYTES) but ends with "}" and the next line
    is an object. Reads at most about two lines, each cut at SNIFF_BYTES.
    """
    try:
        with _open(path) as f:
            first = _next_line(f)
            if first is None:
                return "empty"
            lead = first.lstrip(_UTF8_BOM + b" \t\r\n")[:1]
            if lead == b"[":
                return "array"
            if lead != b"{":
                return "document"
            whole = first.endswith(b"\n") or len(first) < SNIFF_BYTES
            if whole and _is_json(first):
                return "jsonl" if _next_line(f) is not None else "object"
            if not whole:
                _skip_line(f)
            second = _next_line(f)
            if second is None:
                return "object"
            long_second = not second.endswith(b"\n") and len(second) >= SNIFF_BYTES
            jsonl = (first.rstrip().endswith(b"}") or not whole) and (
                second.lstrip().startswith(b"{") if long_second else _is_json(second, dict))
            return "jsonl" if jsonl else "object"
    except (OSError, *_GZIP_ERRORS):
        return "document"  # the reader reports why the file cannot be read


def _next_line(f) -> bytes | None:
    """The next non-blank line (cut at SNIFF_BYTES), or None at the end."""
    while True:
        line = f.readline(SNIFF_BYTES)
        if not line:
            return None
        if line.strip(_UTF8_BOM + b" \t\r\n"):
            return line


def _is_json(line: bytes, kind: type = object) -> bool:
    try:
        return isinstance(json.loads(line.removeprefix(_UTF8_BOM)), kind)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False


def _skip_line(f, last: bytes = b"") -> tuple[int, int]:
    """Read past the rest of the current line in SKIP_CHUNK pieces, `last` being the byte read
    before: (bytes read, length of the line end read: 0, 1 for "\n" or 2 for "\r\n")."""
    skipped = 0
    while True:
        chunk = f.readline(SKIP_CHUNK)
        skipped += len(chunk)
        if not chunk:
            return skipped, 0
        if chunk.endswith(b"\n"):
            return skipped, 2 if (last + chunk).endswith(b"\r\n") else 1
        last = chunk[-1:]


def _read_jsonl(f, limit: int) -> Iterator[RawRow]:
    # Bytes, split on b"\n" only: str.splitlines would also split on U+2028 and friends, which are
    # legal inside JSON strings, and would shift every later line number. readline(cap) keeps at
    # most one row (and never more than the limit) in memory.
    cap = limit + 2 if limit else -1  # room for the limit plus "\r\n"
    readline, loads = f.readline, json.loads
    line_no = offset = 0
    while True:
        raw = readline(cap)
        if not raw:
            return
        line_no += 1
        start = offset
        offset += len(raw)
        if len(raw) == cap and not raw.endswith(b"\n"):
            head, last, raw = raw[: EXCERPT_CHARS * 4], raw[-1:], None  # keep only the start
            skipped, newline = _skip_line(f, last)
            offset += skipped
            size = cap + skipped - newline
            text = cut(head.decode("utf-8", "ignore").rstrip("\r"), size, always=True)
            yield RawRow(line_no, None, too_large("line", size, limit), text, start)
            continue
        if line_no == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[3:]  # UTF-8 byte-order mark written by some Windows editors
        if not raw.strip():
            continue
        raw = raw.rstrip(b"\r\n")  # else an error at the end of the line reads "line 2, column 1"
        if limit and len(raw) > limit:
            text = cut(raw[: EXCERPT_CHARS * 4].decode("utf-8", "ignore"), len(raw), always=True)
            yield RawRow(line_no, None, too_large("line", len(raw), limit), text, start)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            error = f"bad_encoding: not UTF-8 (byte {exc.start + 1} of the line)"
            yield RawRow(line_no, None, error, cut(raw.decode("utf-8", errors="replace"), len(raw)), start)
            continue
        try:
            value = loads(text)
        except json.JSONDecodeError as exc:
            error = f"bad_json: {exc.msg.removesuffix(' at')} at column {exc.colno}"
            yield RawRow(line_no, None, error, cut(text, len(raw)), start)
            continue
        if type(value) is dict:
            yield RawRow(line_no, value, None, None, start)
        else:
            error = f"not_object: expected a JSON object, got {json_type(value)}"
            yield RawRow(line_no, None, error, None, start)


class _NotUtf8(Exception):
    def __init__(self, line: int):
        super().__init__(line)
        self.line = line


class _Lines:
    """Decode a binary file line by line, so a bad byte is reported at its own line (a text-mode
    file decodes ahead in 8 KiB chunks and would blame an earlier line); counts bytes read."""

    def __init__(self, f):
        self.f, self.read, self.line_no = f, 0, 0

    def __iter__(self) -> Iterator[str]:
        for raw in self.f:
            self.line_no += 1
            self.read += len(raw)
            if self.line_no == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _NotUtf8(self.line_no) from None


def _read_csv(f, limit: int) -> Iterator[RawRow]:
    # Whole conversations in one cell exceed csv's default 128 KiB field limit. The limit is
    # process-wide; raising it only ever admits more.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    lines = _Lines(f)
    # csv.reader rather than DictReader: the same parsing, but the start line of each record is
    # known (DictReader skips blank lines, and multi-line cells shift a row count).
    reader = csv.reader(lines)
    try:
        try:
            header = next(reader, None)
        except csv.Error as exc:
            yield RawRow(1, None, f"bad_csv: cannot read the header: {exc}", None, 0)
            return
        if header is None:
            return
        while True:
            start, offset = reader.line_num + 1, lines.read
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield RawRow(start, None, f"bad_csv: {exc}", None, offset)
                continue
            if not cells:
                continue  # blank line
            size = row_size(cells) if limit else 0
            if size > limit:
                yield RawRow(start, None, too_large("row", size, limit), preview(cells, size), offset)
            elif len(cells) != len(header):
                error = f"bad_csv: row has {len(cells)} cells but the header has {len(header)}"
                yield RawRow(start, None, error, None, offset)
            else:
                yield decode_json_columns(start, dict(zip(header, cells)), offset)
    except _NotUtf8 as exc:
        # The csv reader cannot resume after its input fails, so the rest of the file is lost;
        # the message says so rather than letting those rows vanish from the counts unnoticed.
        error = f"bad_encoding: line {exc.line} is not UTF-8; the rest of the file was not read"
        yield RawRow(exc.line, None, error)
