"""Dedup and decontamination scored against the planted faults of the benchmark fault pool.

    .venv/bin/python benchmarks/curate_pool.py --n 4000 --seeds 0 1 2

For each seed: build_fault_pool(n, seed), then dedup with the default options and a few
alternatives (scored with testing.fault_pool.score_dedup: recall of planted exact / near
duplicates, false-positive rate over the rows that should stay), and decontamination against the
`tasks` suite (recall of the planted eval copies, other rows removed).
"""

from __future__ import annotations

import argparse
import time

from tunesmith.curate import DecontamConfig, DedupConfig, decontaminate, dedup
from tunesmith.testing.fault_pool import build_fault_pool, score_dedup

VARIANTS = {
    "default (word 3-grams, no stop words, J>=0.7)": DedupConfig(),
    "threshold 0.8": DedupConfig(threshold=0.8),
    "threshold 0.6": DedupConfig(threshold=0.6),
    "word 3-grams with stop words": DedupConfig(stop_words=False),
    "char 5-grams (no stop words)": DedupConfig(shingle="char", ngram=5),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    print(f"{'seed':>4s} {'dedup options':46s} {'exact rec':>9s} {'near rec':>8s} {'FP':>4s} {'FP rate':>8s} {'s':>5s}")
    for seed in args.seeds:
        pool = build_fault_pool(args.n, seed)
        for name, cfg in VARIANTS.items():
            t = time.perf_counter()
            s = score_dedup(pool, dedup(pool.examples, cfg).keep)
            print(f"{seed:4d} {name:46s} {s['exact_recall']:9.3f} {s['near_recall']:8.3f} {s['false_positives']:4d} "
                  f"{s['fp_rate']:8.4f} {time.perf_counter() - t:5.1f}")
            if cfg == DedupConfig():
                print(f"     near recall by edit: {s['near_recall_by_edit']}")
        for threshold in (0.8, 0.5):
            dec = decontaminate(pool.examples, DecontamConfig(suites=("tasks",), threshold=threshold, seed=seed))
            copies = set(pool.indices("eval_copy"))
            rows = {h.row for h in dec.hits}
            print(f"{seed:4d} decontaminate tasks (8-grams, threshold {threshold}): eval copies found "
                  f"{len(copies & rows)}/{len(copies)}, other rows removed {len(rows - copies)} "
                  f"({len(rows - copies) / (len(pool.examples) - len(copies)):.2%})")


if __name__ == "__main__":
    main()
