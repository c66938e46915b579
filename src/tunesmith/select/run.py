"""The selection entry point: run a chain of methods over a pool and write the result.

A chain such as "ifd:50%,rds" filters first (keep the best half by IFD) and then selects the
final budget by RDS+ from what is left; every step's scores are kept for every example it saw.
Every `ifd` step runs after a `loss` quality filter unless `SelectOptions.ifd_filter` is "none"
(see select.quality: IFD alone prefers wrong answers).
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.example import Example
from ..errors import UsageError
from ..io import write_json, write_jsonl
from .budget import parse_budget
from .features import ScoringContext
from .quality import IFD_FILTER_DEFAULT, loss_select, parse_ifd_filter
from .less import LessConfig, less_features, less_score_matrix
from .rds import rds_score_matrix, round_robin_select
from .simple import random_select, stratified_select, stratum_of

METHODS = ("random", "stratified", "rds", "ifd", "less", "kmeans", "zipfit", "loss")
NEEDS_MODEL = {"rds", "ifd", "less", "loss"}
NEEDS_TARGETS = {"rds", "less", "zipfit"}


@dataclass
class SelectOptions:
    """Knobs shared by the methods (each method reads the ones it needs)."""

    seed: int = 0
    stratify_by: str = "task"  # meta key or "source", for stratified and the loss filter's strata
    target_by: str = "task"  # how target examples split into target sets: meta key, "source" or "none"
    clusters: int | None = None  # kmeans k (default: about sqrt(n / 2), at most 200)
    embeddings: str = "model"  # kmeans features: "model" (RDS+ embeddings) or "hashed" (no model)
    max_ifd: float = 1.0
    zipfit_workers: int = 1
    less: LessConfig = field(default_factory=LessConfig)
    ifd_ctx: ScoringContext | None = None  # a smaller scorer for IFD (Superfiltering); default: ctx
    ifd_filter: str = IFD_FILTER_DEFAULT  # quality filter put before every ifd step; "none": plain ifd


@dataclass
class Selection:
    """The chosen pool indices (in selection order) and every score computed on the way."""

    indices: np.ndarray
    scores: dict[str, np.ndarray]  # method -> [n_pool] score (NaN where a step did not see the example)
    steps: list[dict[str, Any]]
    notes: dict[str, Any] = field(default_factory=dict)  # what the report must say (the ifd pairing)


def parse_chain(spec: str, budget: str) -> list[tuple[str, str]]:
    """"ifd:50%,rds" with budget "10%" -> [("ifd", "50%"), ("rds", "10%")]; the last step takes
    the overall budget (of the whole pool), earlier ones say what share of their input to keep."""
    steps = []
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise UsageError("--method is empty; give one of " + ", ".join(METHODS))
    for i, part in enumerate(parts):
        name, _, keep = part.partition(":")
        if name not in METHODS:
            raise UsageError(f"unknown selection method '{name}'; choose from {', '.join(METHODS)}")
        last = i == len(parts) - 1
        if not last and not keep:
            raise UsageError(f"filter step '{name}' needs a share to keep, e.g. '{name}:50%,...'")
        if last and keep:
            raise UsageError(f"the last step '{part}' takes --budget; write '{name}' and --budget {keep}")
        steps.append((name, budget if last else keep))
    return steps


def target_sets(targets: Sequence[Example], by: str) -> list[list[Example]]:
    """Split target examples into sets by a meta key or source ("none": one set)."""
    if by == "none":
        return [list(targets)]
    groups: dict[str, list[Example]] = defaultdict(list)
    for t in targets:
        groups[stratum_of(t, by)].append(t)
    return [groups[k] for k in sorted(groups)]


def _set_columns(targets: Sequence[Example], sets: list[list[Example]]) -> list[list[int]]:
    """For each target set, the positions of its examples in `targets`."""
    order = {id(t): i for i, t in enumerate(targets)}
    return [[order[id(t)] for t in s] for s in sets]


def _default_k(n: int) -> int:
    return max(2, min(200, int(math.sqrt(n / 2))))


def _step(method: str, pool: list[Example], budget: int, targets: Sequence[Example], opts: SelectOptions,
          ctx: ScoringContext | None, paired: bool = False) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """One method over `pool` -> (local indices, local scores or None, report fields). A `paired`
    step is the quality filter put in front of ifd: it scores with ifd's scorer."""
    info: dict[str, Any] = {}
    if method == "random":
        return random_select(len(pool), budget, opts.seed), None, info
    if method == "stratified":
        strata = [stratum_of(e, opts.stratify_by) for e in pool]
        info["strata"] = dict(Counter(strata))
        return stratified_select(strata, budget, opts.seed), None, info
    if method in NEEDS_TARGETS and not targets:
        raise UsageError(f"method '{method}' needs target examples: give --target FILE or --target-tasks N")
    scorer = opts.ifd_ctx if (method == "ifd" or paired) and opts.ifd_ctx is not None else ctx
    if method in NEEDS_MODEL and (scorer is None or scorer.model is None):
        raise UsageError(f"method '{method}' needs a model")
    if method == "loss":
        from .embed import forward_features

        loss = forward_features(scorer, pool)[:, -2]  # mean response loss given the prompt
        strata = [stratum_of(e, opts.stratify_by) for e in pool]
        info.update(by=opts.stratify_by, strata=len(set(strata)))
        return loss_select(loss, strata, budget), loss, info
    sets = target_sets(targets, opts.target_by)
    info["target_sets"] = len(sets)
    if method == "rds":
        from .embed import embed_examples

        emb = embed_examples(ctx, pool)
        matrix = rds_score_matrix(emb, [embed_examples(ctx, s) for s in sets])
        return round_robin_select(matrix, budget), matrix.max(axis=0), info
    if method == "less":
        feats, tgt = less_features(ctx, pool, targets, opts.less)
        matrix = less_score_matrix(feats, [tgt[cols] for cols in _set_columns(targets, sets)])
        info["dim"] = opts.less.dim
        return round_robin_select(matrix, budget), matrix.max(axis=0), info
    if method == "ifd":
        from .ifd import ifd_scores, ifd_select, response_losses

        scores = ifd_scores(response_losses(scorer, pool))
        picked, excluded = ifd_select(scores, budget, opts.max_ifd)
        info["ifd_at_or_above_max"] = excluded
        return picked, scores, info
    if method == "kmeans":
        from .kmeans import cluster_proportional_select, kmeans

        if opts.embeddings == "hashed":
            from .hashed import cached_hashed_embeddings

            emb = cached_hashed_embeddings(ctx or ScoringContext(), pool)
        else:
            if ctx is None or ctx.model is None:
                raise UsageError("kmeans on model embeddings needs a model (or use --embeddings hashed)")
            from .embed import embed_examples

            emb = embed_examples(ctx, pool)
        k = opts.clusters or _default_k(len(pool))
        _, labels, dists = kmeans(emb, k, seed=opts.seed)
        info.update(clusters=k, embeddings=opts.embeddings)
        return cluster_proportional_select(labels, budget, opts.seed), -dists, info
    if method == "zipfit":
        from .zipfit import zipfit_alignments

        align = zipfit_alignments(ctx or ScoringContext(), pool, targets, workers=opts.zipfit_workers)  # [n, m]
        matrix = np.stack([align[:, cols].mean(axis=1) for cols in _set_columns(targets, sets)])
        return round_robin_select(matrix, budget), matrix.max(axis=0), info
    raise UsageError(f"unknown method {method}")  # pragma: no cover - parse_chain checks names


def pair_ifd(chain: Sequence[tuple[str, str]], ifd_filter: str | None) -> list[tuple[str, str, bool]]:
    """The chain with the quality filter put in front of every ifd step that lacks one:
    [("ifd", "10%")] -> [("loss", "70%", True), ("ifd", "10%", False)]; unchanged when the filter
    is "none" or the step before ifd already is that filter."""
    spec = parse_ifd_filter(ifd_filter)
    out: list[tuple[str, str, bool]] = []
    for method, budget in chain:
        if method == "ifd" and spec is not None and not (out and out[-1][0] == spec[0]):
            out.append((spec[0], spec[1], True))
        out.append((method, budget, False))
    return out


def _ifd_note(expanded: list[tuple[str, str, bool]], steps: list[dict[str, Any]], ifd_filter: str | None
              ) -> dict[str, Any]:
    """What the report says about the ifd pairing (empty when the chain has no ifd step)."""
    if not any(m == "ifd" for m, _, _ in expanded):
        return {}
    paired = [s for s, (_, _, p) in zip(steps, expanded) if p]
    if paired:
        return {"filter": ifd_filter, "paired": True, "removed": sum(s["input"] - s["kept"] for s in paired),
                "why": "ifd prefers answers their prompt does not explain, wrong ones included, so the rows "
                       "with the highest response loss (within each stratum) are dropped before ifd ranks",
                "turn_off": "ifd_filter: none (flag --ifd-filter none)"}
    if any(m == "ifd" and i and expanded[i - 1][0] == "loss" for i, (m, _, _) in enumerate(expanded)):
        return {"filter": "loss (from your chain)", "paired": True}
    return {"filter": "none", "paired": False,
            "warning": "ifd ranked rows with no quality filter in front: it prefers answers their prompt does "
                       "not explain, wrong ones included (65% of its pick was corrupted on a 20%-corrupted "
                       f"pool). Set ifd_filter: {IFD_FILTER_DEFAULT} to filter first."}


def select(pool: Sequence[Example], chain: Sequence[tuple[str, str]], targets: Sequence[Example] = (),
           opts: SelectOptions | None = None, ctx: ScoringContext | None = None) -> Selection:
    """Run the chain over the pool (with the ifd pairing, see `pair_ifd`). Budgets of filter steps
    are shares of their input; the last budget is of the whole pool (and can be no more than what
    the filters left; a paired filter never keeps fewer than the step after it takes)."""
    opts = opts or SelectOptions()
    expanded = pair_ifd(chain, opts.ifd_filter)
    n = len(pool)
    current = np.arange(n)
    scores: dict[str, np.ndarray] = {}
    steps: list[dict[str, Any]] = []
    for i, (method, budget_spec, paired) in enumerate(expanded):
        last = i == len(expanded) - 1
        budget = parse_budget(budget_spec, n if last else len(current))
        if paired and i + 1 == len(expanded) - 1:  # never starve the final ifd step of its budget
            budget = max(budget, parse_budget(expanded[i + 1][1], n))
        budget = min(budget, len(current))
        t0 = time.perf_counter()
        local, local_scores, info = _step(method, [pool[j] for j in current], budget, targets, opts, ctx, paired)
        if local_scores is not None:
            full = np.full(n, np.nan, dtype=np.float32)
            full[current] = local_scores
            scores[method] = full
        if paired:
            info["paired_with"] = "ifd"
        steps.append({"method": method, "input": int(len(current)), "kept": int(len(local)),
                      "seconds": round(time.perf_counter() - t0, 2), **info})
        current = current[np.asarray(local, dtype=np.int64)]
    notes = {"ifd_quality_filter": note} if (note := _ifd_note(expanded, steps, opts.ifd_filter)) else {}
    return Selection(indices=current, scores=scores, steps=steps, notes=notes)


def coverage(pool: Sequence[Example], indices: np.ndarray, key: str = "task") -> dict[str, int]:
    """How many selected examples each stratum got."""
    return dict(sorted(Counter(stratum_of(pool[i], key) for i in indices).items()))


def write_selection(out_dir: str | Path, pool: Sequence[Example], sel: Selection, extra: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """selected.jsonl (messages format), scores.jsonl (one row per pool example) and
    selection_report.json in out_dir, each written atomically; returns the report."""
    out = Path(out_dir)
    rank = {int(i): r for r, i in enumerate(sel.indices)}
    write_jsonl(out / "selected.jsonl", (pool[int(i)].to_row() for i in sel.indices))
    write_jsonl(out / "scores.jsonl", (_score_row(i, ex, rank, sel) for i, ex in enumerate(pool)))
    report = {"pool": len(pool), "selected": int(len(sel.indices)), "steps": sel.steps,
              "coverage": coverage(pool, sel.indices), **sel.notes, **(extra or {})}
    write_json(out / "selection_report.json", report)
    return report


def _score_row(i: int, ex: Example, rank: dict[int, int], sel: Selection) -> dict[str, Any]:
    """One pool example's line of scores.jsonl: where it came from, whether chosen, every score."""
    row = {"index": i, "source": ex.source, "line": ex.line, "origin": ex.origin, "selected": i in rank,
           "rank": rank.get(i)}
    for method, values in sel.scores.items():
        v = float(values[i])
        row[method] = None if math.isnan(v) else round(v, 6)
    return row
