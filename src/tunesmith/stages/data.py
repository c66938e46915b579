"""The data stage: read the training files and/or generate tasks, then tokenize with verified
chat-template masks under the recipe's error and overlong policies.

Every input record ends up kept, rejected (with file:line and reason, in rejects.jsonl) or removed
by a later stage that lists it; the data report checks kept + rejected + removed == records in.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from .. import ui
from ..config import Section
from ..data.chat import TokenizedExample, tokenize_examples
from ..data.example import Example, Reject
from ..data.load import load_examples, reason_kind, write_rejects
from ..data.tasks import HELD_OUT_TASKS, TaskItem, generate_train_eval
from ..errors import DataError
from ..io import sha256_files


class TaskData(Section):
    """The built-in generator of verifiable tasks, as training data and held-out eval items."""

    n_train: int = Field(1600, ge=0, description="generated training items")
    n_eval: int = Field(HELD_OUT_TASKS, ge=0, description="held-out items (never a training prompt)")
    seed: int = Field(0, description="generator seed")
    types: list[str] | None = Field(None, description="task types (default: all)")


class DataConfig(Section):
    """Training data: files and/or generated tasks, and what to do with unusable rows."""

    train: list[str] = Field([], description="files, folders or globs (.jsonl .json .parquet .csv)")
    eval: list[str] = Field([], description="held-out conversations for the loss suite (default: generated "
                                            "eval tasks)")
    format: Literal["auto", "alpaca", "sharegpt", "messages"] = Field("auto", description="row format "
                                                                                          "(auto: per row)")
    tasks: TaskData | None = Field(None, description="generated tasks (and the held-out task suite)")
    on_error: Literal["fail", "skip"] = Field("fail", description="unusable rows: stop and list them, or skip")
    overlong: Literal["truncate", "drop", "fail"] = Field("truncate", description="samples over max_seq_len")
    max_seq_len: int = Field(1024, ge=8, description="tokens per sample")

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


@dataclass
class Loaded:
    """Examples read and generated, before curation: kept + rejected == total."""

    examples: list[Example]
    rejects: list[Reject]
    total: int
    formats: dict[str, int]
    eval_items: list[TaskItem]


@dataclass
class DataBundle:
    """What training and evaluation consume."""

    train_samples: list[TokenizedExample]
    eval_items: list[TaskItem]  # held-out generated tasks (exact-match suite)
    loss_samples: list[TokenizedExample]  # held-out conversations (loss suite)
    report: dict[str, Any] = field(default_factory=dict)


def load(cfg: DataConfig, rejects_path: Path | None) -> Loaded:
    """Read the files (rejects counted, written with file:line) and generate the tasks."""
    examples: list[Example] = []
    rejects: list[Reject] = []
    total, formats = 0, {}
    if cfg.train:
        loaded = load_examples(cfg.train, cfg.format, cfg.on_error, rejects_path)
        examples, rejects, total, formats = loaded.examples, loaded.rejects, loaded.total, dict(loaded.format_counts)
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
    return Loaded(examples, rejects, total, formats, eval_items)


def held_out(cfg: DataConfig) -> tuple[int, int]:
    """(count, seed) of the held-out generated task items this data config evaluates on."""
    return (cfg.tasks.n_eval, cfg.tasks.seed) if cfg.tasks is not None else (HELD_OUT_TASKS, 0)


def tokenize(cfg: DataConfig, tokenizer, loaded: Loaded, examples: list[Example], removed: int,
             rejects_path: Path | None) -> DataBundle:
    """Tokenize the examples that survived curation and selection; build the data report.

    Invariant reported and checked: kept + rejected + removed == total input records.
    """
    with ui.progress_bar("tokenize train", len(examples), "samples") as advance:
        samples, tok_rejects, stats = tokenize_examples(tokenizer, examples, cfg.max_seq_len, cfg.overlong,
                                                        progress=advance)
    rejects = loaded.rejects + tok_rejects
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
    loss_samples = _loss_samples(cfg, tokenizer, loaded.eval_items)
    report = {"total": loaded.total, "kept": len(samples), "rejected": len(rejects),
              "sources": source_funnel(loaded, rejects, samples),
              "by_reason": dict(Counter(reason_kind(r.reason) for r in rejects)), "formats": loaded.formats,
              "tokens": stats.to_json(), "eval_items": len(loaded.eval_items), "loss_samples": len(loss_samples),
              "rejects_file": str(rejects_path) if rejects_path else None}
    # Nothing may go missing silently: every input record is kept, rejected, or removed by
    # curation/selection (and those removals are listed in RUN/curation and RUN/selection).
    assert report["kept"] + report["rejected"] + removed == loaded.total, report
    return DataBundle(samples, loaded.eval_items, loss_samples, report)


def source_funnel(loaded: Loaded, rejects: list[Reject], samples: list[TokenizedExample]) -> dict[str, Any]:
    """Per data source: content hash and rows read, rejected, removed (curation, selection), trained."""
    rows = Counter(e.source for e in loaded.examples) + Counter(r.source for r in loaded.rejects)
    rejected = Counter(r.source for r in rejects)
    kept = Counter(s.source for s in samples)
    out = {}
    for source, n in sorted(rows.items()):
        path = Path(source)
        if path.is_file():
            digest = sha256_files([path])
        else:  # generated: the hash of what was generated
            h = hashlib.sha256()
            for e in loaded.examples:
                if e.source == source:
                    h.update(json.dumps(e.messages, sort_keys=True).encode())
            digest = h.hexdigest()
        out[source] = {"sha256": digest, "rows": n, "rejected": rejected[source],
                       "removed": n - rejected[source] - kept[source], "trained": kept[source]}
    return out


def _loss_samples(cfg: DataConfig, tokenizer, eval_items: list[TaskItem]) -> list[TokenizedExample]:
    """Held-out conversations for the loss suite: data.eval files, else the held-out task items."""
    if cfg.eval:
        held = load_examples(cfg.eval, cfg.format, "skip").examples
    else:
        held = [it.to_example("tasks:eval") for it in eval_items]
    return tokenize_examples(tokenizer, held, cfg.max_seq_len, "truncate")[0] if held else []


def print_data_report(report: dict[str, Any]) -> None:
    """The data report as a table: records in, kept, rejected by reason, removals, tokens."""
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
