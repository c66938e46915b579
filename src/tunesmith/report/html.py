"""The page: one self-contained HTML file (style, plots and script inline; nothing fetched).

A page is a title, a line under it, and a list of `Section`s; only the sections a run has data for
are given, so the page never shows an empty heading. A Content-Security-Policy in the page itself
forbids every network load: a browser opening the file from disk fetches nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from .assets import CSS, JS

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


class Raw(str):
    """HTML that is already markup (a plot, a nested table): put in as it is."""


@dataclass
class Section:
    id: str
    title: str
    body: str


def text(value: Any) -> str:
    """Any value as escaped HTML text (a Raw value as it is)."""
    if isinstance(value, Raw):
        return value
    return escape("" if value is None else str(value))


def p(content: Any, cls: str = "note") -> str:
    return f'<p class="{cls}">{text(content)}</p>'


def h3(title: str) -> str:
    return f"<h3>{escape(title)}</h3>"


def code(value: Any) -> Raw:
    return Raw(f"<code>{text(value)}</code>")


def pre(value: Any) -> Raw:
    return Raw(f"<pre>{text(value)}</pre>")


def link(href: str, label: Any) -> Raw:
    return Raw(f'<a href="{escape(href, quote=True)}">{text(label)}</a>')


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "", numeric: Sequence[int] = (),
          row_attrs: Sequence[dict[str, Any]] | None = None) -> str:
    """A table; numeric: indices of right-aligned columns. A cell is text, Raw markup, or a
    (value, {attr: value}) pair for cells that carry attributes (data-value, class)."""
    out = [f'<div class="wide"><table class="{escape(cls)}">']
    if headers:
        out.append("<thead><tr>")
        out += [f'<th class="num">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>"
                for i, h in enumerate(headers)]
        out.append("</tr></thead>")
    out.append("<tbody>")
    for r, row in enumerate(rows):
        attrs = row_attrs[r] if row_attrs else {}
        out.append("<tr" + _attrs(attrs) + ">")
        for i, cell in enumerate(row):
            extra: dict[str, Any] = {}
            if isinstance(cell, tuple):
                cell, extra = cell
            classes = " ".join(c for c in ("num" if i in numeric else "", extra.pop("class", "")) if c)
            out.append(f"<td{_attrs({'class': classes or None, **extra})}>{text(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _attrs(attrs: dict[str, Any]) -> str:
    return "".join(f' {k}="{escape(str(v), quote=True)}"' for k, v in attrs.items() if v is not None)


def cards(items: Sequence[tuple[str, Any, Any]]) -> str:
    """Key figures as cards: (label, value, detail)."""
    out = ['<div class="cards">']
    for label, value, detail in items:
        out.append(f'<div class="card"><div class="k">{text(label)}</div><div class="v">{text(value)}</div>'
                   + (f'<div class="d">{text(detail)}</div>' if detail not in (None, "") else "") + "</div>")
    return "".join(out) + "</div>"


def plots(*svgs: str) -> str:
    """Plots side by side (empty ones left out); nothing when all are empty."""
    kept = [s for s in svgs if s]
    return f'<div class="plots">{"".join(kept)}</div>' if kept else ""


def details(summary: str, body: str) -> str:
    return f"<details><summary>{escape(summary)}</summary>{body}</details>" if body else ""


def json_block(element_id: str, obj: Any) -> str:
    """Data for the script: JSON in a non-executed script block, with <, > and & escaped so no text
    inside can close the block or open a tag."""
    payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)
    payload = payload.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    payload = payload.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f'<script type="application/json" id="{escape(element_id)}">{payload}</script>'


def page(title: str, subtitle: str, sections: Sequence[Section], problems: Sequence[str] = (),
         data_blocks: Sequence[str] = (), footer: str = "") -> str:
    """The whole HTML document."""
    nav = "".join(f'<a href="#{escape(s.id)}">{escape(s.title)}</a>' for s in sections)
    notice = ""
    if problems:
        notice = ('<div class="problems"><strong>Some files could not be read; their sections may be '
                  "incomplete:</strong><ul>" + "".join(f"<li>{escape(x)}</li>" for x in problems) + "</ul></div>")
    body = "".join(f'<section class="sec" id="{escape(s.id)}"><h2>{escape(s.title)}</h2>{s.body}</section>'
                   for s in sections)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f'<header class="top"><h1>{escape(title)}</h1><p class="sub">{escape(subtitle)}</p><nav>{nav}</nav>'
            f"</header><main>{notice}{body}<footer>{escape(footer)}</footer></main>"
            + "".join(data_blocks) + f"<script>{JS}</script></body></html>\n")
