"""Selection at scale: the cheap methods over a 10^6-row pool, with wall time and peak memory.

    nice -n 10 .venv/bin/python benchmarks/select_scale.py --rows 1000000 [--record]

The pool is the stream of `benchmarks/curate_scale.py` (short generated task rows with planted
copies). Methods: random and stratified (by task) at 10%, ZIP-FIT against a sample target of 16
task items (compression in --workers processes), and k-means (k=100) on hashed n-gram
embeddings kept in the feature store. Each method runs twice: the second run reads the
cached features (what a rerun with another budget costs). Peak RSS is the process's ru_maxrss
(ZIP-FIT workers are separate processes and report their own).
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from curate_scale import stream  # noqa: E402

from tunesmith.data.tasks import generate_examples  # noqa: E402
from tunesmith.select.features import ScoringContext  # noqa: E402
from tunesmith.select.run import SelectOptions, parse_chain, select  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--budget", default="10%")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", help="feature store directory (default: a fresh temporary one)")
    p.add_argument("--record", action="store_true")
    args = p.parse_args()
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="select-scale-"))
    t0 = time.perf_counter()
    pool = []
    for ex in stream(args.rows):
        ex.meta["task"] = ex.messages[0]["content"].split(" ", 1)[0]
        pool.append(ex)
    load_s = time.perf_counter() - t0
    print(f"pool: {len(pool):,} rows in {load_s:.1f} s, peak RSS {peak_mib():.0f} MiB", flush=True)
    targets = generate_examples(16, seed=424242)
    ctx = ScoringContext(cache_dir=cache)
    opts = SelectOptions(seed=0, target_by="none", embeddings="hashed", clusters=100, zipfit_workers=args.workers)
    rows = []
    for method in ("random", "stratified", "zipfit", "kmeans"):
        for attempt in ("first", "cached"):
            t = time.perf_counter()
            sel = select(pool, parse_chain(method, args.budget), targets, opts, ctx)
            secs = time.perf_counter() - t
            rows.append((method, attempt, len(sel.indices), secs))
            print(f"{method:10s} {attempt:6s} {len(sel.indices):,} selected in {secs:.1f} s "
                  f"({len(pool) / secs:,.0f} rows/s); peak RSS so far {peak_mib():.0f} MiB", flush=True)
            if method in ("random", "stratified"):
                break
    peak = peak_mib()
    table = ("| method | run | selected | wall s | rows/s |\n|---|---|---|---|---|\n" +
             "\n".join(f"| {m} | {a} | {n:,} | {s:.1f} | {len(pool) / s:,.0f} |" for m, a, n, s in rows) + "\n")
    print(table + f"peak RSS {peak:.0f} MiB")
    if args.record:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## Selection at scale (1M examples) ({dt.date.today()}, 2-core CPU, 24 GiB)\n\n"
                    f"Command: `{' '.join(['python'] + sys.argv)}`. {len(pool):,} short rows (the curate_scale "
                    f"stream; building the pool in memory took {load_s:.0f} s), budget {args.budget}; ZIP-FIT "
                    f"against 16 sample target items with {args.workers} worker processes; k-means k=100 on "
                    "128-d hashed n-gram embeddings from the feature store. 'cached' reruns read the stored "
                    f"features. Peak RSS of the main process: {peak:.0f} MiB.\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
