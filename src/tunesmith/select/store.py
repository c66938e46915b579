"""A content-addressed feature store: example key -> float32 vector, in SQLite.

Every expensive per-example quantity (embeddings, losses, projected gradients) is stored under
a key that hashes the feature kind, the model fingerprint, the method's parameters and the
example's text. A rerun with another budget or method finds its features here; an interrupted
scoring run has committed every finished batch and resumes with the rest.

Under torchrun each rank writes its own shard file (`<name>.rank<k>.sqlite`: SQLite dislikes
concurrent writers); `merge_shards` folds the shards into the main file afterwards.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def content_key(*parts: object) -> str:
    """A stable hex key for any JSON-serialisable parts (order matters)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


class FeatureStore:
    """key -> 1-D float32 vector, persisted in one SQLite file (WAL mode, commit per batch)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        _retry_while_locked(self._open_schema)

    def _open_schema(self) -> None:
        # Switching to WAL takes an exclusive lock and SQLite does not wait on its busy handler
        # for it, so ranks opening one file together can see "database is locked": only switch
        # when needed, and retry (the caller) until the other opener is done.
        if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM features").fetchone()[0]

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors for whichever of `keys` are present."""
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 900):  # SQLite caps bound parameters per statement
            chunk = list(keys[start:start + 900])
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, value FROM features WHERE key IN ({marks})", chunk):
                out[key] = np.frombuffer(blob, dtype=np.float32)
        return out

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Store vectors and commit (one transaction: a crash keeps all of the batch or none)."""
        rows = [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items]
        self._db.executemany("INSERT OR REPLACE INTO features (key, value) VALUES (?, ?)", rows)
        self._db.commit()

    def merge_from(self, other: str | Path) -> int:
        """Copy every row of another store file into this one; returns the rows copied."""
        self._db.execute("ATTACH DATABASE ? AS shard", (str(other),))
        try:
            n = self._db.execute("SELECT COUNT(*) FROM shard.features").fetchone()[0]
            self._db.execute("INSERT OR REPLACE INTO features SELECT key, value FROM shard.features")
            self._db.commit()
        finally:
            self._db.execute("DETACH DATABASE shard")
        return n


def _retry_while_locked(fn, attempts: int = 200, wait_s: float = 0.05) -> None:
    """Run fn, retrying while another connection holds the lock (up to ~10 s in all)."""
    for attempt in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(wait_s)


def shard_path(path: str | Path, rank: int) -> Path:
    """Where rank `rank` writes its part of the store at `path`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def merge_shards(path: str | Path) -> int:
    """Fold every `<name>.rank<k>.sqlite` next to `path` into `path` and delete the shards."""
    path = Path(path)
    total = 0
    with FeatureStore(path) as main:
        for shard in sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}")):
            total += main.merge_from(shard)
            for suffix in ("", "-wal", "-shm"):
                Path(str(shard) + suffix).unlink(missing_ok=True)
    return total
