"""Read columnar data: Parquet files, and the Arrow stream files of a datasets `save_to_disk` folder.

Rows are numbered from 1 across the whole file (Parquet) or across the folder's .arrow files
in the order given (datasets). Only `batch_rows` rows at a time become Python objects, so
memory stays flat on large files. A file that cannot be read, or a corrupt page part-way
through, ends the rows with one bad_file reject saying which file and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tunesmith.data.rows import RawRow, decode_json_columns, preview, row_size, too_large


class _BadFile(Exception):
    """A Parquet/Arrow file that cannot be read (further); the message says which and why."""


def read_parquet(path: Path, limit: int, batch_rows: int) -> Iterator[RawRow]:
    """Every row of a Parquet file; rows over `limit` bytes (0: no limit) are too_large."""
    return _table_rows(_parquet_batches(path, batch_rows), limit, batch_rows)


def read_arrow(files: Iterable[Path], limit: int, batch_rows: int) -> Iterator[RawRow]:
    """Every row of datasets' Arrow stream files, one after another, numbered on."""
    return _table_rows(_arrow_batches(files), limit, batch_rows)


def _parquet_batches(path: Path, batch_rows: int) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # Batches keep memory flat on large files: only batch_rows rows are Python objects.
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
    except (pa.ArrowException, ValueError) as exc:
        raise _BadFile(f"cannot read Parquet: {exc}") from None


def _arrow_batches(files: Iterable[Path]) -> Iterator[Any]:
    """Record batches of Arrow IPC stream files (what datasets writes), in order."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    for file in files:
        if not file.is_file():
            raise _BadFile(f"{file.name}, listed in state.json, is missing")
        try:
            with pa.memory_map(str(file)) as source:
                yield from ipc.open_stream(source)
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise _BadFile(f"cannot read Arrow stream {file}: {exc}") from None


def _table_rows(batches: Iterator[Any], limit: int, batch_rows: int) -> Iterator[RawRow]:
    """Rows of record batches, numbered from 1; a batch that fails ends them with one reject."""
    index = 0
    try:
        for batch in batches:
            for start in range(0, batch.num_rows, batch_rows):
                chunk = batch.slice(start, batch_rows)
                # nbytes bounds every row of the chunk: only a chunk over the limit is measured.
                measure = limit and chunk.nbytes > limit
                for row in chunk.to_pylist():
                    index += 1
                    size = row_size(row) if measure else 0
                    if size > limit:
                        yield RawRow(index, None, too_large("row", size, limit), preview(row, size))
                    else:
                        yield decode_json_columns(index, row)
    except _BadFile as exc:
        # Unreadable file (or a corrupt page part-way through): report it once and stop.
        yield RawRow(index + 1 if index else 0, None, f"bad_file: {exc}")
