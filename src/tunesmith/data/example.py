"""The canonical in-memory record every reader produces, and the record of a rejected row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Reject files keep at most this much of a row: enough to find and read it, never a 50 MB copy.
EXCERPT_CHARS = 1000


@dataclass
class Example:
    """One conversation in OpenAI-messages form, with where it came from.

    messages: [{"role": "system"|"user"|"assistant"|"tool", "content": str, ...}, ...] (see data.turns)
    source:   the file it was read from (or a generator name such as "tasks:seed=0")
    line:     1-based physical line where the row starts (JSONL, CSV, JSON arrays); the row index
              for Parquet and Arrow
    meta:     free-form extras: "format", "id" (the row's own id), "fields" (the row's other
              fields), "origin" (file:line of the row this one was copied from by an earlier
              tunesmith step), "index" (the record number in a JSON array), "task", "answer"...
    tools:    the function definitions the conversation may call (OpenAI form), or None
    rejected: for preference rows, the rejected conversation (prompt + rejected answer)
    """

    messages: list[dict[str, Any]]
    source: str = ""
    line: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    rejected: list[dict[str, Any]] | None = None

    def where(self) -> str:
        """Where this row was read: file:line, or file:record N (line L) for a JSON array."""
        if self.meta.get("index") is not None:
            return f"{self.source}:record {self.meta['index']} (line {self.line})"
        return f"{self.source}:{self.line}"

    @property
    def origin(self) -> str:
        """Where the row first came from: the earliest file:line known (kept through tunesmith's
        own outputs such as dedup's kept.jsonl and selection's selected.jsonl)."""
        return self.meta.get("origin") or self.where()

    def to_json(self) -> dict[str, Any]:
        out = {"messages": self.messages, "source": self.source, "line": self.line, "meta": self.meta}
        if self.tools:
            out["tools"] = self.tools
        if self.rejected is not None:
            out["rejected"] = self.rejected
        return out

    def to_row(self) -> dict[str, Any]:
        """The example as a messages-format data row that reads back as the same example: its
        own fields (id, category, task...), its tools, and its origin."""
        extras = {k: v for k, v in self.meta.items() if k not in ("format", "fields", "origin", "index")}
        extras.update(self.meta.get("fields", {}))
        row: dict[str, Any] = {"messages": self.messages, **extras}
        if self.tools:
            row["tools"] = self.tools
        if self.rejected is not None:  # written back as a conversational preference row
            row = {"chosen": self.messages, "rejected": self.rejected, **extras}
            if self.tools:
                row["tools"] = self.tools
        row["origin"] = self.origin
        return row


@dataclass
class Reject:
    """A row that cannot be used: where it is and why."""

    source: str
    line: int
    reason: str
    raw: Any = None  # the raw row (or text) when available; the rejects file keeps an excerpt
    offset: int | None = None  # byte offset of the row in its (decompressed) file, when known
    index: int | None = None  # record number in a JSON array

    def where(self) -> str:
        if self.index is not None:
            return f"{self.source}:record {self.index} (line {self.line})"
        return f"{self.source}:{self.line}"

    def to_json(self) -> dict[str, Any]:
        out = {"source": self.source, "line": self.line, "reason": self.reason, "raw": excerpt(self.raw)}
        if self.offset is not None:
            out["offset"] = self.offset
        if self.index is not None:
            out["index"] = self.index
        return out


def excerpt(raw: Any, limit: int = EXCERPT_CHARS) -> Any:
    """`raw` itself when small, else the first `limit` characters of its JSON text, marked as cut."""
    import json

    if raw is None:
        return None
    text = raw if isinstance(raw, str) else None
    if text is None:
        try:
            text = json.dumps(raw, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(raw)
        if len(text) <= limit:
            return raw
    if len(text) <= limit:
        return text
    return text[:limit] + f"…[truncated: {len(text):,} characters in all]"
