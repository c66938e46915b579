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
from rich.markup import escape

from .. import ui
from ..config import Section
from ..data.chat import TokenizedExample, TokenizedPair
from ..data.samples import tokenize_examples, tokenize_pairs
from ..data.example import Example, Reject
from ..data.columns import parse_columns
from ..data.load import DEFAULT_MAX_ROW_BYTES, Source, load_examples, load_sources, reason_kind, write_rejects
from ..data.tasks import HELD_OUT_TASKS, TaskItem, generate_train_eval
from ..errors import DataError
from ..io import sha256_files, write_jsonl


class TaskData(Section):
    """The built-in generator of verifiable tasks, as training data and held-out eval items."""

    n_train: int = Field(1600, ge=0, description="generated training items")
    n_eval: int = Field(HELD_OUT_TASKS, ge=0, description="held-out items (never a training prompt)")
    seed: int = Field(0, description="generator seed")
    types: list[str] | None = Field(None, description="task types (default: all)")


FORMAT_CHOICE = Literal["auto", "alpaca", "dolly", "prompt_completion", "sharegpt", "messages", "preference"]


class DataSource(Section):
    """One data.train entry with settings of its own: `{path: qa.csv, columns: {prompt: question}}`."""

    path: str = Field(..., description="file, folder or glob")
    format: FORMAT_CHOICE = Field("auto", description="row format (auto: per row)")
    columns: dict[str, str] | None = Field(None, description="field=column renames for this source (default: "
                                                              "data.columns)")

    @field_validator("columns", mode="before")
    @classmethod
    def _columns(cls, value: Any) -> Any:
        return parse_columns(value) if value is not None else None


class DataConfig(Section):
    """Training data: files and/or generated tasks, and what to do with unusable rows."""

    train: list[str | DataSource] = Field([], description="files, folders or globs (.jsonl .json .parquet .csv, "
                                                          ".gz, datasets save_to_disk folders); an entry may be "
                                                          "{path, format, columns}")
    eval: list[str] = Field([], description="held-out conversations for the loss suite (default: generated "
                                            "eval tasks)")
    format: FORMAT_CHOICE = Field("auto", description="row format (auto: per row)")
    columns: dict[str, str] = Field({}, description="rename columns to the fields tunesmith reads: "
                                                    "prompt=question,response=answer")
    train_on: Literal["assistant", "all", "last_assistant"] = Field(
        "assistant", description="turns trained on (a turn's own weight: 0|1 overrides)")
    default_system: str = Field("model", description="system prompt for rows without one: model (the chat "
                                                     "template's own default), none, or a text")
    tasks: TaskData | None = Field(None, description="generated tasks (and the held-out task suite)")
    on_error: Literal["fail", "skip"] = Field("fail", description="unusable rows: stop and list them, or skip")
    overlong: Literal["truncate", "drop", "fail"] = Field("truncate", description="samples over max_seq_len: "
                                                          "truncate drops earlier turns first, then cuts the end")
    max_seq_len: int = Field(1024, ge=8, description="tokens per sample")
    max_row_bytes: int = Field(DEFAULT_MAX_ROW_BYTES, ge=0, description="rows larger than this are rejected "
                                                                        "unread (0: no limit)")

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, dict)) else value

    @field_validator("columns", mode="before")
    @classmethod
    def _columns(cls, value: Any) -> Any:
        return parse_columns(value)

    def sources(self) -> list[Source]:
        """data.train as sources, each with its format and column mapping."""
        out = []
        for item in self.train:
            if isinstance(item, str):
                out.append(Source(item, self.format, dict(self.columns)))
            else:
                columns = self.columns if item.columns is None else item.columns
                fmt = item.format if item.format != "auto" else self.format
                out.append(Source(item.path, fmt, dict(columns)))
        return out

    def train_paths(self) -> list[str]:
        """The paths of data.train (for checks that an output is not inside an input)."""
        return [s.path for s in self.sources()]


@dataclass
class Loaded:
    """Examples read and generated, before curation: kept + rejected == total."""

    examples: list[Example]
    rejects: list[Reject]
    total: int
    formats: dict[str, int]
    eval_items: list[TaskItem]
    files: list[dict[str, Any]] = field(default_factory=list)  # per file: path, kind, rows, kept, rejected
    skipped: list[dict[str, str]] = field(default_factory=list)  # files in data folders that were not read


@dataclass
class DataBundle:
    """What training and evaluation consume."""

    train_samples: list[TokenizedExample]  # (train.objective: dpo) the chosen side of each pair
    eval_items: list[TaskItem]  # held-out generated tasks (exact-match suite)
    loss_samples: list[TokenizedExample]  # held-out conversations (loss suite)
    eval_examples: list[Example] = field(default_factory=list)  # data.eval conversations (the "data" suite)
    report: dict[str, Any] = field(default_factory=dict)
    train_pairs: list[TokenizedPair] | None = None  # preference pairs (train.objective: dpo), else None


def load(cfg: DataConfig, rejects_path: Path | None) -> Loaded:
    """Read the files (rejects counted, written with file:line) and generate the tasks."""
    examples: list[Example] = []
    rejects: list[Reject] = []
    total, formats = 0, {}
    files: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    if cfg.train:
        loaded = load_sources(cfg.sources(), cfg.on_error, rejects_path, max_row_bytes=cfg.max_row_bytes)
        examples, rejects, total, formats = loaded.examples, loaded.rejects, loaded.total, dict(loaded.format_counts)
        files, skipped = loaded.files, loaded.skipped
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
        files.append({"path": source, "kind": "generated", "rows": len(train_items), "kept": len(train_items),
                      "rejected": 0, "formats": {"generated": len(train_items)}, "columns": {}})
    return Loaded(examples, rejects, total, formats, eval_items, files, skipped)


def validate_data(cfg: DataConfig, rejects_path: Path | None) -> dict[str, Any]:
    """`data check --validate-only`: read and validate data.train in flat memory (no tokenizer),
    print each file's format and counts, and return the report. Under on_error: fail, rejected
    rows end in a DataError listing them (after the report is printed)."""
    import time

    if not cfg.train:
        raise DataError("nothing to validate: data.train is empty (give a data file, folder or glob)")
    t0 = time.perf_counter()
    loaded = load_sources(cfg.sources(), "skip", rejects_path, show_progress=True, max_row_bytes=cfg.max_row_bytes,
                          keep_examples=False)
    seconds = time.perf_counter() - t0
    kinds = Counter(reason_kind(r.reason) for r in loaded.rejects)
    report = {"total": loaded.total, "kept": loaded.kept, "rejected": len(loaded.rejects),
              "by_reason": dict(kinds.most_common()), "formats": loaded.format_counts, "files": loaded.files,
              "skipped_files": loaded.skipped, "rejects_file": str(rejects_path) if rejects_path else None,
              "seconds": round(seconds, 2), "rows_per_s": round(loaded.total / seconds) if seconds else None}
    print_file_table(report)
    ui.log(f"{loaded.total} rows read in {seconds:.1f} s ({report['rows_per_s']} rows/s): {loaded.kept} usable, "
           f"{len(loaded.rejects)} rejected" + (" (" + ", ".join(f"{k}: {n}" for k, n in kinds.most_common()) + ")"
                                                if kinds else ""))
    for r in loaded.rejects[:MAX_SHOWN]:
        ui.log(escape(f"  {r.where()}: {r.reason}"))
    if len(loaded.rejects) > MAX_SHOWN:
        ui.log(f"  ... and {len(loaded.rejects) - MAX_SHOWN} more" + (f" (all in {rejects_path})" if rejects_path else ""))
    if loaded.rejects and cfg.on_error == "fail":
        raise DataError(f"{len(loaded.rejects)} of {loaded.total} rows cannot be used (listed above); fix them or "
                        "set data.on_error: skip")
    return report


MAX_SHOWN = 20


def held_out(cfg: DataConfig) -> tuple[int, int]:
    """(count, seed) of the held-out generated task items this data config evaluates on."""
    return (cfg.tasks.n_eval, cfg.tasks.seed) if cfg.tasks is not None else (HELD_OUT_TASKS, 0)


def tokenize(cfg: DataConfig, tokenizer, loaded: Loaded, examples: list[Example], removed: int,
             rejects_path: Path | None, pairs: bool = False) -> DataBundle:
    """Tokenize the examples that survived curation and selection; build the data report.

    pairs: tokenize preference pairs (train.objective: dpo); every row must have a rejected answer.
    Invariant reported and checked: kept + rejected + removed == total input records.
    """
    train_pairs = None
    with ui.progress_bar("tokenize train", len(examples), "pairs" if pairs else "samples") as advance:
        if pairs:
            train_pairs, tok_rejects, stats = tokenize_pairs(tokenizer, examples, cfg.max_seq_len, cfg.overlong,
                                                             progress=advance, default_system=cfg.default_system)
            samples = [p.chosen for p in train_pairs]
        else:
            samples, tok_rejects, stats = tokenize_examples(tokenizer, examples, cfg.max_seq_len, cfg.overlong,
                                                            progress=advance, train_on=cfg.train_on,
                                                            default_system=cfg.default_system)
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
        raise DataError(_nothing_left(loaded, rejects, rejects_path))
    eval_examples = _eval_examples(cfg)
    loss_samples = _loss_samples(cfg, tokenizer, loaded.eval_items, eval_examples)
    report = {"total": loaded.total, "kept": len(samples), "rejected": len(rejects),
              "sources": source_funnel(loaded, rejects, samples),
              "by_reason": dict(Counter(reason_kind(r.reason) for r in rejects)), "formats": loaded.formats,
              "tokens": stats.to_json(), "eval_items": len(loaded.eval_items), "loss_samples": len(loss_samples),
              "rejects_file": str(rejects_path) if rejects_path else None,
              "files": loaded.files, "skipped_files": loaded.skipped}
    if train_pairs is not None:
        report["pairs"] = len(train_pairs)
    if rejects_path is not None:
        report["trained_file"] = str(write_trained(train_pairs if pairs else samples,
                                                   rejects_path.parent / "trained.jsonl"))
    # Nothing may go missing silently: every input record is kept, rejected, or removed by
    # curation/selection (and those removals are listed in RUN/curation and RUN/selection).
    assert report["kept"] + report["rejected"] + removed == loaded.total, report
    return DataBundle(samples, loaded.eval_items, loss_samples, report=report, eval_examples=eval_examples,
                      train_pairs=train_pairs)


def write_trained(samples: list[TokenizedExample] | list[TokenizedPair], path: Path) -> Path:
    """One line per trained sample (or pair): where it came from (origin file:line, id), its tokens
    and whether it was truncated, so any trained row can be traced back to the user's file."""
    def row(s: TokenizedExample | TokenizedPair) -> dict[str, Any]:
        if isinstance(s, TokenizedPair):
            out = {**row(s.chosen), "rejected_tokens": len(s.rejected.input_ids),
                   "rejected_trained_tokens": s.rejected.n_trainable}
            return out
        out = {"origin": s.origin, "source": s.source, "line": s.line, "tokens": len(s.input_ids),
               "trained_tokens": s.n_trainable}
        for key in ("id", "task"):
            if s.meta.get(key) is not None:
                out[key] = s.meta[key]
        if s.truncated:
            out["truncation"] = s.meta.get("truncation", True)
        return out
    write_jsonl(path, (row(s) for s in samples))
    return path


def _nothing_left(loaded: Loaded, rejects: list[Reject], rejects_path: Path | None) -> str:
    """Why no training sample is left, pointing only at files that exist and say something."""
    if loaded.total == 0:
        read = ", ".join(f["path"] for f in loaded.files) or "no files"
        return f"the training data has no rows (read: {read}); check data.train"
    if not rejects:
        return (f"all {loaded.total} rows were removed by curation or selection; see RUN/curation and "
                "RUN/selection for why")
    kinds = Counter(reason_kind(r.reason) for r in rejects)
    shown = ", ".join(f"{k}: {n}" for k, n in kinds.most_common())
    where = f"; every rejected row is listed in {rejects_path}" if rejects_path is not None else ""
    first = rejects[0]
    return (f"no usable training sample is left: {len(rejects)} of {loaded.total} rows rejected ({shown}); "
            f"first: {first.where()}: {first.reason}{where}")


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


def _eval_examples(cfg: DataConfig) -> list[Example]:
    """The user's held-out conversations (data.eval), read like the training data; a row that
    cannot be read is named in a warning, not silently left out."""
    if not cfg.eval:
        return []
    loaded = load_examples(cfg.eval, cfg.format, "skip", columns=cfg.columns, max_row_bytes=cfg.max_row_bytes)
    for r in loaded.rejects[:5]:
        ui.log(f"[yellow]data.eval: {r.where()} is not used: {r.reason}[/]")
    if len(loaded.rejects) > 5:
        ui.log(f"[yellow]data.eval: {len(loaded.rejects) - 5} more rows are not used[/]")
    return loaded.examples


def _loss_samples(cfg: DataConfig, tokenizer, eval_items: list[TaskItem], eval_examples: list[Example]
                  ) -> list[TokenizedExample]:
    """Held-out conversations for the loss suite: data.eval files, else the held-out task items."""
    held = eval_examples if cfg.eval else [it.to_example("tasks:eval") for it in eval_items]
    if not held:
        return []
    return tokenize_examples(tokenizer, held, cfg.max_seq_len, "truncate", train_on=cfg.train_on,
                             default_system=cfg.default_system)[0]


def print_file_table(report: dict[str, Any]) -> None:
    """Each data file: how it was read, the formats detected in it, its rows, kept and rejected;
    then the files of data folders that were not read, and why."""
    from rich.table import Table

    files = Table(title="data files")
    for col in ("file", "read as", "format", "rows", "valid", "rejected"):
        files.add_column(col, justify="right" if col in ("rows", "valid", "rejected") else "left")
    for f in report.get("files", []):
        fmt = ", ".join(f"{k} {v}" if len(f["formats"]) > 1 else k for k, v in f["formats"].items()) or \
            ("(empty file)" if not f["rows"] else "-")
        if f.get("columns"):
            fmt += " (columns " + ", ".join(f"{k}={v}" for k, v in f["columns"].items()) + ")"
        files.add_row(f["path"], f["kind"], fmt, str(f["rows"]), str(f["kept"]), str(f["rejected"]))
    if report.get("files"):
        ui.console.print(files)
    for skipped in report.get("skipped_files", []):
        ui.log(escape(f"not read: {skipped['path']} ({skipped['reason']})"))



def print_data_report(report: dict[str, Any]) -> None:
    """The data report: each file with its detected format and counts, then the funnel (records
    in, kept, rejected by reason, removals), tokens, and every policy that changed a conversation."""
    from rich.table import Table

    print_file_table(report)
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
    table.add_row(f"trained-on tokens (train_on: {tok.get('train_on', 'assistant')})",
                  f"{tok['trainable_tokens']} ({100 * tok['trainable_share']:.1f}%)")
    if tok.get("weight0_turns"):
        table.add_row("turns with weight 0 (not trained)", str(tok["weight0_turns"]))
    if tok.get("tool_rows"):
        table.add_row("rows with tool calls (rendered by the template)", str(tok["tool_rows"]))
    table.add_row("truncated (earlier turns dropped first)", str(tok["truncated"]))
    if tok.get("truncated"):
        table.add_row("  turns dropped / rows cut at the end", f"{tok['turns_dropped']} / {tok['cut_end']}")
    table.add_row("template checks passed", str(tok["template_checked"]))
    ui.console.print(table)
    system = tok.get("system") or {}
    if system:
        ui.log(_system_line(system, tok.get("system_given", 0)))
    if report["rejected"] and report.get("rejects_file"):
        ui.log(f"rejected rows with file:line and reason: {report['rejects_file']}")


def _system_line(system: dict[str, Any], given: int) -> str:
    default = system.get("template_default")
    if system["choice"] == "model":
        if default is None:
            return "system prompt: rows without one get none (the chat template adds no default)"
        return (f"system prompt (data.default_system: model): {given} rows without one get the template's default "
                f"{default.strip()!r}, {system['token_cost']} tokens each; set data.default_system to none or a text "
                "to change it")
    if system["choice"] == "none":
        return f"system prompt (data.default_system: none): {given} rows without one get no system text"
    return (f"system prompt (data.default_system): {given} rows without one get {system['choice']!r}, "
            f"{system['token_cost']} tokens each")
