"""Data selection against random, on a pool with planted faults, over several seeds.

    python benchmarks/selection_benchmark.py [--pool 4000] [--budget 10%] [--seeds 5] [--record]

The pool (`tunesmith.testing.fault_pool`) holds generated task examples over 13 task types with
known faults: 20% corrupted (wrong answers, responses swapped between examples), 10% near-
duplicates, 5% exact duplicates, 1% copies of evaluation items. Every method picks the same
budget; the benchmark reports what each picked (share of corrupted, duplicated and leaked
examples, task coverage) and the held-out exact-match after identical LoRA training on the
pick (same model, steps, learning rate, seed per row), as a mean over seeds and as the paired
difference to random with a 95% t interval.

Target examples (for rds, less, zipfit) are the pool's dev set: 8 items per task type drawn
from a seed disjoint from both the pool and the held-out evaluation items. Model features are
cached (`~/.cache/tunesmith/select`), and finished (method, seed) rows are kept in
OUT/results.jsonl, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import datetime as dt
import json
import math
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from tunesmith.data.chat import tokenize_examples
from tunesmith.testing.fault_pool import build_fault_pool
from tunesmith.evaluate.suites import eval_tasks
from tunesmith.models import load_model, load_tokenizer, local_model_dir
from tunesmith.train.config import LoraConfig, TrainConfig
from tunesmith.select.features import ScoringContext, model_fingerprint
from tunesmith.select.run import SelectOptions, parse_chain, select
from tunesmith.train.loop import train
from tunesmith.train.setup import prepare_model

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("random", "stratified", "rds", "ifd", "less", "kmeans", "zipfit")
CORRUPT = {"corrupted_wrong", "corrupted_swap"}
DUPS = {"near_dup", "exact_dup"}
# Two-sided 95% t quantiles by degrees of freedom (1..10); 1.96 beyond.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


@contextlib.contextmanager
def cpu_turn(path: str | None):
    """Hold a shared lock on `path` for one (method, seed) run, so that a timing benchmark taking
    the lock exclusively (flock -x) runs alone; the pause after each run gives it its turn."""
    if not path:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    time.sleep(3)


def _finished(results_path: Path) -> set[tuple[str, int]]:
    if not results_path.exists():
        return set()
    rows = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    return {(r["method"], r["seed"]) for r in rows}


def diagnostics(pool, indices, n_types: int) -> dict:
    """What a selection holds, against the pool's planted truth."""
    faults = Counter(pool.examples[i].meta["fault"] for i in indices)
    per_task = Counter(pool.examples[i].meta["task"] for i in indices)
    n = max(len(indices), 1)
    return {"corrupted": sum(faults[f] for f in CORRUPT) / n, "duplicated": sum(faults[f] for f in DUPS) / n,
            "leaked": faults["eval_copy"] / n, "tasks_covered": len(per_task), "task_types": n_types,
            "min_per_task": min(per_task.values()) if len(per_task) == n_types else 0}


def train_and_eval(base, tokenizer, pool, indices, eval_items, seed: int, args) -> dict:
    """LoRA-train a fresh copy of the base model on the picked examples; exact-match on held-out items."""
    samples, _, _ = tokenize_examples(tokenizer, [pool.examples[i] for i in indices], 256)
    cfg = TrainConfig(method="lora", lora=LoraConfig(r=16, alpha=32, dropout=0.0, target_modules="all-linear"),
                      epochs=1, batch_size=args.batch, lr=args.lr, warmup_steps=3, min_lr_ratio=0.1, seed=seed,
                      threads=args.threads)
    torch.manual_seed(seed)
    model = prepare_model(copy.deepcopy(base), cfg)
    t0 = time.perf_counter()
    result = train(model, samples, cfg, None)
    train_s = time.perf_counter() - t0
    model.eval()
    scores = eval_tasks(model, tokenizer, eval_items, max_new_tokens=20, batch_size=64)
    return {"exact_match": scores["score"], "final_loss": result.losses[-1], "train_s": round(train_s, 1),
            "per_task": {t: v["exact_match"] for t, v in scores["per_task"].items()}}


def ci95(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t interval of paired differences."""
    m = statistics.fmean(diffs)
    if len(diffs) < 2:
        return m, float("nan"), float("nan")
    half = T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return m, m - half, m + half


def summarise(rows: list[dict], methods: list[str]) -> list[dict]:
    by = {(r["method"], r["seed"]): r for r in rows}
    out = []
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        if not mine:
            continue
        accs = [r["exact_match"] for r in mine]
        diffs = [by[(m, r["seed"])]["exact_match"] - by[("random", r["seed"])]["exact_match"]
                 for r in mine if ("random", r["seed"]) in by]
        d, lo, hi = ci95(diffs) if diffs else (float("nan"),) * 3
        mean = lambda k: statistics.fmean(r["diag"][k] for r in mine)  # noqa: E731
        out.append({"method": m, "seeds": len(mine), "acc": statistics.fmean(accs),
                    "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "diff": d, "lo": lo, "hi": hi,
                    "corrupted": mean("corrupted"), "duplicated": mean("duplicated"), "leaked": mean("leaked"),
                    "covered": mean("tasks_covered"), "min_per_task": mean("min_per_task"),
                    "select_s": max(r["select_s"] for r in mine)})  # the uncached run
    return out


def table(summary: list[dict], n_types: int) -> str:
    head = ("| method | seeds | held-out exact-match (mean ± sd) | vs random (paired, 95% CI) | corrupted | "
            "duplicated | leaked | task types covered | min per type | selection s (uncached) |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for s in summary:
        vs = "—" if s["method"] == "random" else (
            f"{100 * s['diff']:+.1f} pp [{100 * s['lo']:+.1f}, {100 * s['hi']:+.1f}]")
        lines.append(f"| {s['method']} | {s['seeds']} | {100 * s['acc']:.1f}% ± {100 * s['sd']:.1f} | {vs} | "
                     f"{100 * s['corrupted']:.1f}% | {100 * s['duplicated']:.1f}% | {100 * s['leaked']:.1f}% | "
                     f"{s['covered']:.1f}/{n_types} | {s['min_per_task']:.1f} | {s['select_s']:.1f} |")
    return head + "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", type=int, default=4000)
    p.add_argument("--budget", default="10%")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed-list", help="run only these seeds (e.g. 0,2,4: split seeds over processes)")
    p.add_argument("--prepare-only", action="store_true", help="compute and cache every method's features, no training")
    p.add_argument("--lock", help="a lock file shared with timing benchmarks (see cpu_turn)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--eval-n", type=int, default=130, help="held-out task items scored (10 per type)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/bench_selection")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "random" not in methods:
        methods.insert(0, "random")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    rows = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()] \
        if results_path.exists() else []
    done = {(r["method"], r["seed"]) for r in rows}

    pool = build_fault_pool(args.pool, seed=0)
    n_types = len(pool.task_types)
    eval_items = pool.eval_items[: args.eval_n]
    targets = [item.to_example("dev") for item in pool.dev_items]
    tokenizer = load_tokenizer(None, log=lambda *a: None)
    base = load_model(None, log=lambda *a: None)
    ctx = ScoringContext(base, tokenizer, model_fingerprint(local_model_dir(None, log=lambda *a: None)))
    print(f"pool {len(pool.examples)} rows, {n_types} task types; budget {args.budget}; {len(targets)} targets; "
          f"eval {len(eval_items)} held-out items; seeds {args.seeds}", flush=True)

    seeds = [int(x) for x in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    if args.prepare_only:
        for method in methods:
            with cpu_turn(args.lock):
                select(pool.examples, parse_chain(method, args.budget), targets, SelectOptions(seed=0), ctx)
        return 0
    for seed in seeds:
        for method in methods:
            if (method, seed) in done or (method, seed) in _finished(results_path):
                continue  # done earlier, or by another process working on the same OUT
            with cpu_turn(args.lock):
                t0 = time.perf_counter()
                sel = select(pool.examples, parse_chain(method, args.budget), targets, SelectOptions(seed=seed), ctx)
                select_s = time.perf_counter() - t0
                diag = diagnostics(pool, sel.indices, n_types)
                res = train_and_eval(base, tokenizer, pool, sel.indices.tolist(), eval_items, seed, args)
            row = {"method": method, "seed": seed, "select_s": round(select_s, 1), "diag": diag, **res}
            with open(results_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(f"seed {seed} {method:10s} exact-match {100 * res['exact_match']:.1f}%  corrupted "
                  f"{100 * diag['corrupted']:.1f}%  dup {100 * diag['duplicated']:.1f}%  leaked "
                  f"{100 * diag['leaked']:.1f}%  covered {diag['tasks_covered']}/{n_types}  "
                  f"(select {select_s:.0f}s, train {res['train_s']:.0f}s)", flush=True)

    rows = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    summary = summarise(rows, methods)
    text = table(summary, n_types)
    print(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.record:
        cmd = "python benchmarks/selection_benchmark.py " + " ".join(sys.argv[1:])
        section = (f"\n## Data selection vs random ({dt.date.today()}, {platform.machine()} "
                   f"{torch.get_num_threads()}-thread CPU, torch {torch.__version__})\n\n"
                   f"Command: `{cmd}`. Pool {len(pool.examples)} rows over {n_types} task types with planted "
                   f"faults (20% corrupted, 10% near-dup, 5% exact dup, 1% eval copies); budget {args.budget}; "
                   f"LoRA r=16 all-linear, 1 epoch, batch {args.batch}, lr {args.lr}; held-out exact-match on "
                   f"{len(eval_items)} items. Shares are of the selected examples, means over seeds.\n\n" + text)
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
