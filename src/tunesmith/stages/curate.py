"""The curate stage: exact and near-duplicate removal, and decontamination against eval prompts.

In a recipe (`curate: {dedup: ..., decontaminate: ...}`) it runs between reading the data and
selecting from it, and lists every removed row with its reason under RUN/curation/. As verbs,
`tunesmith data dedup DATA --out DIR` and `tunesmith data decontaminate DATA --out DIR` write
kept.jsonl, removed.jsonl and report.json. Flags and recipe keys are the same fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .. import ui
from ..config import Section, split_csv
from ..curate import DecontamConfig, DedupConfig, decontaminate, dedup, write_curated
from ..data.example import Example
from ..data.load import load_examples
from ..data.tasks import HELD_OUT_TASKS
from ..evalsets.prompts import DEFAULT_SUITES, parse_suites
from .outputs import prepare_out

POOL_WRITES = ("kept.jsonl", "removed.jsonl", "report.json", "rejects.jsonl")  # what the pool verbs write


class DedupOptions(Section):
    """Exact duplicates by a hash of the normalised text, then near duplicates by MinHash LSH,
    every candidate pair verified with the true Jaccard."""

    near: bool = Field(True, description="also remove near duplicates (MinHash LSH); off: exact pass only")
    shingle: Literal["word", "char"] = Field("word", description="word or character n-grams of the content words")
    ngram: int = Field(3, ge=1, description="shingle size (about 5 for char)")
    num_perm: int = Field(128, ge=2, description="MinHash permutations")
    threshold: float = Field(0.7, gt=0, le=1, description="Jaccard similarity of near duplicates")
    bands: int | None = Field(None, ge=1, description="LSH bands (with rows; default: datasketch's optimum)")
    rows: int | None = Field(None, ge=1, description="LSH rows per band")
    keep_stop_words: bool = Field(False, description="shingle stop words too (see curate.text)")

    def library(self) -> DedupConfig:
        return DedupConfig(near=self.near, shingle=self.shingle, ngram=self.ngram, num_perm=self.num_perm,
                           threshold=self.threshold, bands=self.bands, rows=self.rows,
                           stop_words=not self.keep_stop_words).validate()


class DecontamOptions(Section):
    """Drop rows whose user turns share word n-grams with an eval prompt above a threshold."""

    suites: list[str] = Field(list(DEFAULT_SUITES), description="eval suites to compare with: tasks, robustness, "
                                                                "ifbench, ifeval, humaneval (none: only eval_files)")
    eval_files: list[str] = Field([], description="your own eval sets (files, folders or globs of conversations): "
                                                  "their user turns are compared with too, one suite per file "
                                                  "(file:NAME)")
    ngram: int = Field(8, ge=1, description="word n-gram size")
    threshold: float = Field(0.8, gt=0, le=1, description="overlap fraction at which a row is dropped")
    max_df: int = Field(1, ge=0, description="n-grams held by more eval prompts of a suite than this are "
                                             "boilerplate (0: count all)")
    tasks_n: int | None = Field(None, ge=0, description="held-out generated task items (default: the recipe's "
                                                        f"data.tasks.n_eval, else {HELD_OUT_TASKS})")
    ifeval_n: int = Field(100, ge=0, description="generated IFEval-style items (ifeval suite)")
    seed: int | None = Field(None, description="seed of the generated eval items (default: data.tasks.seed, else 0)")

    @field_validator("suites", mode="before")
    @classmethod
    def _suites(cls, value: Any) -> Any:
        return list(parse_suites(split_csv(value), allow_empty=True))

    @field_validator("eval_files", mode="before")
    @classmethod
    def _eval_files(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def library(self, held_out: tuple[int, int] = (HELD_OUT_TASKS, 0), eval_files: list[str] | tuple[str, ...] = ()
                ) -> DecontamConfig:
        """The library config; `eval_files` adds eval sets to this section's own (a recipe's data.eval)."""
        tasks_n = held_out[0] if self.tasks_n is None else self.tasks_n
        seed = held_out[1] if self.seed is None else self.seed
        files = tuple(dict.fromkeys([*self.eval_files, *eval_files]))
        return DecontamConfig(suites=tuple(self.suites), ngram=self.ngram, threshold=self.threshold,
                              max_df=self.max_df or None, tasks_n=tasks_n, seed=seed,
                              ifeval_n=self.ifeval_n, eval_files=files).validate()


class CurateConfig(Section):
    """The recipe's `curate:` section; `dedup: true` or `decontaminate: true` take the defaults."""

    dedup: DedupOptions | None = Field(None, description="remove duplicates (true: defaults)")
    decontaminate: DecontamOptions | None = Field(None, description="remove rows overlapping eval prompts "
                                                                    "(true: defaults)")

    @model_validator(mode="before")
    @classmethod
    def _true_means_defaults(cls, values: Any) -> Any:
        if isinstance(values, dict):
            values = {k: ({} if v is True else None if v is False else v) for k, v in values.items()}
        return values

    @property
    def active(self) -> bool:
        return self.dedup is not None or self.decontaminate is not None


def curate(examples: list[Example], cfg: CurateConfig, run_dir: Path | None, held_out: tuple[int, int],
           eval_files: list[str] | tuple[str, ...] = ()) -> tuple[list[Example], dict[str, Any]]:
    """Dedup, then decontaminate (against the suites, the decontaminate eval_files and the recipe's
    own held-out files `eval_files`); returns the kept examples and {"dedup": ..., "decontaminate": ...}."""
    report: dict[str, Any] = {}
    if cfg.dedup is not None:
        res = dedup(examples, cfg.dedup.library(), total=len(examples), progress=True)
        report["dedup"] = res.summary()
        if run_dir is not None:
            write_curated(examples, res.keep, res.removed_reasons(), run_dir / "curation" / "dedup", res.summary())
        examples = [e for e, k in zip(examples, res.keep) if k]
        ui.log(f"dedup: removed {res.n_exact_removed} exact and {res.n_near_removed} near duplicates")
    if cfg.decontaminate is not None:
        res = decontaminate(examples, cfg.decontaminate.library(held_out, eval_files=eval_files), total=len(examples),
                            progress=True)
        report["decontaminate"] = res.summary()
        if run_dir is not None:
            write_curated(examples, res.keep, res.removed_reasons(), run_dir / "curation" / "decontaminate",
                          res.summary())
        examples = [e for e, k in zip(examples, res.keep) if k]
        ui.log(f"decontaminate: removed {len(res.hits)} rows overlapping eval prompts")
    return examples, report


class _PoolVerb(Section):
    data: str = Field(..., description="file, folder or glob (JSONL/JSON/Parquet/CSV; alpaca, sharegpt or messages)")
    out: str = Field(..., description="directory for kept.jsonl, removed.jsonl and report.json (new or empty, "
                                      "else --overwrite; not inside DATA)")
    on_error: Literal["fail", "skip"] = Field("fail", description="unreadable rows: stop or skip")


class DedupVerbConfig(DedupOptions, _PoolVerb):
    """`tunesmith data dedup DATA --out DIR`."""


class DecontamVerbConfig(DecontamOptions, _PoolVerb):
    """`tunesmith data decontaminate DATA --out DIR`."""


def _read_pool(cfg: _PoolVerb, overwrite: bool) -> tuple[Path, list[Example], int]:
    """The checked output folder, the pool's usable rows and how many were rejected (listed in
    out/rejects.jsonl under skip). The folder is checked before anything is read."""
    inputs = [cfg.data, *getattr(cfg, "eval_files", ())]  # decontaminate also reads the user's eval sets
    out = prepare_out(cfg.out, overwrite=overwrite, inputs=inputs, writes=POOL_WRITES, marker="report.json")
    rejects = out / "rejects.jsonl" if cfg.on_error == "skip" else None
    loaded = load_examples(cfg.data, on_error=cfg.on_error, rejects_path=rejects, show_progress=True)
    return out, loaded.examples, len(loaded.rejects)


def run_dedup(cfg: DedupVerbConfig, overwrite: bool = False) -> int:
    """The `data dedup` verb (overwrite: replace the outputs of an earlier run in --out)."""
    out, examples, n_rejected = _read_pool(cfg, overwrite)
    res = dedup(examples, cfg.library(), total=len(examples), progress=True)
    report = {**res.summary(), "data": cfg.data, "rejected_rows": n_rejected,
              "clusters": [c.to_json() for c in res.exact_clusters + res.near_clusters]}
    paths = write_curated(examples, res.keep, res.removed_reasons(), out, report)
    ui.log(f"dedup: {res.total} rows -> {int(res.keep.sum())} kept; removed {res.n_exact_removed} exact "
           f"({len(res.exact_clusters)} clusters) and {res.n_near_removed} near duplicates "
           f"({len(res.near_clusters)} clusters)")
    ui.log(f"kept rows: {paths['kept']}  removed rows: {paths['removed']}  report: {paths['report']}")
    return 0


def run_decontaminate(cfg: DecontamVerbConfig, overwrite: bool = False) -> int:
    """The `data decontaminate` verb (overwrite: replace the outputs of an earlier run in --out)."""
    out, examples, n_rejected = _read_pool(cfg, overwrite)
    res = decontaminate(examples, cfg.library(), total=len(examples), progress=True)
    report = {**res.summary(), "data": cfg.data, "rejected_rows": n_rejected, "hits": [h.to_json() for h in res.hits]}
    paths = write_curated(examples, res.keep, res.removed_reasons(), out, report)
    per_suite = ", ".join(f"{k}: {v}" for k, v in res.summary()["removed_by_suite"].items()) or "none"
    ui.log(f"decontaminate: {res.total} rows -> {int(res.keep.sum())} kept; removed {len(res.hits)} "
           f"overlapping eval prompts ({per_suite})")
    ui.log(f"kept rows: {paths['kept']}  removed rows: {paths['removed']}  report: {paths['report']}")
    return 0
