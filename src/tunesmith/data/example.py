"""The canonical in-memory record every reader produces, and the record of a rejected row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """One conversation in OpenAI-messages form, with where it came from.

    messages: [{"role": "system"|"user"|"assistant", "content": str}, ...]
    source:   the file it was read from (or a generator name such as "tasks:seed=0")
    line:     1-based line for JSONL, 1-based record index for JSON arrays / Parquet / CSV data rows
    meta:     free-form extras (e.g. {"task": "sort_numbers", "answer": "1, 2, 3"})
    """

    messages: list[dict[str, str]]
    source: str = ""
    line: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "source": self.source, "line": self.line, "meta": self.meta}


@dataclass
class Reject:
    """A row that cannot be used: where it is and why."""

    source: str
    line: int
    reason: str
    raw: Any = None  # the raw row (or text) when available, written to the rejects file

    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "reason": self.reason, "raw": self.raw}
