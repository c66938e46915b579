"""CLI verbs `tunesmith data dedup` and `tunesmith data decontaminate`.

`add_data_parsers(dsub)` adds both to the `data` subparser group; each verb's function takes
(args, overrides) and returns the exit code, like the other verbs in tunesmith.cli.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunesmith.errors import UsageError


def add_data_parsers(dsub) -> None:
    """Register `dedup` and `decontaminate` under `tunesmith data`."""
    d = dsub.add_parser("dedup", help="remove exact and near-duplicate rows (MinHash LSH); report every cluster",
                        description="Exact pass: hash of the normalised text (NFKC, lower case, collapsed "
                                    "whitespace, punctuation stripped at the ends). Near pass: MinHash LSH over "
                                    "word n-grams of content words, verified with the exact Jaccard.")
    d.add_argument("data", help="file, folder or glob (JSONL/JSON/Parquet/CSV; alpaca, sharegpt or messages)")
    d.add_argument("--out", required=True, help="directory for kept.jsonl, removed.jsonl and report.json")
    d.add_argument("--ngram", type=int, default=3, help="shingle size (words, or characters with --shingle char)")
    d.add_argument("--shingle", choices=("word", "char"), default="word")
    d.add_argument("--num-perm", type=int, default=128, help="MinHash permutations")
    d.add_argument("--threshold", type=float, default=0.7, help="Jaccard similarity of near-duplicates, in (0, 1]")
    d.add_argument("--bands", type=int, help="LSH bands (with --rows; default: datasketch's optimum)")
    d.add_argument("--rows", type=int, help="LSH rows per band")
    d.add_argument("--keep-stop-words", action="store_true", help="shingle stop words too (see curate.text)")
    d.add_argument("--no-near", action="store_true", help="exact duplicates only")
    d.add_argument("--on-error", choices=("fail", "skip"), default="fail", help="unreadable rows: stop or skip")
    d.set_defaults(fn=cmd_dedup)

    c = dsub.add_parser("decontaminate", help="drop rows whose user turns overlap eval prompts (word n-grams)",
                        description="A row is dropped when the share of its user text's word n-grams found in "
                                    "one eval prompt reaches --threshold (texts shorter than n words: a whole-text "
                                    "match scored by how much of the eval prompt it covers).")
    c.add_argument("data", help="file, folder or glob (JSONL/JSON/Parquet/CSV; alpaca, sharegpt or messages)")
    c.add_argument("--out", required=True, help="directory for kept.jsonl, removed.jsonl and report.json")
    c.add_argument("--suites", default="tasks,ifbench,humaneval",
                   help="comma-separated: tasks, robustness, ifbench, ifeval, humaneval")
    c.add_argument("--ngram", type=int, default=8, help="word n-gram size")
    c.add_argument("--threshold", type=float, default=0.8, help="overlap fraction at which a row is dropped, in (0, 1]")
    c.add_argument("--max-df", type=int, default=1,
                   help="n-grams held by more eval prompts of a suite than this are boilerplate (0: count all)")
    c.add_argument("--tasks-n", type=int, default=260, help="held-out generated task items (tasks, robustness)")
    c.add_argument("--ifeval-n", type=int, default=100, help="generated IFEval-style items (ifeval)")
    c.add_argument("--seed", type=int, default=0, help="seed of the generated eval items")
    c.add_argument("--on-error", choices=("fail", "skip"), default="fail", help="unreadable rows: stop or skip")
    c.set_defaults(fn=cmd_decontaminate)


def _load(args: argparse.Namespace, out: Path):
    from tunesmith.data.load import load_examples

    return load_examples(args.data, on_error=args.on_error, rejects_path=out / "rejects.jsonl" if
                         args.on_error == "skip" else None, show_progress=True)


def cmd_dedup(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    from tunesmith import ui

    from .dedup import DedupConfig, dedup
    from .report import write_curated

    _no_overrides(overrides)
    cfg = DedupConfig(near=not args.no_near, shingle=args.shingle, ngram=args.ngram, num_perm=args.num_perm,
                      threshold=args.threshold, bands=args.bands, rows=args.rows,
                      stop_words=not args.keep_stop_words).validate()
    out = Path(args.out)
    loaded = _load(args, out)
    res = dedup(loaded.examples, cfg, total=len(loaded.examples), progress=True)
    report = {**res.summary(), "data": args.data, "rejected_rows": len(loaded.rejects),
              "clusters": [c.to_json() for c in res.exact_clusters + res.near_clusters]}
    paths = write_curated(loaded.examples, res.keep, res.removed_reasons(), out, report)
    ui.log(f"dedup: {res.total} rows -> {int(res.keep.sum())} kept; removed {res.n_exact_removed} exact "
           f"({len(res.exact_clusters)} clusters) and {res.n_near_removed} near duplicates "
           f"({len(res.near_clusters)} clusters)")
    ui.log(f"kept rows: {paths['kept']}  removed rows: {paths['removed']}  report: {paths['report']}")
    return 0


def cmd_decontaminate(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    from tunesmith import ui

    from .decontaminate import DecontamConfig, decontaminate
    from .report import write_curated
    from .suites import parse_suites

    _no_overrides(overrides)
    cfg = DecontamConfig(suites=parse_suites(args.suites), ngram=args.ngram, threshold=args.threshold,
                         max_df=args.max_df or None, tasks_n=args.tasks_n, seed=args.seed,
                         ifeval_n=args.ifeval_n).validate()
    out = Path(args.out)
    loaded = _load(args, out)
    res = decontaminate(loaded.examples, cfg, total=len(loaded.examples), progress=True)
    report = {**res.summary(), "data": args.data, "rejected_rows": len(loaded.rejects),
              "hits": [h.to_json() for h in res.hits]}
    paths = write_curated(loaded.examples, res.keep, res.removed_reasons(), out, report)
    per_suite = ", ".join(f"{k}: {v}" for k, v in res.summary()["removed_by_suite"].items()) or "none"
    ui.log(f"decontaminate: {res.total} rows -> {int(res.keep.sum())} kept; removed {len(res.hits)} "
           f"overlapping eval prompts ({per_suite})")
    ui.log(f"kept rows: {paths['kept']}  removed rows: {paths['removed']}  report: {paths['report']}")
    return 0


def _no_overrides(overrides: dict[str, str]) -> None:
    if overrides:
        raise UsageError(f"recipe overrides ({', '.join('--' + k for k in overrides)}) do not apply to this verb")
