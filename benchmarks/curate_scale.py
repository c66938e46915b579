"""Curation at scale: exact + MinHash near-dup dedup and decontamination over a streamed 10^6-row pool.

    nice -n 10 .venv/bin/python benchmarks/curate_scale.py --rows 1000000

The pool is streamed, never held: generated task items (1,000 per seed, seeds 0, 1, 2, ...) with
planted copies of recent rows (every 20th row an exact copy with case/whitespace changes, every
20th row, offset by 10, a near-duplicate edit from `testing.fault_pool.near_dup_edit`). Task types
with small prompt spaces (add_numbers has 2,500 prompts) repeat naturally at this size, so most
duplicates found are natural ones. Each stage reads the stream again, so the time of generating
the rows alone is measured first and reported separately. Peak RSS is the process's ru_maxrss.
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from collections import deque
from collections.abc import Iterator

import numpy as np

from tunesmith.curate import DecontamConfig, DedupConfig, decontaminate, dedup
from tunesmith.data.example import Example
from tunesmith.testing.fault_pool import near_dup_edit
from tunesmith.data.tasks import generate_tasks

PER_SEED = 1000


def stream(n: int, seed: int = 0) -> Iterator[Example]:
    """n rows: generated items with planted exact and near copies of recent rows (deterministic)."""
    rng = random.Random(f"curate-scale:{seed}")
    recent: deque = deque(maxlen=5000)
    made, s = 0, seed * 100_000
    while made < n:
        for item in generate_tasks(PER_SEED, s):
            if made >= n:
                return
            k = made % 20
            if k == 0 and recent:
                prompt, answer = rng.choice(recent)
                prompt = rng.choice((prompt, prompt.lower(), "  " + prompt.replace(" ", "  ", 1) + " "))
            elif k == 10 and recent:
                prompt, answer = rng.choice(recent)
                prompt = near_dup_edit(prompt, rng)[0]
            else:
                prompt, answer = item.prompt, item.answer
                recent.append((prompt, answer))
            made += 1
            yield Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                          "scale", made)
        s += 1


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--progress", action="store_true", help="show progress bars")
    args = ap.parse_args()
    n = args.rows
    print(f"rows: {n:,}   baseline peak RSS {peak_mib():.0f} MiB")
    table = []

    t = time.perf_counter()
    count = sum(1 for _ in stream(n))
    gen = time.perf_counter() - t
    table.append(("generate the stream (not curation)", gen, count, peak_mib()))

    t = time.perf_counter()
    res = dedup(stream(n), DedupConfig(), total=n, progress=args.progress)
    dd = time.perf_counter() - t
    table.append(("dedup: exact + MinHash near (incl. generation)", dd, n, peak_mib()))

    t = time.perf_counter()
    dec = decontaminate(stream(n), DecontamConfig(suites=("tasks",)), total=n, progress=args.progress)
    dc = time.perf_counter() - t
    table.append(("decontaminate, tasks suite (incl. generation)", dc, n, peak_mib()))

    t = time.perf_counter()
    keep = np.flatnonzero(res.keep & dec.keep)
    chosen = np.random.default_rng(0).choice(keep, size=len(keep) // 10, replace=False)
    rs = time.perf_counter() - t
    table.append(("random selection of 10% of the kept rows", rs, len(keep), peak_mib()))

    print(f"\n{'stage':52s} {'wall s':>8s} {'rows/s':>10s} {'peak RSS MiB':>13s}")
    for name, secs, rows, rss in table:
        print(f"{name:52s} {secs:8.1f} {rows / max(secs, 1e-9):10,.0f} {rss:13.0f}")
    print(f"\ncuration only (stage minus generation): dedup {dd - gen:.1f} s, decontaminate {dc - gen:.1f} s")
    print(f"dedup stats: {res.stats}")
    print(f"dedup: {res.n_exact_removed:,} exact duplicates removed ({len(res.exact_clusters):,} clusters), "
          f"{res.n_near_removed:,} near duplicates ({len(res.near_clusters):,} clusters); {int(res.keep.sum()):,} kept")
    by_suite = dec.summary()["removed_by_suite"]
    print(f"decontaminate: {len(dec.hits):,} rows overlap eval prompts {by_suite}; "
          f"distinct eval prompts hit: {len({h.eval_id for h in dec.hits})} of {dec.eval_counts}")
    print(f"both: {len(keep):,} rows kept; random 10%: {len(chosen):,} rows")


if __name__ == "__main__":
    main()
