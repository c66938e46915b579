"""Read a whole JSON document: an array of objects, {"data"/"examples": [...]}, or one object.

Each record keeps the physical line where it starts, its byte offset and (in an array) its
element number, so a reject points at the record in the file. The document is parsed once with
json's own decoder; only the positions of the records are walked by hand.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import Any

from tunesmith.data.rows import EXCERPT_CHARS, RawRow, cut, json_type, too_large

WRAPPER_KEYS = ("data", "examples")  # {"data": [...]} is read as the list
_UTF8_BOM = codecs.BOM_UTF8
_WS = re.compile(r"[ \t\n\r]*")
_DECODE = json.JSONDecoder().raw_decode


def read_json(f, limit: int) -> Iterator[RawRow]:
    """A JSON document: an array of objects, {"data"/"examples": [...]}, or one object."""
    data = f.read()
    bom = 3 if data.startswith(_UTF8_BOM) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + bom
        error = f"bad_encoding: not UTF-8 (byte {at + 1} of the file)"
        yield RawRow(data.count(b"\n", 0, at) + 1, None, error, None, at)
        return
    del data
    if not text.strip():
        return  # an empty file: no rows (the caller reports it)
    try:
        single, items = _parse_document(text)
    except json.JSONDecodeError as exc:
        hint = "; the file holds more than one JSON value" if exc.msg == "Extra data" else ""
        error = f"bad_json: {exc.msg.removesuffix(' at')} at column {exc.colno} (the whole file is unreadable{hint})"
        yield RawRow(exc.lineno, None, error, None, len(text[: exc.pos].encode()) + bom)
        return
    where = _Locator(text, bom)
    for number, (pos, end, value) in enumerate([single] if items is None else items, start=1):
        index = None if items is None else number
        line, offset = where.at(pos)
        size = where.at(end)[1] - offset
        if limit and size > limit:
            what = "the object" if index is None else f"record {index}"
            excerpt = cut(text[pos: pos + EXCERPT_CHARS], size, always=True)
            yield RawRow(line, None, too_large(what, size, limit), excerpt, offset, index)
        elif isinstance(value, dict):
            yield RawRow(line, value, None, None, offset, index)
        else:
            error = (f"not_object: expected a JSON array of objects, got {json_type(value)}" if index is None
                     else f"not_object: record {index} is {json_type(value)}, expected an object")
            yield RawRow(line, None, error, None, offset, index)


def _parse_document(text: str) -> tuple[Any, list[tuple[int, int, Any]] | None]:
    """Parse a whole JSON text, keeping where each record starts and ends (character positions).

    Returns (None, items) for an array or a {"data"/"examples": [...]} wrapper, with items
    [(start, end, value)]; ((start, end, value), None) for any other single value. Raises
    json.JSONDecodeError (with json's own messages) on a syntax error anywhere.
    """
    pos = _WS.match(text).end()
    if text.startswith("[", pos):
        items, end = _walk_array(text, pos)
        found: Any = None
    elif text.startswith("{", pos):
        value, lists, end = _walk_object(text, pos)
        key = next((k for k in WRAPPER_KEYS if isinstance(value.get(k), list)), None)
        items = lists[key] if key else None
        found = None if key else (pos, end, value)
    else:
        value, end = _DECODE(text, pos)
        items, found = None, (pos, end, value)
    end = _WS.match(text, end).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return found, items


def _walk_array(text: str, pos: int) -> tuple[list[tuple[int, int, Any]], int]:
    """The elements of the array at text[pos] == "[" as (start, end, value), and its end."""
    items = []
    pos = _WS.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return items, pos + 1
    while True:
        value, end = _DECODE(text, pos)
        items.append((pos, end, value))
        pos = _WS.match(text, end).end()
        if text.startswith("]", pos):
            return items, pos + 1
        if not text.startswith(",", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        pos = _WS.match(text, pos + 1).end()


def _walk_object(text: str, pos: int) -> tuple[dict[str, Any], dict[str, list], int]:
    """The object at text[pos] == "{", with the element positions of its wrapper-key arrays."""
    value: dict[str, Any] = {}
    lists: dict[str, list] = {}
    pos = _WS.match(text, pos + 1).end()
    if text.startswith("}", pos):
        return value, lists, pos + 1
    while True:
        if not text.startswith('"', pos):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
        key, pos = _DECODE(text, pos)
        pos = _WS.match(text, pos).end()
        if not text.startswith(":", pos):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
        pos = _WS.match(text, pos + 1).end()
        lists.pop(key, None)
        if key in WRAPPER_KEYS and text.startswith("[", pos):
            lists[key], end = _walk_array(text, pos)
            value[key] = [item[2] for item in lists[key]]
        else:
            value[key], end = _DECODE(text, pos)
        pos = _WS.match(text, end).end()
        if text.startswith("}", pos):
            return value, lists, pos + 1
        if not text.startswith(",", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        pos = _WS.match(text, pos + 1).end()


class _Locator:
    """Character positions in `text` to (line, byte offset), for positions that only go forward."""

    def __init__(self, text: str, base: int):
        self.text, self.ascii = text, text.isascii()
        self.pos, self.line, self.byte = 0, 1, base

    def at(self, pos: int) -> tuple[int, int]:
        self.line += self.text.count("\n", self.pos, pos)
        self.byte += pos - self.pos if self.ascii else len(self.text[self.pos: pos].encode())
        self.pos = pos
        return self.line, self.byte
