"""The short story of a run: summary.json, summary.md and the console tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.markup import escape

from .. import ui
from .compare import comparison_markdown, comparison_rich_table
from .guard import verdict_markdown
from .tables import comparison_table, fmt


def _scores(evals: dict[str, Any], when: str) -> dict[str, float]:
    return {suite: r["score"] for suite, r in evals.get(when, {}).items()}


def skipped_steps(run_dir) -> list[dict[str, Any]]:
    """Every step dropped for a non-finite loss (train.on_nonfinite: skip), over all resumes of the run:
    [{"step", "loss", "samples": [origin, ...]}] from metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line) if line.startswith("{") else {}
        if rec.get("nonfinite") and rec.get("action") == "skipped":
            out[rec["step"]] = {"step": rec["step"], "loss": rec.get("loss"),
                                "samples": [s["origin"] for s in rec.get("samples", [])]}
    return [out[k] for k in sorted(out)]


def build_summary(run: dict[str, Any], data_report: dict[str, Any], result, evals: dict[str, Any],
                  adapter_dir, model_dir, seconds: float) -> dict[str, Any]:
    """run: {"model", "method", "run_dir"}; result: the TrainResult; evals: {"before"|"after": {suite: result}}."""
    before, after = _scores(evals, "before"), _scores(evals, "after")
    per_task = {}
    if "tasks" in evals.get("after", {}):
        for task, v in evals["after"]["tasks"]["per_task"].items():
            b = evals.get("before", {}).get("tasks", {}).get("per_task", {}).get(task, {})
            per_task[task] = {"before": b.get("exact_match"), "after": v["exact_match"], "n": v["n"]}
    return {
        **run,
        "data": {k: data_report[k] for k in ("total", "kept", "rejected", "by_reason")},
        "train": {"steps": result.steps, "final_loss": result.losses[-1] if result.losses else None,
                  "resumed_from": result.resumed_from, "seconds": round(result.seconds, 1),
                  "skipped_steps": skipped_steps(run["run_dir"]),
                  "tokens_per_s": round(result.tokens / result.seconds, 1) if result.seconds else None},
        "eval": {suite: {"before": before.get(suite), "after": after.get(suite),
                         "n": (evals.get("after") or evals.get("before") or {}).get(suite, {}).get("n")}
                 for suite in {**before, **after}},
        "per_task": per_task,
        "adapter": str(adapter_dir) if adapter_dir else None, "merged_model": str(model_dir) if model_dir else None,
        "wall_seconds": round(seconds, 1),
    }


def summary_markdown(s: dict[str, Any]) -> str:
    lines = [f"# tunesmith run: {s['run_dir']}", "", f"- model: {s['model']} ({s['method']})",
             f"- data: {s['data']['kept']} kept of {s['data']['total']} ({s['data']['rejected']} rejected)",
             f"- training: {s['train']['steps']} steps, final loss {s['train']['final_loss']}, "
             f"{s['train']['tokens_per_s']} tokens/s"]
    for skip in s["train"].get("skipped_steps") or []:
        lines.append(f"- step {skip['step']} skipped (loss {skip['loss']}, not finite; train.on_nonfinite: skip): "
                     f"samples {', '.join(skip['samples'][:4])}" + (" ..." if len(skip["samples"]) > 4 else ""))
    lines += [f"- wall time: {s['wall_seconds']} s", "",
             "| suite | base | tuned |", "|---|---|---|"]
    for suite, v in s["eval"].items():
        lines.append(f"| {suite} | {fmt(v['before'], suite)} | {fmt(v['after'], suite)} |")
    if s.get("checkpoint_kept"):
        k = s["checkpoint_kept"]
        lines += ["", f"Checkpoint kept: step {k['kept_step']} by {k['metric']} ({k['direction']}): {k['reason']}."]
    if s["per_task"]:
        lines += ["", "| task | n | base | tuned |", "|---|---|---|---|"]
        for t, v in s["per_task"].items():
            lines.append(f"| {t} | {v['n']} | {fmt(v['before'], 'tasks')} | {fmt(v['after'], 'tasks')} |")
    if s.get("guard"):
        lines += ["", "## Specialisation and general ability (base vs tuned, paired by item)", "",
                  verdict_markdown(s["guard"]).rstrip()]
    if s.get("phases"):
        lines += ["", "## Phases (`then:`), each from the previous model", "",
                  "| phase | method | steps | final loss | merged model | wall s |", "|---|---|---|---|---|---|"]
        for p in s["phases"]:
            t = p.get("train") or {}
            lines.append(f"| {p['name']} | {p['method']} | {t.get('steps')} | {t.get('final_loss')} | "
                         f"{p['merged_model']} | {p['wall_seconds']} |")
        lines += ["", f"Final model: {s.get('final_model')}; wall time of the recipe's run and its phases: "
                      f"{s.get('total_wall_seconds')} s"]
    if s.get("comparison"):
        lines += ["", "## Every model on the same held-out items", "", comparison_markdown(s["comparison"]).rstrip()]
    return "\n".join(lines) + "\n"


def print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    skipped = [k["step"] for k in s["train"].get("skipped_steps") or []]
    if skipped:
        ui.log(f"[yellow]{len(skipped)} step(s) skipped for a non-finite loss:[/] {skipped} (metrics.jsonl names "
               f"their samples)")
    if s.get("checkpoint_kept"):
        ui.log(f"checkpoint kept: step {s['checkpoint_kept']['kept_step']} ({s['checkpoint_kept']['reason']})")
    if not s["eval"]:
        ui.log(f"run directory: {s['run_dir']}  (merged model: {s['merged_model']}; wall {s['wall_seconds']} s)")
        return
    ui.console.print(comparison_table(s["eval"], "held-out evaluation: base vs tuned"))
    if s["per_task"]:
        per = Table(title="exact-match per task type")
        for col in ("task", "n", "base", "tuned"):
            per.add_column(col)
        for t, v in s["per_task"].items():
            per.add_row(t, str(v["n"]), fmt(v["before"], "tasks"), fmt(v["after"], "tasks"))
        ui.console.print(per)
    if s.get("guard"):
        style = "bold yellow" if s["guard"]["warning"] else "green"
        ui.log(f"[{style}]{escape(s['guard']['message'])}[/]")
    ui.log(f"run directory: {s['run_dir']}  (merged model: {s['merged_model']}; wall {s['wall_seconds']} s)")


def print_phases_summary(s: dict[str, Any]) -> None:
    """The end of a run with phases: the comparison of every model, and where the final model is."""
    if s.get("comparison"):
        heading = "base, the tuned model and every phase (paired by item)"
        ui.console.print(comparison_rich_table(s["comparison"], heading))
        for skipped in s["comparison"]["skipped"]:
            ui.log(f"[yellow]not compared:[/] {skipped['suite']} for {skipped['model']}: {skipped['reason']}")
    ui.log(f"phases: {', '.join(p['name'] for p in s['phases'])}; final model: {s.get('final_model')}; "
           f"summary: {s['run_dir']}/summary.md")
