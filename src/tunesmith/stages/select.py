"""The select stage: choose the examples worth training on, by one method or a chain of them.

In a recipe (`select: {method, budget, ...}`) it runs on the curated pool before tokenizing and
lists every pool example with its scores under RUN/selection/. As a verb, `tunesmith data select DATA
--method M --budget N --out DIR`, alone or under torchrun (each rank scores a share; rank 0 merges
and writes). Flags and recipe keys are the same fields; both paths share `targets` and `scorers`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from .. import ui
from ..config import Section
from ..data.example import Example
from ..data.load import load_examples
from ..data.tasks import TARGET_SEED_OFFSET, TASK_TYPES, generate_examples
from ..errors import UsageError
from ..models import ModelConfig, load_model_and_tokenizer, local_model_dir
from ..select.features import ScoringContext, model_fingerprint
from ..select.less import LessConfig
from ..select.quality import IFD_FILTER_DEFAULT, parse_ifd_filter
from ..select.run import METHODS, NEEDS_MODEL, Selection, SelectOptions, parse_chain, select, write_selection
from ..train.distributed import DistInfo, init_distributed
from .outputs import prepare_out

SELECT_WRITES = ("selected.jsonl", "scores.jsonl", "selection_report.json")  # what write_selection writes


class LessOptions(Section):
    """LESS gradient features."""

    dim: int = Field(4096, ge=1, description="projected gradient dimensions")
    layers: int = Field(8, ge=1, description="LoRA on this many top layers")


class SelectConfig(Section):
    """Which examples of the pool to train on; the recipe's `select:` section."""

    method: str = Field(..., description=f"{', '.join(METHODS)}, or a chain 'm1:SHARE,m2' (filter, then select). "
                                         "ifd runs after a loss filter unless --ifd-filter none (see ifd_filter)")
    budget: str = Field(..., description="examples to keep: a count (400) or a share of the pool (10%)")
    target: list[str] = Field([], description="target example files (rds, less, zipfit); one target set per "
                                              "file with target_by: source")
    target_tasks: int = Field(0, ge=0, description="N generated task items per type as targets (a seed disjoint "
                                                   "from eval items)")
    target_by: str = Field("task", description="split targets into sets by meta key, 'source' or 'none'")
    stratify_by: str = Field("task", description="stratified, and the groups the loss filter ranks within: meta "
                                                 "key or 'source' (rows without the key form one group)")
    seed: int = 0
    clusters: int | None = Field(None, ge=2, description="kmeans: k (default about sqrt(n/2))")
    embeddings: Literal["model", "hashed"] = Field("model", description="kmeans features: the model's RDS+ "
                                                                        "embeddings or hashed n-grams (no model)")
    max_ifd: float = Field(1.0, gt=0, description="ifd: drop examples at or above this IFD")
    ifd_filter: str = Field(IFD_FILTER_DEFAULT, description="ifd: quality filter run before ifd ranks. Default "
                            f"'{IFD_FILTER_DEFAULT}': keep the 70% of rows with the lowest response loss within "
                            "each stratify_by group, because ifd alone prefers wrong answers (they are "
                            "'difficult'; 65% of its pick was corrupted on a 20%-corrupted pool). 'none' turns "
                            "the pairing off (plain ifd); the selection report says which ran")
    ifd_model: str | None = Field(None, description="ifd: score with this (smaller) model instead (Superfiltering)")
    workers: int = Field(1, ge=1, description="zipfit: compression worker processes")
    batch_size: int = Field(16, ge=1, description="examples per forward/backward when scoring")
    cache: str | None = Field(None, description="feature store directory (default: ~/.cache/tunesmith/select)")
    less: LessOptions = LessOptions()


class SelectVerbConfig(SelectConfig):
    """`tunesmith data select DATA --method M --budget N --out DIR`."""

    data: str = Field(..., description="pool: file, folder or glob (JSONL/JSON/Parquet/CSV)")
    out: str = Field(..., description="output directory")
    model: ModelConfig = Field(ModelConfig(), description="model for rds/ifd/less/kmeans features")
    max_seq_len: int = Field(1024, ge=8, description="tokens per example when scoring")
    format: Literal["auto", "alpaca", "sharegpt", "messages"] = "auto"
    on_error: Literal["fail", "skip"] = Field("fail", description="unreadable rows: stop or skip")


def targets(cfg: SelectConfig, fmt: str = "auto", on_error: str = "fail") -> list[Example]:
    """Target examples: the target files, then generated task items."""
    found: list[Example] = []
    for spec in cfg.target:
        found += load_examples(spec, fmt, on_error).examples
    if cfg.target_tasks:
        found += generate_examples(cfg.target_tasks * len(TASK_TYPES), seed=cfg.seed + TARGET_SEED_OFFSET,
                                   source="target-tasks")
    return found


def _scoring_context(model_cfg: ModelConfig, cfg: SelectConfig, max_seq_len: int, info: DistInfo,
                     load: bool) -> ScoringContext:
    ctx = ScoringContext(batch_size=cfg.batch_size, max_seq_len=max_seq_len, dist=info, show_progress=info.is_main)
    if cfg.cache:
        ctx.cache_dir = Path(cfg.cache)
    if load:
        log = ui.log if info.is_main else ui.quiet
        ctx.model, ctx.tokenizer = load_model_and_tokenizer(model_cfg, log=log)
        ctx.fingerprint = model_fingerprint(local_model_dir(model_cfg.name, log=log))
    return ctx


def scorers(cfg: SelectConfig, model_cfg: ModelConfig, max_seq_len: int, info: DistInfo
            ) -> tuple[ScoringContext, SelectOptions]:
    """The scoring context (the model loaded only when a method needs it) and the method options."""
    chain = parse_chain(cfg.method, cfg.budget)
    parse_ifd_filter(cfg.ifd_filter)  # a bad value ends here, before any model loads
    needs_model = any((m in NEEDS_MODEL and not (m == "ifd" and cfg.ifd_model))
                      or (m == "kmeans" and cfg.embeddings == "model") for m, _ in chain)
    ctx = _scoring_context(model_cfg, cfg, max_seq_len, info, needs_model)
    opts = SelectOptions(seed=cfg.seed, stratify_by=cfg.stratify_by, target_by=cfg.target_by, clusters=cfg.clusters,
                         embeddings=cfg.embeddings, max_ifd=cfg.max_ifd, ifd_filter=cfg.ifd_filter,
                         zipfit_workers=cfg.workers,
                         less=LessConfig(dim=cfg.less.dim, layers=cfg.less.layers, seed=cfg.seed))
    if cfg.ifd_model:
        ifd_model = model_cfg.model_copy(update={"name": cfg.ifd_model})
        opts.ifd_ctx = _scoring_context(ifd_model, cfg, max_seq_len, info, True)
    return ctx, opts


def choose(pool: list[Example], cfg: SelectConfig, model_cfg: ModelConfig, max_seq_len: int, fmt: str = "auto",
           on_error: str = "fail", info: DistInfo | None = None) -> tuple[Selection, int]:
    """Run the configured chain over the pool; returns the selection and the number of targets."""
    info = info or init_distributed()
    chain = parse_chain(cfg.method, cfg.budget)
    ctx, opts = scorers(cfg, model_cfg, max_seq_len, info)
    found = targets(cfg, fmt, on_error)
    return select(pool, chain, found, opts, ctx), len(found)


def select_examples(pool: list[Example], cfg: SelectConfig, model_cfg: ModelConfig, max_seq_len: int, fmt: str,
                    run_dir: Path | None) -> tuple[list[Example], dict[str, Any]]:
    """The recipe step: the selected examples in pool order, and the selection report."""
    sel, _ = choose(pool, cfg, model_cfg, max_seq_len, fmt)
    info: dict[str, Any] = {"method": cfg.method, "budget": cfg.budget, "pool": len(pool),
                            "selected": int(len(sel.indices)), "steps": sel.steps, **sel.notes}
    if run_dir is not None:
        info = write_selection(run_dir / "selection", pool, sel, {"method": cfg.method, "budget": cfg.budget})
    ui.log(f"select: {len(sel.indices)} of {len(pool)} examples by {cfg.method}")
    _log_ifd_note(sel)
    return [pool[int(i)] for i in np.sort(sel.indices)], info


def run_select(cfg: SelectVerbConfig, overwrite: bool = False) -> int:
    """The `select` verb (overwrite: replace the outputs of an earlier selection in --out)."""
    t0 = time.perf_counter()
    info = init_distributed()
    out = prepare_out(cfg.out, overwrite=overwrite, inputs=[cfg.data, *cfg.target], writes=SELECT_WRITES,
                      marker="selection_report.json") if info.is_main else Path(cfg.out)
    pool = load_examples(cfg.data, cfg.format, on_error=cfg.on_error, show_progress=info.is_main).examples
    if not pool:
        raise UsageError(f"{cfg.data}: no usable examples in the pool")
    sel, n_targets = choose(pool, cfg, cfg.model, cfg.max_seq_len, cfg.format, cfg.on_error, info)
    if not info.is_main:
        return 0
    report = write_selection(out, pool, sel, {"method": cfg.method, "budget": cfg.budget,
                                              "targets": n_targets,
                                              "seconds": round(time.perf_counter() - t0, 1)})
    ui.log(f"selected {report['selected']} of {report['pool']} by {cfg.method} -> {out}/selected.jsonl "
           f"(scores: scores.jsonl, report: selection_report.json)")
    for step in report["steps"]:
        paired = " (quality filter paired with ifd)" if step.get("paired_with") else ""
        ui.log(f"  {step['method']}: {step['input']} -> {step['kept']} in {step['seconds']} s{paired}")
    _log_ifd_note(sel)
    return 0


def _log_ifd_note(sel: Selection) -> None:
    """Say on the console what the report says about ifd's quality filter."""
    note = sel.notes.get("ifd_quality_filter")
    if not note:
        return
    if note.get("paired"):
        removed = f": {note['removed']} rows with the highest response loss dropped" if "removed" in note else ""
        ui.log(f"  ifd ran after the quality filter {note['filter']}{removed} (turn off: --ifd-filter none)")
    else:
        ui.log(f"  warning: {note['warning']}")
