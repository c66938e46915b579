"""MODEL_CARD.md: where a model came from and how well it does, generated from the run directory.

Everything on the card is read from files the run wrote (config.yaml, data_report.json,
summary.json, eval/<label>/<suite>.json, export/export_report.json), so every number links back to
the file that holds it and its per-item records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..io import sha256_files
from .guard import verdict_markdown
from .tables import fmt, title


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's weight files in name order (their bytes, not their metadata)."""
    return sha256_files([path] if path.is_file() else sorted([*path.glob("*.safetensors"), *path.glob("*.gguf")]))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _last_loss(metrics: Path) -> float | None:
    """The last training loss logged (a resumed run that trained no further step still has one)."""
    if not metrics.is_file():
        return None
    records = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln]
    losses = [r["loss"] for r in records if "loss" in r]
    return losses[-1] if losses else None


def _data_lines(report: dict[str, Any]) -> list[str]:
    lines = ["## Data", "", f"{report['total']} records in, {report['rejected']} rejected, "
             f"{report['kept']} trained on ({report['tokens']['trainable_tokens']} trained-on tokens of "
             f"{report['tokens']['total_tokens']})."]
    refined = report.get("curation_and_selection", {})
    if refined:
        lines.append("")
    if "dedup" in refined:
        lines.append(f"- deduplicated: {refined['dedup']['exact_removed']} exact and "
                     f"{refined['dedup']['near_removed']} near duplicates removed (`curation/dedup/`)")
    if "decontaminate" in refined:
        lines.append(f"- decontaminated: {refined['decontaminate']['removed']} rows overlapping eval prompts removed "
                     "(`curation/decontaminate/`)")
    if "select" in refined:
        sel = refined["select"]
        lines.append(f"- selected: {sel['selected']} of {sel['pool']} by `{sel['method']}`, budget {sel['budget']} "
                     "(`selection/scores.jsonl`)")
    lines += ["", "| source | sha256 | rows | rejected | removed | trained |", "|---|---|---|---|---|---|"]
    for source, v in report.get("sources", {}).items():
        lines.append(f"| {source} | `{v['sha256'][:16]}` | {v['rows']} | {v['rejected']} | {v['removed']} | "
                     f"{v['trained']} |")
    return lines + [""]


def _eval_lines(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    if not summary.get("eval"):
        return []
    lines = ["## Evaluation", "", "| suite | n | base | tuned | records |", "|---|---|---|---|---|"]
    for suite, v in summary["eval"].items():
        links = " ".join(f"[{when}](eval/{when}/{suite}.json)" for when in ("before", "after")
                         if (run_dir / "eval" / when / f"{suite}.json").is_file())
        lines.append(f"| {title(suite)} | {v.get('n') or ''} | {fmt(v['before'], suite)} | {fmt(v['after'], suite)} "
                     f"| {links} |")
    return lines + [""]


def export_lines(report: dict[str, Any] | None, prefix: str = "") -> list[str]:
    """The exports table: step, file, size, and the scores measured on each."""
    if not report or not report.get("steps"):
        return []
    suites = sorted({s for step in report["steps"] for s in step.get("eval", {}) if s != "tokens_per_s"})
    speed = any("tokens_per_s" in step.get("eval", {}) for step in report["steps"])
    head = ["export", "path", "size MB", *(title(s) for s in suites), *(["generation tokens/s"] if speed else []),
            "notes"]
    lines = ["## Exports", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in report["steps"]:
        scores = [fmt(step.get("eval", {}).get(s), s) for s in suites]
        if speed:
            scores.append(str(step.get("eval", {}).get("tokens_per_s", "-")))
        cells = [step["step"], f"`{prefix}{step['path']}`", f"{step['bytes'] / 1e6:.1f}", *scores, step.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def run_model_card(run_dir: str | Path, base_sha256: str | None = None) -> str:
    """The card of a run directory (Markdown)."""
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    summary = _read_json(run_dir / "summary.json") or {}
    data = _read_json(run_dir / "data_report.json")
    exports = _read_json(run_dir / "export" / "export_report.json")
    model = config.get("model", {})
    lines = [f"# Model card: {run_dir.name}", "",
             f"Tuned from `{model.get('name')}` ({model.get('dtype')})" +
             (f", weights sha256 `{base_sha256}`" if base_sha256 else "") +
             f" with tunesmith, method `{config.get('train', {}).get('method')}`.", ""]
    if summary.get("merged_into"):  # train.base_quant / lora.init loftq: the merge target is not the original
        lines += [f"The merged model in model/ is the adapter merged into {summary['merged_into']}.", ""]
    if summary.get("train"):
        t = summary["train"]
        final = t["final_loss"] if t["final_loss"] is not None else _last_loss(run_dir / "metrics.jsonl")
        lines += [f"Training: {t['steps']} steps, final loss {fmt(final, 'loss')} (metrics.jsonl), "
                  f"{t['tokens_per_s']} tokens/s" + (f" (resumed from step {t['resumed_from']})" if t["resumed_from"]
                                                     else "") + ".", ""]
        if summary.get("checkpoint_kept"):
            lines += [f"Checkpoint kept: step {summary['checkpoint_kept']['kept_step']} "
                      f"({summary['checkpoint_kept']['reason']}).", ""]
    if data:
        lines += _data_lines(data)
    lines += _eval_lines(run_dir, summary)
    if summary.get("guard"):
        lines += ["## Specialisation and general ability", "", verdict_markdown(summary["guard"]), ""]
    lines += export_lines(exports, "export/")
    lines += ["## Reproduce", "", "    tunesmith run " + str(run_dir / "config.yaml") + " --output.dir NEW_DIR", ""]
    if exports:
        lines += ["    " + exports.get("command", ""), ""]
    lines += ["## Training configuration (resolved)", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(),
              "```", ""]
    return "\n".join(lines)
