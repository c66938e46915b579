"""CLI verb `tunesmith select`: pick a subset of a pool by one method or a chain of them.

Runs as one process or under torchrun: every rank scores its share of the examples that the
feature store lacks (each into its own shard file), rank 0 merges the shards, selects and writes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import UsageError
from .run import METHODS, NEEDS_MODEL

TARGET_SEED_OFFSET = 2_000_003  # generated target items: disjoint seed from train and eval items


def add_select_parser(sub) -> None:
    """Register `tunesmith select`."""
    s = sub.add_parser(
        "select", help="choose the examples worth training on (random, stratified, rds, ifd, less, kmeans, zipfit)",
        description="Methods: " + ", ".join(METHODS) + ". Chain them to filter then select: "
                    "--method ifd:50%%,rds keeps the best half by IFD, then picks --budget by RDS+. "
                    "Writes selected.jsonl, scores.jsonl (every pool example, every score) and selection_report.json. "
                    "Model features are cached by content hash; an interrupted run resumes.")
    s.add_argument("data", help="pool: file, folder or glob (JSONL/JSON/Parquet/CSV; alpaca, sharegpt or messages)")
    s.add_argument("--method", required=True, help="a method, or a chain 'm1:SHARE,m2' (filter, then select)")
    s.add_argument("--budget", required=True, help="examples to keep: a count (400) or a share of the pool (10%%)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--target", action="append", default=[],
                   help="target examples (rds, less, zipfit); repeatable, one target set per file with --target-by source")
    s.add_argument("--target-tasks", type=int, default=0,
                   help="use N generated task items per task type as targets (a seed disjoint from eval items)")
    s.add_argument("--target-by", default="task", help="split targets into sets by meta key, 'source' or 'none'")
    s.add_argument("--model", default="smollm2-135m-instruct", help="model for rds/ifd/less/kmeans features")
    s.add_argument("--ifd-model", help="ifd: score with this (smaller) model instead of --model (Superfiltering)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--stratify-by", default="task", help="stratified: meta key or 'source'")
    s.add_argument("--clusters", type=int, help="kmeans: k (default about sqrt(n/2))")
    s.add_argument("--embeddings", choices=("model", "hashed"), default="model",
                   help="kmeans features: the model's RDS+ embeddings or hashed n-grams (no model)")
    s.add_argument("--max-ifd", type=float, default=1.0, help="ifd: drop examples at or above this IFD")
    s.add_argument("--workers", type=int, default=1, help="zipfit: compression worker processes")
    s.add_argument("--batch-size", type=int, default=16, help="examples per forward/backward when scoring")
    s.add_argument("--max-seq-len", type=int, default=1024)
    s.add_argument("--cache", help="feature store directory (default: ~/.cache/tunesmith/select)")
    s.add_argument("--less-dim", type=int, default=4096, help="less: projected gradient dimensions")
    s.add_argument("--less-layers", type=int, default=8, help="less: LoRA on this many top layers")
    s.add_argument("--on-error", choices=("fail", "skip"), default="fail", help="unreadable rows: stop or skip")
    s.set_defaults(fn=cmd_select)


def _targets(args) -> list:
    from ..data.load import load_examples
    from ..data.tasks import TASK_TYPES, generate_examples

    targets = []
    for spec in args.target:
        targets += load_examples(spec, on_error=args.on_error).examples
    if args.target_tasks:
        targets += generate_examples(args.target_tasks * len(TASK_TYPES), seed=args.seed + TARGET_SEED_OFFSET,
                                     source="target-tasks")
    return targets


def cmd_select(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    from .. import ui
    from ..data.load import load_examples
    from ..models import load_model, load_tokenizer, local_model_dir
    from ..train.distributed import init_distributed
    from .features import ScoringContext, model_fingerprint
    from .less import LessConfig
    from .run import SelectOptions, parse_chain, select, write_selection

    chain = parse_chain(args.method, args.budget)
    t0 = time.perf_counter()
    info = init_distributed()
    pool = load_examples(args.data, on_error=args.on_error, show_progress=info.is_main).examples
    if not pool:
        raise UsageError(f"{args.data}: no usable examples in the pool")
    targets = _targets(args)
    needs_model = any((m in NEEDS_MODEL and not (m == "ifd" and args.ifd_model))
                      or (m == "kmeans" and args.embeddings == "model") for m, _ in chain)
    ctx = ScoringContext(batch_size=args.batch_size, max_seq_len=args.max_seq_len, dist=info,
                         show_progress=info.is_main)
    if args.cache:
        ctx.cache_dir = Path(args.cache)
    if needs_model:
        log = ui.log if info.is_main else (lambda *a: None)
        ctx.tokenizer = load_tokenizer(args.model, log=log)
        ctx.model = load_model(args.model, log=log)
        ctx.fingerprint = model_fingerprint(local_model_dir(args.model, log=log))
    opts = SelectOptions(seed=args.seed, stratify_by=args.stratify_by, target_by=args.target_by,
                         clusters=args.clusters, embeddings=args.embeddings, max_ifd=args.max_ifd,
                         zipfit_workers=args.workers,
                         less=LessConfig(dim=args.less_dim, layers=args.less_layers, seed=args.seed))
    if args.ifd_model:
        log = ui.log if info.is_main else (lambda *a: None)
        opts.ifd_ctx = ScoringContext(load_model(args.ifd_model, log=log), load_tokenizer(args.ifd_model, log=log),
                                      model_fingerprint(local_model_dir(args.ifd_model, log=log)),
                                      cache_dir=ctx.cache_dir, batch_size=args.batch_size,
                                      max_seq_len=args.max_seq_len, dist=info, show_progress=info.is_main)
    sel = select(pool, chain, targets, opts, ctx)
    if not info.is_main:
        return 0
    report = write_selection(args.out, pool, sel, {"method": args.method, "budget": args.budget,
                                                   "targets": len(targets), "seconds": round(time.perf_counter() - t0, 1)})
    ui.log(f"selected {report['selected']} of {report['pool']} by {args.method} -> {args.out}/selected.jsonl "
           f"(scores: scores.jsonl, report: selection_report.json)")
    for step in report["steps"]:
        ui.log(f"  {step['method']}: {step['input']} -> {step['kept']} in {step['seconds']} s")
    return 0
