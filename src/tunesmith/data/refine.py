"""Curation and selection inside a recipe run: dedup, decontaminate, then select, between
loading the examples and tokenizing them. Every removed row lands in a file with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import ui
from ..recipe import Recipe
from .example import Example


def refine(examples: list[Example], recipe: Recipe, run_dir: Path | None) -> tuple[list[Example], dict[str, Any]]:
    """The examples to train on and a report: {"dedup": ..., "decontaminate": ..., "select": ...}."""
    cfg = recipe.data
    report: dict[str, Any] = {}
    if cfg.curate.dedup:
        from ..curate import DedupConfig, dedup, write_curated

        res = dedup(examples, DedupConfig(near=cfg.curate.near, threshold=cfg.curate.near_threshold),
                    total=len(examples), progress=True)
        report["dedup"] = res.summary()
        if run_dir is not None:
            write_curated(examples, res.keep, res.removed_reasons(), run_dir / "curation" / "dedup", res.summary())
        examples = [e for e, k in zip(examples, res.keep) if k]
        ui.log(f"dedup: removed {res.n_exact_removed} exact and {res.n_near_removed} near duplicates")
    if cfg.curate.decontaminate:
        from ..curate import DecontamConfig, decontaminate, write_curated

        tasks = cfg.tasks
        dc = DecontamConfig(suites=tuple(cfg.curate.decontaminate_suites), threshold=cfg.curate.decontaminate_threshold,
                            tasks_n=tasks.n_eval if tasks else 260, seed=tasks.seed if tasks else 0)
        res = decontaminate(examples, dc, total=len(examples), progress=True)
        report["decontaminate"] = res.summary()
        if run_dir is not None:
            write_curated(examples, res.keep, res.removed_reasons(), run_dir / "curation" / "decontaminate",
                          res.summary())
        examples = [e for e, k in zip(examples, res.keep) if k]
        ui.log(f"decontaminate: removed {len(res.hits)} rows overlapping eval prompts")
    if cfg.select is not None:
        examples, report["select"] = _select(examples, recipe, run_dir)
    return examples, report


def _select(examples: list[Example], recipe: Recipe, run_dir: Path | None) -> tuple[list[Example], dict[str, Any]]:
    from ..models import load_model, load_tokenizer, local_model_dir
    from ..select.cli import TARGET_SEED_OFFSET
    from ..select.features import ScoringContext, model_fingerprint
    from ..select.run import NEEDS_MODEL, SelectOptions, parse_chain, select, write_selection
    from .load import load_examples
    from .tasks import TASK_TYPES, generate_examples

    sc = recipe.data.select
    chain = parse_chain(sc.method, sc.budget)
    targets: list[Example] = []
    for spec in sc.target:
        targets += load_examples(spec, recipe.data.format, "fail").examples
    if sc.target_tasks:
        targets += generate_examples(sc.target_tasks * len(TASK_TYPES), seed=sc.seed + TARGET_SEED_OFFSET,
                                     source="target-tasks")
    ctx = ScoringContext(max_seq_len=recipe.data.max_seq_len)
    if any(m in NEEDS_MODEL or m == "kmeans" for m, _ in chain):
        name = recipe.model.name
        ctx.tokenizer = load_tokenizer(name, log=ui.log)
        ctx.model = load_model(name, log=ui.log)
        ctx.fingerprint = model_fingerprint(local_model_dir(name, log=ui.log))
    sel = select(examples, chain, targets, SelectOptions(seed=sc.seed, stratify_by=sc.stratify_by,
                                                         target_by=sc.target_by), ctx)
    info: dict[str, Any] = {"method": sc.method, "budget": sc.budget, "pool": len(examples),
                            "selected": int(len(sel.indices)), "steps": sel.steps}
    if run_dir is not None:
        info = write_selection(run_dir / "selection", examples, sel, {"method": sc.method, "budget": sc.budget})
    ui.log(f"select: {len(sel.indices)} of {len(examples)} examples by {sc.method}")
    keep = np.sort(sel.indices)
    return [examples[int(i)] for i in keep], info
