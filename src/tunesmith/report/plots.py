"""Plots as inline SVG text: line charts (several series, markers, log scale), histograms and
horizontal bars. No dependency and nothing to load: the page draws them as they arrive.

Long curves are cut down to at most `MAX_POINTS` points by min/max bucketing (`downsample`): every
bucket keeps its lowest and highest point in x order, so spikes survive and the drawn shape is the
shape of the full curve. Every chart carries `data-points` (points drawn) and `data-n` (points in
the data) so a test or a reader can see what was thinned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

import numpy as np

MAX_POINTS = 1000
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#c026d3")
W, H = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 42, 40


@dataclass
class Series:
    """One curve: x and y values (same length), a name for the legend; dots: draw points, not a line."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    dots: bool = False
    color: str | None = None
    labels: Sequence[str] | None = None  # a text beside each point (dots only; no downsampling then)


@dataclass
class Marker:
    """A vertical line at x with a label (a truncation point, the kept checkpoint, the chosen alpha)."""

    x: float
    label: str
    color: str = "#6b7280"


@dataclass
class Chart:
    title: str
    xlabel: str = ""
    ylabel: str = ""
    series: list[Series] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    logy: bool = False


def downsample(x: Sequence[float], y: Sequence[float], max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most max_points (x, y) points: each of max_points // 2 buckets keeps its min and max, in x order."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xa) <= max_points:
        return xa, ya
    buckets = max(1, max_points // 2)
    edges = np.linspace(0, len(xa), buckets + 1).astype(np.int64)
    keep = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        seg = ya[lo:hi]
        finite = np.isfinite(seg)
        if not finite.any():
            keep.append(lo)
            continue
        idx = np.flatnonzero(finite)
        a, b = lo + idx[np.argmin(seg[idx])], lo + idx[np.argmax(seg[idx])]
        keep += sorted({int(a), int(b)})
    sel = np.asarray(keep, dtype=np.int64)
    return xa[sel], ya[sel]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def num(v: float) -> str:
    """A tick or value label: short, no trailing zeros."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-4:
        return f"{v:.1e}"
    if a >= 100:
        return f"{v:,.0f}"
    return f"{v:.4g}"


class _Scale:
    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False):
        self.log = log
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        self.lo, self.hi, self.a, self.b = lo, hi, a, b

    def __call__(self, v: float) -> float:
        if self.log:
            v = math.log10(v)
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)


def _frame(chart_title: str, kind: str, points: int, n: int) -> list[str]:
    return [f'<svg class="plot" data-kind="{kind}" data-points="{points}" data-n="{n}" viewBox="0 0 {W} {H}" '
            f'role="img" aria-label="{escape(chart_title)}" xmlns="http://www.w3.org/2000/svg">',
            f'<text class="ptitle" x="{LEFT}" y="16">{escape(chart_title)}</text>']


def _axes(xs: _Scale, ys: _Scale, xticks: list[float], yticks: list[float], xlabel: str, ylabel: str,
          xtick_text=num) -> list[str]:
    out = [f'<line class="axis" x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}"/>',
           f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}"/>']
    for t in yticks:
        y = ys(t)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{num(t)}</text>')
    for t in xticks:
        x = xs(t)
        out.append(f'<text class="tick" x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">'
                   f'{escape(xtick_text(t))}</text>')
    if xlabel:
        out.append(f'<text class="alabel" x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" text-anchor="middle">'
                   f'{escape(xlabel)}</text>')
    if ylabel:
        out.append(f'<text class="alabel" x="14" y="{(TOP + H - BOTTOM) / 2}" text-anchor="middle" '
                   f'transform="rotate(-90 14 {(TOP + H - BOTTOM) / 2})">{escape(ylabel)}</text>')
    return out


def _log_ticks(lo: float, hi: float) -> list[float]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [10.0 ** k for k in range(a, b + 1) if lo <= 10.0 ** k <= hi]
    return ticks or [lo, hi]


def line_chart(chart: Chart, max_points: int = MAX_POINTS) -> str:
    """The chart as an <svg> element; empty text when no series has a finite point."""
    drawn, n_total = [], 0
    for i, s in enumerate(chart.series):
        x, y = downsample(s.x, s.y, max_points)
        ok = np.isfinite(x) & np.isfinite(y) & ((y > 0) if chart.logy else True)
        n_total += len(s.x)
        if ok.any():
            drawn.append((s, x[ok], y[ok], s.color or PALETTE[i % len(PALETTE)]))
    if not drawn:
        return ""
    xlo = min(float(d[1].min()) for d in drawn)
    xhi = max(float(d[1].max()) for d in drawn)
    for m in chart.markers:
        xlo, xhi = min(xlo, m.x), max(xhi, m.x)
    ylo, yhi = min(float(d[2].min()) for d in drawn), max(float(d[2].max()) for d in drawn)
    if not chart.logy:
        pad = (yhi - ylo) * 0.05 or abs(yhi) * 0.05 or 1.0
        ylo, yhi = (0.0 if ylo >= 0 and ylo < (yhi - ylo) else ylo - pad), yhi + pad
    xs = _Scale(xlo, xhi if xhi > xlo else xlo + 1, LEFT, W - RIGHT)
    ys = _Scale(ylo, yhi, H - BOTTOM, TOP, chart.logy)
    yticks = _log_ticks(ylo, yhi) if chart.logy else nice_ticks(ylo, yhi)
    points = sum(len(d[1]) for d in drawn)
    out = _frame(chart.title, "line", points, n_total)
    out += _axes(xs, ys, nice_ticks(xlo, xhi, 6), yticks, chart.xlabel, chart.ylabel)
    for m in chart.markers:
        x = xs(m.x)
        out.append(f'<line class="marker" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" stroke="{m.color}"/>'
                   f'<text class="mlabel" x="{x + 4:.1f}" y="{TOP + 10}" fill="{m.color}">{escape(m.label)}</text>')
    for s, x, y, color in drawn:
        coords = [(xs(a), ys(b)) for a, b in zip(x.tolist(), y.tolist())]
        if s.dots or len(coords) == 1:
            dots = "".join(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3"/>' for a, b in coords)
            if s.labels is not None and len(s.labels) == len(coords):
                right = LEFT + 0.7 * (W - RIGHT - LEFT)  # labels of points on the right go to their left
                dots += "".join(f'<text class="tick" x="{a + (-5 if a > right else 5):.1f}" y="{b - 5:.1f}" '
                                f'text-anchor="{"end" if a > right else "start"}">{escape(str(t))}</text>'
                                for (a, b), t in zip(coords, s.labels))
            out.append(f'<g class="dots" fill="{color}"><title>{escape(s.name)}</title>{dots}</g>')
        else:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in coords)
            out.append(f'<polyline class="series" fill="none" stroke="{color}" points="{path}">'
                       f'<title>{escape(s.name)}</title></polyline>')
    out += _legend([(s.name, color, s.dots) for s, _, _, color in drawn])
    out.append("</svg>")
    return "".join(out)


def _legend(items: list[tuple[str, str, bool]], y: int = 30) -> list[str]:
    """A legend row under the title, left to right (nothing for a single series)."""
    if len(items) < 2:
        return []
    out, x = [], float(LEFT)
    room = int(((W - RIGHT - LEFT) / len(items) - 30) / 6.2)  # characters per label that fit on one line
    limit = max(8, min(36, room))
    for name, color, dots in items:
        label = name if len(name) <= limit else name[:limit - 1] + "…"
        mark = (f'<circle cx="{x + 6}" cy="{y - 4}" r="3" fill="{color}"/>' if dots else
                f'<line x1="{x}" y1="{y - 4}" x2="{x + 12}" y2="{y - 4}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<g class="legend">{mark}<text class="tick" x="{x + 16}" y="{y}">{escape(label)}</text></g>')
        x += 30 + 6.2 * len(label)
    return out


def histogram(values: Sequence[float], title: str, xlabel: str, bins: int = 40, markers: Sequence[Marker] = (),
              split: Sequence[bool] | None = None, split_names: tuple[str, str] = ("", "")) -> str:
    """A histogram of values (with optional vertical markers). split: a flag per value; the bars of
    flagged values are drawn over the others (e.g. selected vs not selected)."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    if not ok.any():
        return ""
    v = v[ok]
    lo, hi = float(v.min()), float(v.max())
    for m in markers:
        lo, hi = min(lo, m.x), max(hi, m.x)
    if hi <= lo:
        hi = lo + 1
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    layers = [(counts, PALETTE[0], split_names[0] or "all")]
    if split is not None:
        flag = np.asarray(split, dtype=bool)[ok]
        layers = [(counts, "#cbd5e1", split_names[0]), (np.histogram(v[flag], bins=bins, range=(lo, hi))[0],
                                                         PALETTE[0], split_names[1])]
    xs, ys = _Scale(lo, hi, LEFT, W - RIGHT), _Scale(0, float(counts.max()) * 1.08 or 1, H - BOTTOM, TOP)
    out = _frame(title, "histogram", int(bins), int(len(v)))
    out += _axes(xs, ys, nice_ticks(lo, hi, 6), nice_ticks(0, float(counts.max()) * 1.08 or 1), xlabel, "count")
    for layer, color, name in layers:
        bars = []
        for c, a, b in zip(layer.tolist(), edges[:-1].tolist(), edges[1:].tolist()):
            if c:
                x0, x1, y = xs(a), xs(b), ys(c)
                bars.append(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(0.5, x1 - x0 - 0.5):.1f}" '
                            f'height="{H - BOTTOM - y:.1f}"><title>{num(a)} – {num(b)}: {c}</title></rect>')
        out.append(f'<g class="bars" fill="{color}">{"".join(bars)}</g>')
    for m in markers:
        x = xs(m.x)
        out.append(f'<line class="marker" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" stroke="{m.color}"/>'
                   f'<text class="mlabel" x="{x - 4:.1f}" y="{TOP + 10}" fill="{m.color}" text-anchor="end">'
                   f'{escape(m.label)}</text>')
    if split is not None:
        out += _legend([(name, color, False) for _, color, name in layers])
    out.append("</svg>")
    return "".join(out)


def bars(items: Sequence[tuple[str, float]], title: str, unit: str = "", max_items: int = 30) -> str:
    """Horizontal bars, one per (label, value), largest first as given; at most max_items."""
    items = list(items)[:max_items]
    if not items:
        return ""
    row, label_w = 20, min(220, 12 + 7 * max(len(str(k)) for k, _ in items))
    top_y = 28
    height = top_y + row * len(items) + 10
    top = max(v for _, v in items) or 1
    out = [f'<svg class="plot" data-kind="bars" data-points="{len(items)}" data-n="{len(items)}" '
           f'viewBox="0 0 {W} {height}" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
           f'<text class="ptitle" x="8" y="16">{escape(title)}</text>']
    span = W - RIGHT - label_w - 70
    for i, (label, v) in enumerate(items):
        y = top_y + i * row
        w = max(1.0, span * v / top) if v else 0
        text = str(label) if len(str(label)) <= 30 else str(label)[:29] + "…"
        out.append(f'<text class="tick" x="{label_w - 6}" y="{y + 14}" text-anchor="end">{escape(text)}</text>'
                   f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{PALETTE[0]}">'
                   f'<title>{escape(str(label))}: {num(v)}{escape(unit)}</title></rect>'
                   f'<text class="tick" x="{label_w + w + 6:.1f}" y="{y + 14}">{num(v)}{escape(unit)}</text>')
    out.append("</svg>")
    return "".join(out)


def paired_bars(items: Sequence[tuple[str, float | None, float | None]], title: str, names: tuple[str, str],
                percent: bool = True, max_items: int = 40) -> str:
    """Two bars per label (before in grey, after in blue), values 0..1 shown as percent."""
    items = [(k, a, b) for k, a, b in items if a is not None or b is not None][:max_items]
    if not items:
        return ""
    row, label_w = 26, min(220, 12 + 7 * max(len(str(k)) for k, _, _ in items))
    height = TOP + row * len(items) + 10
    top = max(max(a or 0, b or 0) for _, a, b in items) or 1
    top = 1.0 if percent and top <= 1 else top
    span = W - RIGHT - label_w - 56
    out = [f'<svg class="plot" data-kind="paired-bars" data-points="{len(items)}" data-n="{len(items)}" '
           f'viewBox="0 0 {W} {height}" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
           f'<text class="ptitle" x="8" y="16">{escape(title)}</text>']
    out += _legend([(names[0], "#9ca3af", False), (names[1], PALETTE[0], False)])
    show = (lambda v: f"{100 * v:.0f}%") if percent else num
    for i, (label, a, b) in enumerate(items):
        y = TOP + i * row
        text = str(label) if len(str(label)) <= 30 else str(label)[:29] + "…"
        out.append(f'<text class="tick" x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(text)}</text>')
        for j, (v, color) in enumerate(((a, "#9ca3af"), (b, PALETTE[0]))):
            if v is None:
                continue
            w = max(1.0, span * v / top) if v else 0.0
            yy = y + 2 + j * 11
            out.append(f'<rect x="{label_w}" y="{yy}" width="{w:.1f}" height="10" fill="{color}">'
                       f'<title>{escape(str(label))}, {escape(names[j])}: {show(v)}</title></rect>'
                       f'<text class="tick" x="{label_w + w + 4:.1f}" y="{yy + 9}">{show(v)}</text>')
    out.append("</svg>")
    return "".join(out)
