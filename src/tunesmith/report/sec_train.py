"""The training section: loss (train and the evaluations during training), learning rate, grad
norm and tokens/s from metrics.jsonl, every other logged curve (DPO margins, accuracies), the
checkpoints on disk and which one was kept and why."""

from __future__ import annotations

from typing import Any

import numpy as np

from .html import Section, cards, h3, p, plots, table
from .plots import Chart, Marker, Series, line_chart, num
from .rundir import Run, checkpoints

MAIN = ("loss", "lr", "grad_norm", "tokens_per_s")
TITLES = {"loss": "training loss", "lr": "learning rate", "grad_norm": "gradient norm (before clipping)",
          "tokens_per_s": "tokens per second"}


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` points (NaNs skipped), for a readable loss trend."""
    ok = np.isfinite(y)
    vals = np.where(ok, y, 0.0)
    c, k = np.cumsum(vals), np.cumsum(ok)
    c = np.concatenate([[0.0], c])
    k = np.concatenate([[0], k])
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(0, idx - window)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (c[idx] - c[lo]) / (k[idx] - k[lo])


def loss_chart(run: Run, kept_step: int | None = None, chart_title: str = "loss") -> str:
    m = run.metrics
    if m is None or "loss" not in m.columns:
        return ""
    y = m.columns["loss"]
    series = [Series("train loss", m.steps, y, color="#93c5fd")]
    if len(y) >= 50:
        w = max(5, len(y) // 50)
        series.append(Series(f"mean of {w} steps", m.steps, smooth(y, w), color="#1d4ed8"))
    for suite in sorted({s for _, scores in m.evals for s in scores}):
        pts = [(step, scores[suite]) for step, scores in m.evals if suite in scores]
        if suite == "loss":
            series.append(Series("held-out loss (during training)", [a for a, _ in pts], [b for _, b in pts],
                                 dots=True, color="#dc2626"))
    markers = [Marker(float(kept_step), f"kept: step {kept_step}", "#16a34a")] if kept_step else []
    markers += [Marker(float(r["step"]), f"step {r['step']} {r.get('action', '')}", "#dc2626")
                for r in m.nonfinite[:5] if isinstance(r.get("step"), (int, float))]
    return line_chart(Chart(chart_title, "step", "loss", series, markers))


def _curve(run: Run, key: str) -> str:
    m = run.metrics
    y = m.columns.get(key) if m else None
    if y is None or not np.isfinite(y).any():
        return ""
    pos = y[np.isfinite(y)]
    logy = key == "grad_norm" and (pos > 0).all() and pos.max() / max(pos.min(), 1e-12) > 100
    return line_chart(Chart(TITLES.get(key, key.replace("_", " ")), "step", "", [Series(key, m.steps, y)],
                            logy=logy))


def _eval_during_chart(run: Run) -> str:
    m = run.metrics
    suites = sorted({s for _, scores in m.evals for s in scores if s != "loss"}) if m else []
    series = [Series(s, [a for a, sc in m.evals if s in sc], [sc[s] for a, sc in m.evals if s in sc], dots=True)
              for s in suites]
    return line_chart(Chart("scores evaluated during training", "step", "score", series)) if series else ""


def _kept(run: Run) -> str:
    kept: dict[str, Any] | None = run.summary.get("checkpoint_kept")
    best = run.json("checkpoints/best.json")
    out = ""
    if kept:
        out += p(f"Checkpoint kept: step {kept.get('kept_step')}, by {kept.get('metric')} ({kept.get('direction')}): "
                 f"{kept.get('reason')}. Best step {kept.get('best_step')} at {num(kept.get('best_value') or 0)}; "
                 f"last evaluated step {kept.get('last_step')} at {num(kept.get('last_value') or 0)}.", "")
    history = (kept or {}).get("history") or (best or {}).get("history") or []
    if history:
        best_step = (kept or best or {}).get("best_step", (best or {}).get("step"))
        rows = [[h["step"], num(h["value"]), "best" if h["step"] == best_step else ""] for h in history]
        out += table(["step", (kept or best or {}).get("metric", "metric"), ""], rows, numeric=(0, 1))
    return out


def _nonfinite_table(records: list[dict[str, Any]]) -> str:
    """Each non-finite step: what was done, and the samples whose own loss was not finite (file:line)."""
    rows = []
    for r in records:
        bad = [s.get("origin") for s in r.get("samples") or [] if isinstance(s, dict)
               and not isinstance(s.get("loss_alone"), (int, float))]
        rows.append([r.get("step"), r.get("action"), r.get("loss"), r.get("grad_norm"),
                     ", ".join(map(str, bad[:8])) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "") or "-"])
    return table(["step", "action", "loss", "grad norm", "samples with a non-finite loss of their own"], rows,
                 "nonfinite-table", numeric=(0,))


def training_section(run: Run) -> Section | None:
    m = run.metrics
    train = run.summary.get("train") or {}
    if m is None and not train:
        return None
    steps = train.get("steps") or (int(m.steps[-1]) if m is not None and len(m.steps) else None)
    final = train.get("final_loss", m.last.get("loss") if m else None)
    tps = train.get("tokens_per_s")
    if tps is None and m is not None and "tokens_per_s" in m.columns:
        tps = float(np.nanmedian(m.columns["tokens_per_s"]))
    body = [cards([("steps", steps, f"resumed from step {train['resumed_from']}" if train.get("resumed_from") else ""),
                   ("final loss", num(final) if isinstance(final, (int, float)) else "-", "last logged step"),
                   ("tokens/s", num(tps) if tps else "-", f"{train['seconds']} s training" if train.get("seconds")
                    else ""),
                   ("method", run.summary.get("method") or (run.config.get("train") or {}).get("method"), "")])]
    if m is not None:
        kept = (run.summary.get("checkpoint_kept") or {}).get("kept_step")
        body.append(plots(loss_chart(run, kept), *(_curve(run, k) for k in MAIN[1:]), _eval_during_chart(run)))
        extra = [k for k in m.columns if k not in MAIN]
        if extra:
            body.append(h3("Other logged curves") + plots(*(_curve(run, k) for k in extra)))
        body.append(p(f"{m.lines:,} lines in metrics.jsonl; curves longer than 1,000 points are drawn from the "
                      "lowest and highest point of each stretch, so no spike is hidden."))
    if m is not None and m.nonfinite:
        body.append(h3("Steps with a loss or gradient norm that was not finite") + _nonfinite_table(m.nonfinite))
    ckpts = checkpoints(run)
    kept_html = _kept(run)
    if ckpts or kept_html:
        body.append(h3("Checkpoints"))
        if ckpts:
            body.append(p("On disk (complete): " + ", ".join(f"step {s}" for s in ckpts) + "."))
        body.append(kept_html)
    return Section("training", "Training", "".join(body))
