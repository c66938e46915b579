"""Find data files and read their raw rows, each with the place a person would look at.

This is the public entry: `scan`/`resolve_paths` find what to read (sources), `iter_records`
reads one file or datasets folder by handing it to the reader for its format (text_readers,
json_document, table_readers). Every name other modules use is importable from here.

Readers never raise on a bad row: they yield it as an error with its place so the loader can
count and report it. Errors are strings "<kind>: <text>", the form Reject.reason uses.

Where a row is (RawRow.line, 1-based; RawRow.offset, the byte offset where the row starts in
the file, or in the decompressed stream of a .gz file):
  .jsonl        the physical line (blank lines are skipped but still counted); offset
  .json array   the physical line where the element starts, its element number in `index`;
                offset. A .json file holding one JSON object per line is read as JSONL.
  .csv          the physical line where the record starts (the header is line 1); offset
  .parquet      the row number across the file
  datasets      a `save_to_disk` folder: the row number across its .arrow files, in the
                order state.json lists them. Of a DatasetDict only the 'train' split is read;
                name a split's folder to read that split.
Each may be gzip-compressed (.jsonl.gz, .json.gz, .csv.gz). Rows over `max_row_bytes` are
rejected as too_large without being parsed (JSONL) or kept; reject texts are excerpts of at
most EXCERPT_CHARS characters. Finding files (scan, resolve_paths) lists what it skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.data.json_document import WRAPPER_KEYS
from tunesmith.data.rows import EXCERPT_CHARS, JSON_COLUMNS, RawRow
from tunesmith.data.sources import (SUPPORTED, TRAIN_SPLIT, SourceFile, dataset_folder, dataset_listing,
                                    dataset_sources, resolve_paths, scan, suffix, unsupported)
from tunesmith.data.table_readers import read_arrow, read_parquet
from tunesmith.data.text_readers import SKIP_CHUNK, SNIFF_BYTES, read_text_file
from tunesmith.errors import UsageError, UserError

__all__ = [
    "DEFAULT_MAX_ROW_BYTES", "EXCERPT_CHARS", "JSON_COLUMNS", "PARQUET_BATCH_ROWS", "SKIP_CHUNK", "SNIFF_BYTES",
    "SUPPORTED", "TRAIN_SPLIT", "WRAPPER_KEYS", "RawRow", "SourceFile", "iter_raw_rows", "iter_records",
    "resolve_paths", "scan",
]

PARQUET_BATCH_ROWS = 1024  # rows turned into Python objects at a time (Parquet and Arrow)
DEFAULT_MAX_ROW_BYTES = 16 * 2**20


def iter_raw_rows(path: str | os.PathLike, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> Iterator[
        tuple[int, dict[str, Any] | None, str | None]]:
    """Yield (line, row, error) for every row of a data file; exactly one of row/error is set."""
    for rec in iter_records(path, max_row_bytes):
        yield rec.line, rec.row, rec.error


def iter_records(path: str | os.PathLike, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> Iterator[RawRow]:
    """Every row of a data file or datasets folder, as RawRow (see the module docstring).

    max_row_bytes: rows larger than this are rejected as too_large; 0 means no limit.
    """
    path = Path(path)
    if max_row_bytes < 0:
        raise UsageError(f"data.max_row_bytes must be 0 (no limit) or more, got {max_row_bytes}")
    try:
        if path.is_dir():
            yield from _read_dataset_folder(path, max_row_bytes)
            return
        found = suffix(path)
        if found is None:
            raise unsupported(path)
        if found == ".parquet":
            yield from read_parquet(path, max_row_bytes, PARQUET_BATCH_ROWS)
        else:
            yield from read_text_file(path, found, max_row_bytes)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_dataset_folder(folder: Path, limit: int) -> Iterator[RawRow]:
    """A datasets save_to_disk folder: a Dataset, or the 'train' split of a DatasetDict."""
    kind = dataset_folder(folder)
    if kind is None:
        raise UsageError(f"{folder} is a folder but not a datasets save_to_disk folder (no state.json "
                         "or dataset_dict.json); name its files, or pass it to resolve_paths/scan")
    splits = dataset_listing(folder) if kind == "dict" else None
    if splits and TRAIN_SPLIT not in splits:
        names = ", ".join(repr(s) for s in splits)
        raise UsageError(f"{folder} is a datasets DatasetDict with no {TRAIN_SPLIT!r} split (it has {names}); "
                         f"name a split folder to read it, e.g. {folder / splits[0]}")
    files = [part for source in dataset_sources(folder, []) for part in source.parts]
    if not files:
        what = (f"{folder / 'dataset_dict.json'} names no split folder with data (it needs a 'splits' "
                "list)" if kind == "dict" else f"{folder / 'state.json'} lists no data files (no '_data_files')")
        yield RawRow(0, None, f"bad_file: {what}")
        return
    yield from read_arrow(files, limit, PARQUET_BATCH_ROWS)
