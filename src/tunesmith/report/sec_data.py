"""The data sections: the funnel from rows read to rows trained (with file:line samples of every
reason a row was dropped), token lengths against the truncation point, and the selection."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .html import Raw, Section, cards, code, details, h3, p, plots, pre, table
from .plots import Marker, bars, histogram
from .rundir import Run, samples_by_reason, token_lengths


def _kind(row: dict[str, Any]) -> str:
    reason = str(row.get("reason", ""))
    head, sep, _ = reason.partition(":")
    return head.strip() if sep and head.strip().replace("_", "").isalnum() else (reason[:40] or "other")


def funnel_steps(report: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(stage, rows left, what was dropped there) from rows read to rows trained, using the report's
    invariant kept + rejected + removed == total."""
    total, kept, rejected = report["total"], report["kept"], report["rejected"]
    refined = report.get("curation_and_selection") or {}
    steps = [("rows read", total, "")]
    chain = []
    if "dedup" in refined:
        d = refined["dedup"]
        chain.append(("deduplicated", d["total"], d["kept"], f"{d.get('exact_removed', 0)} exact and "
                      f"{d.get('near_removed', 0)} near duplicates removed"))
    if "decontaminate" in refined:
        d = refined["decontaminate"]
        by = ", ".join(f"{k}: {v}" for k, v in (d.get("removed_by_suite") or {}).items())
        chain.append(("decontaminated", d["total"], d["kept"], f"{d.get('removed', 0)} rows overlapping eval "
                      "prompts removed" + (f" ({by})" if by else "")))
    if "select" in refined:
        s = refined["select"]
        chain.append(("selected", s["pool"], s["selected"], f"{s['selected']} of {s['pool']} kept by "
                      f"{s.get('method')} (budget {s.get('budget')})"))
    if chain:
        first = chain[0][1]
        steps.append(("valid rows", first, f"{total - first} rejected while reading" if total - first else ""))
        steps += [(name, out, why) for name, _, out, why in chain]
        last = chain[-1][2]
        steps.append(("trained", kept, f"{last - kept} rejected at tokenization" if last - kept else ""))
    else:
        steps.append(("trained", kept, f"{rejected} rejected" if rejected else "nothing rejected or removed"))
    replay = report.get("replay") or {}
    if replay.get("rows"):  # the base's own answers join the training rows after the data's funnel (replay.ratio)
        steps.append(("trained with replay", kept + replay["rows"],
                      f"+{replay['rows']} replay rows: the base model's own answers to general requests "
                      f"({replay.get('tokens', 0):,} tokens; {replay.get('store_hits', 0)} found in the store)"))
    return steps


def _funnel_table(steps: list[tuple[str, int, str]]) -> str:
    top = max(n for _, n, _ in steps) or 1
    rows = [(name, (f"{n:,}", {"data-value": n}), Raw(f'<div class="b" style="width:{max(0.3, 100 * n / top):.1f}%">'
                                                       "</div>"), why) for name, n, why in steps]
    return table(["stage", "rows", "", "dropped here"], [[a, b, (c, {"class": "bar"}), d] for a, b, c, d in rows],
                 "funnel", numeric=(1,))


def _reject_samples(run: Run, rel: str, what: str) -> str:
    counts, samples = samples_by_reason(run, rel, _kind)
    if not counts:
        return ""
    rows = []
    for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        for i, row in enumerate(samples[kind]):
            where = f"{row.get('source')}:{row.get('line')}"
            raw = row.get("raw", row.get("messages"))
            raw = raw if isinstance(raw, str) or raw is None else json.dumps(raw, ensure_ascii=False)
            excerpt = (raw[:300] + "…") if isinstance(raw, str) and len(raw) > 300 else raw
            rows.append([kind if i == 0 else "", (f"{n:,}" if i == 0 else "", {}), code(where), row.get("reason"),
                         pre(excerpt) if excerpt else ""])
    return details(f"{what}: {sum(counts.values()):,} rows, first samples of each reason (all in {rel})",
                   table(["reason", "rows", "file:line", "message", "row"], rows, numeric=(1,)))


def _token_section(run: Run, report: dict[str, Any]) -> str:
    lengths, truncated = token_lengths(run)
    tok = report.get("tokens") or {}
    max_len = (run.config.get("data") or {}).get("max_seq_len")
    items = [("tokens", f"{tok['total_tokens']:,}" if "total_tokens" in tok else "-",
              f"{tok.get('trainable_tokens', 0):,} trained on ({100 * tok.get('trainable_share', 0):.1f}%)"
              if "trainable_tokens" in tok else "")]
    items.append(("truncated", f"{tok.get('truncated', truncated):,}", f"dropped overlong: "
                  f"{tok.get('dropped_overlong', 0):,}" if "dropped_overlong" in tok else ""))
    if len(lengths):
        items.append(("sample length", f"{int(np.median(lengths))} median", f"max {int(lengths.max())} tokens"))
    out = cards(items)
    if len(lengths):
        markers = [Marker(float(max_len), f"max_seq_len {max_len}", "#dc2626")] if max_len else []
        out += plots(histogram(lengths, f"tokens per trained sample ({len(lengths):,} samples)", "tokens",
                               markers=markers))
    return out


def data_section(run: Run) -> Section | None:
    report = run.data_report
    if not report or "total" not in report:
        return None
    body = [p("Every input row is trained on, rejected (with its file:line and reason) or removed by curation "
              "or selection; the counts below add up to the rows read.")]
    if {"kept", "rejected"} <= report.keys():
        body.append(_funnel_table(funnel_steps(report)))
    if report.get("by_reason"):
        body.append(plots(bars(sorted(report["by_reason"].items(), key=lambda kv: -kv[1]), "rejected rows by reason")))
    body.append(_reject_samples(run, "rejects.jsonl", "rejected rows"))
    for step in ("dedup", "decontaminate"):
        body.append(_reject_samples(run, f"curation/{step}/removed.jsonl", f"removed by {step}"))
    if report.get("sources"):
        rows = [[code(src), code(str(v.get("sha256", ""))[:16]), *(f"{v.get(k, 0):,}" for k in
                                                                   ("rows", "rejected", "removed", "trained"))]
                for src, v in report["sources"].items()]
        body.append(h3("Sources") + table(["source", "sha256", "rows", "rejected", "removed", "trained"], rows,
                                          numeric=(2, 3, 4, 5)))
    if report.get("tokens"):
        body.append(h3("Token lengths") + _token_section(run, report))
    return Section("data", "Data", "".join(body))


# ---- selection ----------------------------------------------------------------------------------

def _score_columns(run: Run) -> tuple[dict[str, list[float]], list[bool], dict[str, list[int]]]:
    """From selection/scores.jsonl: every method's scores, the selected flags, and per source [pool, selected]."""
    scores: dict[str, list[float]] = {}
    selected: list[bool] = []
    sources: dict[str, list[int]] = {}
    fixed = {"index", "source", "line", "origin", "selected", "rank", "id", "task"}
    for i, row in enumerate(run.jsonl("selection/scores.jsonl")):
        sel = bool(row.get("selected"))
        selected.append(sel)
        counts = sources.setdefault(str(row.get("source")), [0, 0])
        counts[0] += 1
        counts[1] += sel
        for k, v in row.items():
            if k not in fixed and (isinstance(v, (int, float)) or v is None) and not isinstance(v, bool):
                scores.setdefault(k, [np.nan] * i).append(np.nan if v is None else float(v))
        for col in scores.values():
            if len(col) < i + 1:
                col.append(np.nan)
    return scores, selected, sources


def selection_section(run: Run) -> Section | None:
    rep = run.json("selection/selection_report.json") or \
        ((run.data_report or {}).get("curation_and_selection") or {}).get("select")
    if not rep:
        return None
    body = [cards([("method", rep.get("method"), f"budget {rep.get('budget')}"),
                   ("selected", f"{rep.get('selected', 0):,}", f"of {rep.get('pool', 0):,} in the pool"),
                   *([("targets", rep["targets"], "target examples")] if rep.get("targets") else [])])]
    if rep.get("steps"):
        rows = [[s.get("method"), f"{s.get('input', 0):,}", f"{s.get('kept', 0):,}", s.get("seconds", ""),
                 "quality filter paired with ifd" if s.get("paired_with") else ""] for s in rep["steps"]]
        body.append(h3("Chain") + table(["step", "in", "kept", "seconds", "note"], rows, numeric=(1, 2, 3)))
    note = rep.get("ifd_quality_filter")
    if note:
        body.append(p(note.get("warning") or note.get("why") or f"ifd quality filter: {note.get('filter')}"))
    scores, selected, sources = _score_columns(run)
    hists = [histogram(v, f"{m} scores: pool vs selected", m, split=selected, split_names=("pool", "selected"))
             for m, v in scores.items() if len(v) == len(selected)]
    if rep.get("coverage"):
        hists.append(bars(sorted(rep["coverage"].items(), key=lambda kv: -kv[1]), "selected rows per type"))
    body.append(plots(*hists))
    if len(sources) > 1:
        rows = [[code(s), f"{a:,}", f"{b:,}", f"{100 * b / max(1, sum(v[1] for v in sources.values())):.1f}%"]
                for s, (a, b) in sorted(sources.items(), key=lambda kv: -kv[1][1])]
        body.append(h3("Per source") + table(["source", "pool", "selected", "share of selection"], rows,
                                             numeric=(1, 2, 3)))
    return Section("selection", "Selection", "".join(body))


# ---- synthetic data -----------------------------------------------------------------------------

def synth_section(run: Run) -> Section | None:
    """RUN/synth/report.json: prompts per source, acceptance per constraint or task type, what was written."""
    rep = run.json("synth/report.json")
    if not isinstance(rep, dict) or not rep.get("sources"):
        return None
    rows = []
    for spec, s in rep["sources"].items():
        rate = s.get("acceptance_rate")
        dropped = ", ".join(f"{k} {v}" for k, v in (s.get("dropped") or {}).items()) or "-"
        rows.append([code(spec), s.get("prompts", ""), s.get("sampled", ""),
                     f"{s.get('accepted_samples', 0):,} of {s.get('verified_samples', 0):,}"
                     + (f" ({100 * rate:.0f}%)" if isinstance(rate, (int, float)) else ""),
                     s.get("kept", ""), s.get("pairs", ""), dropped])
    body = [p(f"Samples from {rep.get('model', 'the model')}, {(rep.get('settings') or {}).get('samples', '?')} per "
              "prompt, kept when their verifier accepts them (RUN/synth/report.json)."),
            table(["source", "prompts", "sampled", "samples accepted", "sft rows", "pairs", "dropped"], rows,
                  "synth-table", numeric=(1, 2, 3, 4, 5))]
    charts = [bars(sorted(((g, round(100 * (v.get("rate") or 0), 1)) for g, v in groups.items()),
                          key=lambda kv: -kv[1]), f"{verifier}: samples accepted per constraint or task type", "%")
              for verifier, groups in (rep.get("acceptance") or {}).items() if groups]
    body.append(plots(*charts))
    out = rep.get("outputs") or {}
    if out:
        body.append(p(f"Written: {out.get('sft', 0):,} SFT rows and {out.get('pairs', 0):,} preference pairs from "
                      f"{out.get('samples', 0):,} samples."))
    return Section("synth", "Synthetic data", "".join(body))
