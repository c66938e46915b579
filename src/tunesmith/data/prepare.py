"""Everything data before training: read files and/or generate tasks, tokenize with masks,
apply the error and overlong policies, and build the data report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import ui
from ..errors import DataError
from ..recipe import Recipe
from .chat import TokenizedExample, tokenize_examples
from .example import Example, Reject
from .load import load_examples, reason_kind, write_rejects
from .tasks import TaskItem, generate_train_eval


@dataclass
class DataBundle:
    train_samples: list[TokenizedExample]
    eval_items: list[TaskItem]  # held-out generated tasks (exact-match suite)
    loss_samples: list[TokenizedExample]  # held-out conversations (loss suite)
    report: dict[str, Any] = field(default_factory=dict)


def _tokenize(tokenizer, examples: list[Example], recipe: Recipe, label: str):
    with ui.progress_bar(f"tokenize {label}", len(examples), "samples") as advance:
        return tokenize_examples(tokenizer, examples, recipe.data.max_seq_len, recipe.data.overlong, progress=advance)


def prepare_data(recipe: Recipe, tokenizer, run_dir: Path | None) -> DataBundle:
    """Load, generate and tokenize the recipe's data; raise DataError under on_error: fail.

    Invariant reported and checked: kept + rejected == total input records.
    """
    cfg = recipe.data
    rejects_path = run_dir / "rejects.jsonl" if run_dir is not None else None
    examples: list[Example] = []
    rejects: list[Reject] = []
    total = 0
    formats: dict[str, int] = {}
    if cfg.train:
        loaded = load_examples(cfg.train, cfg.format, cfg.on_error, rejects_path)
        examples += loaded.examples
        rejects += loaded.rejects
        total += loaded.total
        formats.update(loaded.format_counts)
    eval_items: list[TaskItem] = []
    if cfg.tasks is not None:
        train_items, eval_items = generate_train_eval(cfg.tasks.n_train, cfg.tasks.n_eval, cfg.tasks.seed,
                                                      cfg.tasks.types)
        source = f"tasks:seed={cfg.tasks.seed}"
        for i, item in enumerate(train_items, start=1):
            ex = item.to_example(source)
            ex.line = i
            examples.append(ex)
        total += len(train_items)
        formats["generated"] = len(train_items)

    refined: dict[str, Any] = {}
    if cfg.curate.dedup or cfg.curate.decontaminate or cfg.select is not None:
        from .refine import refine

        n_before = len(examples)
        examples, refined = refine(examples, recipe, run_dir)
        refined["removed"] = n_before - len(examples)
    samples, tok_rejects, stats = _tokenize(tokenizer, examples, recipe, "train")
    rejects += tok_rejects
    if rejects_path is not None:
        write_rejects(rejects, rejects_path)
    # Overlong drops follow their own explicit policy; other tokenization rejects obey on_error.
    hard = [r for r in tok_rejects if reason_kind(r.reason) != "overlong"]
    if hard and cfg.on_error == "fail":
        listed = "\n".join(f"  {r.where()}: {r.reason}" for r in hard[:20])
        raise DataError(f"{len(hard)} samples cannot be trained on:\n{listed}\n"
                        f"All rejected rows are in {rejects_path}. Hint: raise data.max_seq_len, fix the rows, "
                        "or set data.on_error: skip")
    if not samples:
        raise DataError("no usable training sample is left after validation; see the rejects file")

    loss_samples: list[TokenizedExample] = []
    if cfg.eval:
        loaded = load_examples(cfg.eval, cfg.format, "skip")
        loss_samples, _, _ = tokenize_examples(tokenizer, loaded.examples, cfg.max_seq_len, "truncate")
    elif eval_items:
        held_out = [it.to_example("tasks:eval") for it in eval_items]
        loss_samples, _, _ = tokenize_examples(tokenizer, held_out, cfg.max_seq_len, "truncate")

    by_reason = dict(Counter(reason_kind(r.reason) for r in rejects))
    report = {"total": total, "kept": len(samples), "rejected": len(rejects), "by_reason": by_reason,
              "formats": formats, "tokens": stats.to_json(), "eval_items": len(eval_items),
              "loss_samples": len(loss_samples), "rejects_file": str(rejects_path) if rejects_path else None}
    if refined:
        report["curation_and_selection"] = refined
    # Nothing may go missing silently: every input record is kept, rejected, or removed by
    # curation/selection (and those removals are listed in RUN/curation and RUN/selection).
    assert report["kept"] + report["rejected"] + refined.get("removed", 0) == total, report
    return DataBundle(samples, eval_items, loss_samples, report)


def print_data_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="data report")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("records in", str(report["total"]))
    table.add_row("kept", str(report["kept"]))
    table.add_row("rejected", str(report["rejected"]))
    refined = report.get("curation_and_selection", {})
    if "dedup" in refined:
        table.add_row("  removed: exact duplicates", str(refined["dedup"]["exact_removed"]))
        table.add_row("  removed: near duplicates", str(refined["dedup"]["near_removed"]))
    if "decontaminate" in refined:
        table.add_row("  removed: overlap with eval prompts", str(refined["decontaminate"]["removed"]))
    if "select" in refined:
        sel = refined["select"]
        table.add_row(f"  not selected ({sel['steps'][-1]['method']})", str(sel["pool"] - sel["selected"]))
    for kind, n in sorted(report["by_reason"].items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {kind}", str(n))
    tok = report["tokens"]
    table.add_row("tokens (kept)", str(tok["total_tokens"]))
    table.add_row("trained-on tokens", f"{tok['trainable_tokens']} ({100 * tok['trainable_share']:.1f}%)")
    table.add_row("truncated", str(tok["truncated"]))
    table.add_row("template checks passed", str(tok["template_checked"]))
    ui.console.print(table)
    if report["rejected"] and report.get("rejects_file"):
        ui.log(f"rejected rows with file:line and reason: {report['rejects_file']}")
