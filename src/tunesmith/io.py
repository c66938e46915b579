"""Files on disk: the cache root, and atomic writes (the one way tunesmith puts a file or a folder there).

Everything is written under a temporary name next to its final place and renamed into place
(`os.replace`), so a run stopped at any moment leaves either the old file or the new one, never a
half-written file that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def cache_root() -> Path:
    """Where caches live (converted models, NLTK data, selection features): $TUNESMITH_CACHE,
    else ~/.cache/tunesmith."""
    return Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))


def sha256_files(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 of the files' bytes, read in the order given (a file's content hash, or a model's)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _json_default(value: Any) -> Any:
    """JSON for numpy scalars, sets and tuples; str() for anything else (dates, decimals, bytes)."""
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to `path`; on a clean exit it replaces `path`, on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    kwargs = {} if "b" in mode else {"encoding": "utf-8"}
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with atomic_open(path) as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write `obj` as JSON (numpy scalars and tuples allowed) atomically; returns the path."""
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write one JSON value per line atomically; returns the number of rows written."""
    n = 0
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
            n += 1
    return n


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_dir(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `path` (a hidden name, unique to this process); on a
    clean exit it replaces the folder `path` whole, on an error it is removed.

    durable: fsync every file and both folders before and after the rename (checkpoints), so a
    power cut cannot leave a renamed folder whose files are still only in the page cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if durable:
            for f in tmp.iterdir():
                if f.is_file():
                    _fsync(f)
            _fsync(tmp)
        if path.exists():  # moved aside first: a rename is atomic, a recursive delete is not
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
