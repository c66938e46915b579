"""Files on disk: the cache root, and atomic writes (the one way tunesmith puts a file or a folder there).

Everything is written under a temporary name next to its final place and renamed into place
(`os.replace`), so a run stopped at any moment leaves either the old file or the new one, never a
half-written file that looks complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import DiskFullError

FULL = (errno.ENOSPC, errno.EDQUOT)  # "no space left", "disk quota exceeded"


def is_disk_full(exc: BaseException) -> bool:
    """An exception caused by a full disk or quota: an OSError with ENOSPC/EDQUOT, one in its cause/context chain
    (torch.save writing to a file object), or a Rust I/O error carrying the code (safetensors: "os error 28")."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in FULL:
            return True
        if any(f"(os error {code})" in str(exc) for code in FULL):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False

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
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        raise DiskFullError(disk_full_message(path, written, None)) from None
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


def _size(path: Path) -> int:
    """Bytes in a file or under a folder (0 when it is gone)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def disk_full_message(path: Path, written: int, need_bytes: int | None, advice: str | None = None) -> str:
    """What did not fit where: the size needed (the estimate, or at least what was written before the disk
    filled up), what is free now that the partial write is removed, and what to do (`advice`)."""
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    except OSError:
        free = None
    need = max(need_bytes or 0, written)
    needs = f"needs about {human_bytes(need)}" if need_bytes else f"needs more than the {human_bytes(written)} " \
                                                                   "written before the disk filled up"
    return (f"no space left on the device writing {path}: it {needs}"
            + (f", and {human_bytes(free)} are free" if free is not None else "")
            + f"; the partial write was removed and {path.name} is as it was before.\n"
            + (advice or "Free some space (or write elsewhere) and run the command again"))


@contextmanager
def atomic_dir(path: str | os.PathLike, durable: bool = False, need_bytes: int | None = None,
               advice: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `path` (a hidden name, unique to this process); on a
    clean exit it replaces the folder `path` whole, on an error it is removed.

    durable: fsync every file and both folders before and after the rename (checkpoints), so a
    power cut cannot leave a renamed folder whose files are still only in the page cache.
    need_bytes, advice: the expected size of the folder and what to do, said in the message when the disk
    fills up (a DiskFullError: the temporary folder is removed and `path` is left as it was).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if durable:
            for f in tmp.rglob("*"):
                _fsync(f)  # files and sub-folders alike
            _fsync(tmp)
        old = None
        if path.exists():  # moved aside first: a rename is atomic, a recursive delete is not
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
        if old is not None:  # deleted only once the new folder is in place
            shutil.rmtree(old, ignore_errors=True)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        written = _size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise DiskFullError(disk_full_message(path, written, need_bytes, advice)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
