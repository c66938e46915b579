"""The sample store: every sampled answer, on disk as soon as its request finishes, found by content.

A sample's key is the sha256 of (model identity, prompt token ids, sampling settings, sample index),
so a rerun with the same model, prompt and settings finds it and never generates it again, while
any change (other weights, chat template, temperature, max_tokens, seed) makes new keys. The
store is one append-only JSONL file; a line cut short by an interrupted write is ignored when the
store is opened (that sample is generated again).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def model_identity(name: str, dtype: str = "fp32") -> str:
    """What identifies a model's answers: its weights' sha256 (its name for a hub id) and dtype."""
    from ..models import base_weights_sha256

    digest = base_weights_sha256(name)
    return json.dumps({"weights": digest or name, "dtype": dtype}, sort_keys=True)


def sample_key(model: str, prompt_ids: list[int], settings: dict[str, Any], index: int) -> str:
    """The content hash of one sample (see the module docstring)."""
    text = json.dumps([model, prompt_ids, settings, index], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class SampleStore:
    """key -> sample record, backed by an append-only JSONL file (`path`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.torn = 0  # lines that could not be read back (an interrupted write)
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self.records[rec["key"]] = rec
                    except (ValueError, KeyError, TypeError):
                        self.torn += 1

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored record of `key`, or None."""
        return self.records.get(key)

    def put_many(self, records: list[dict[str, Any]]) -> None:
        """Append records (each with its "key") and flush them to the file before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            if fh.tell() and not self._ends_with_newline():
                fh.write("\n")  # after a torn line, start a fresh one
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for rec in records:
            self.records[rec["key"]] = rec

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"
