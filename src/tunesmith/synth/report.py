"""The synth report (report.json) and its printed tables: prompts per source, acceptance per
constraint or task type, speed, and everything dropped with its reason."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.markup import escape
from rich.table import Table

from .. import ui
from .prompts import SynthPrompt
from .raft import Decision, Sample

MAX_SHOWN = 20  # bad rows printed; all are in report.json and rejects.jsonl


def _rate(accepted: int, total: int) -> float | None:
    return round(accepted / total, 4) if total else None


def acceptance(prompts: list[SynthPrompt], scored: dict[str, list[Sample]]) -> dict[str, dict[str, Any]]:
    """Per verifier, per constraint (IFEval instruction id) or task type: samples, accepted, rate
    (IFEval: an instruction followed, strict; loose too)."""
    table: dict[str, dict[str, Counter]] = {}
    for p in prompts:
        if p.id not in scored or p.verifier == "none":
            continue
        for s in scored[p.id]:
            if p.verifier == "ifeval":
                for iid, v in (s.verdict.get("instructions") or {}).items():
                    c = table.setdefault("ifeval", {}).setdefault(iid, Counter())
                    c.update(samples=1, accepted=int(v["strict"]), loose=int(v["loose"]))
            else:
                for group in p.groups:
                    table.setdefault(p.verifier, {}).setdefault(group, Counter()).update(
                        samples=1, accepted=int(bool(s.passed)))
    out: dict[str, dict[str, Any]] = {}
    for verifier, groups in sorted(table.items()):
        out[verifier] = {}
        for group, c in sorted(groups.items()):
            row = {"samples": c["samples"], "accepted": c["accepted"], "rate": _rate(c["accepted"], c["samples"])}
            if verifier == "ifeval":
                row["loose"] = c["loose"]
                row["loose_rate"] = _rate(c["loose"], c["samples"])
            out[verifier][group] = row
    return out


def per_source(collected: dict[str, dict[str, Any]], prompts: list[SynthPrompt], removed: dict[str, str],
               scored: dict[str, list[Sample]], decisions: dict[str, Decision]) -> dict[str, dict[str, Any]]:
    """The funnel of each source: prompts -> decontaminated / not sampled -> sampled -> kept, pairs, dropped."""
    out = {}
    for spec, counts in collected.items():
        mine = [p for p in prompts if p.source == spec]
        sampled = [p for p in mine if p.id in scored]
        verified = [s for p in sampled if p.verifier != "none" for s in scored[p.id]]
        dropped = Counter(decisions[p.id].reason for p in sampled if decisions[p.id].reason)
        dropped.update(removed[p.id].split(":")[0] for p in mine if p.id in removed)
        row = {**counts, "sampled": len(sampled), "samples": sum(len(scored[p.id]) for p in sampled),
               "verified_samples": len(verified), "accepted_samples": sum(bool(s.passed) for s in verified),
               "kept": sum(decisions[p.id].chosen is not None for p in sampled),
               "pairs": sum(decisions[p.id].rejected is not None for p in sampled),
               "dropped": dict(dropped.most_common())}
        row["acceptance_rate"] = _rate(row["accepted_samples"], row["verified_samples"])
        out[spec] = row
    return out


def print_report(report: dict[str, Any]) -> None:
    """The tables and lines a person reads after a synth run."""
    table = Table(title=f"synth: {report['model']} ({report['settings']['samples']} samples per prompt)")
    for col in ("source", "prompts", "decontaminated", "sampled", "samples accepted", "sft rows", "pairs",
                "dropped"):
        table.add_column(col, justify="left" if col in ("source", "dropped") else "right")
    for spec, s in report["sources"].items():
        rate = f"{s['accepted_samples']}/{s['verified_samples']}" + \
            (f" ({100 * s['acceptance_rate']:.0f}%)" if s["acceptance_rate"] is not None else "")
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items() if k != "decontaminated") or "-"
        table.add_row(escape(spec), str(s["prompts"]), str(s["dropped"].get("decontaminated", 0)), str(s["sampled"]),
                      rate if s["verified_samples"] else "- (unverified)", str(s["kept"]), str(s["pairs"]), dropped)
    ui.console.print(table)
    if report["acceptance"]:
        acc = Table(title="acceptance per constraint / task type (share of samples)")
        for col in ("verifier", "constraint or task", "samples", "accepted", "rate", "loose rate"):
            acc.add_column(col, justify="left" if col in ("verifier", "constraint or task") else "right")
        for verifier, groups in report["acceptance"].items():
            for group, g in groups.items():
                loose = f"{100 * g['loose_rate']:.0f}%" if g.get("loose_rate") is not None else ""
                acc.add_row(verifier, group, str(g["samples"]), str(g["accepted"]), f"{100 * g['rate']:.0f}%", loose)
        ui.console.print(acc)
    _print_lines(report)


def _print_lines(report: dict[str, Any]) -> None:
    sp = report["sampling"]
    speed = f"{sp['samples_per_s']} samples/s, {sp['tokens_per_s']} tokens/s" if sp["samples_per_s"] else "no new samples"
    ui.log(f"sampling: {sp['generated']} samples generated in {sp['seconds']:.1f} s ({speed}); "
           f"{sp['reused']} reused from the store")
    dec = report["decontamination"]
    by_suite = ", ".join(f"{k} {v}" for k, v in dec["removed_by_suite"].items())
    ui.log(f"decontamination: {dec['removed']} prompts removed for overlapping eval prompts"
           + (f" ({by_suite})" if by_suite else "") + f"; suites: {', '.join(dec['suites']) or 'none'}")
    dropped = ", ".join(f"{k}: {v}" for k, v in report["dropped"].items() if v) or "none"
    ui.log(f"dropped prompts: {dropped}")
    out = report["outputs"]
    ui.log(f"written: {out['sft']} sft rows, {out['pairs']} preference pairs ({out['no_pair']} kept prompts had no "
           f"failing sample to pair with), {out['samples']} samples")
    if report["rejected_rows"]:
        ui.log(f"[yellow]{report['rejected_rows']} bad rows in the prompt files were not used:[/]")
        for r in report["rejects"][:MAX_SHOWN]:
            ui.log(escape(f"  {r['where']}: {r['reason']}"))
        if report["rejected_rows"] > MAX_SHOWN:
            ui.log(f"  ... and {report['rejected_rows'] - MAX_SHOWN} more (all in {report['rejects_file']})")
