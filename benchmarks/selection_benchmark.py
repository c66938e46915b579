"""Data selection against random, on a pool with planted faults, over several seeds.

    python benchmarks/selection_benchmark.py [--pool 4000] [--budget 10%] [--seeds 5] [--record]
    python benchmarks/selection_benchmark.py --scenario targeted [--pool 1300 --if-rows 200] [--budget 80]
        [--targets convert_units,max_number,reverse_words] [--seeds 5] [--record]

Scenario `uniform` (the default): the pool (`tunesmith.testing.fault_pool`) holds generated task
examples over 13 task types with known faults: 20% corrupted (wrong answers, responses swapped
between examples), 10% near-duplicates, 5% exact duplicates, 1% copies of evaluation items. The
held-out evaluation covers all 13 types, so random is already representative. Target examples
(for rds, less, zipfit) are the pool's dev set: 8 items per task type drawn from a seed disjoint
from both the pool and the held-out evaluation items.

Scenario `targeted` (selection for a target, as in RDS+, LESS and ZIP-FIT): the same kind of
pool plus IFEval-style constraint rows with rule-built, checker-verified answers (20% of them
breaking an instruction) as one more source (`tunesmith.testing.targeted_pool`); the targets are
a few examples of 2-3 task types (a disjoint seed) and the held-out evaluation covers those types
only (134 items per type by default). Each selection is scored for its target share (picked rows
of the target types) and fault share (corrupted rows).

Every method picks the same budget; the benchmark reports what each picked and the held-out
exact-match after identical LoRA training on the pick (same model, steps, learning rate, seed
per row), as a mean over seeds and as the paired difference to random with a 95% t interval.
A method is a chain spec with `+` for `,` ("loss:70%+rds": the loss filter, then rds); `ifd` is
the default pairing (a loss filter before ifd) and `ifd-alone` is plain ifd (ifd_filter none).
Model features are cached (`~/.cache/tunesmith/select`), and finished (method, seed) rows are
kept in OUT/results.jsonl, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import json
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import append_section  # noqa: E402

from tunesmith.data.samples import tokenize_examples  # noqa: E402
from tunesmith.evaluate.suites import eval_tasks  # noqa: E402
from tunesmith.models import load_model, load_tokenizer, local_model_dir  # noqa: E402
from tunesmith.select.features import ScoringContext, model_fingerprint  # noqa: E402
from tunesmith.select.run import SelectOptions, parse_chain, select  # noqa: E402
from tunesmith.testing.fault_pool import build_fault_pool  # noqa: E402
from tunesmith.testing.targeted_pool import CORRUPT_FAULTS, build_targeted_pool  # noqa: E402
from tunesmith.train.config import LoraConfig, TrainConfig  # noqa: E402
from tunesmith.train.loop import train  # noqa: E402
from tunesmith.train.setup import prepare_model  # noqa: E402

METHODS = {"uniform": ("random", "stratified", "rds", "ifd-alone", "ifd", "less", "kmeans", "zipfit"),
           "targeted": ("random", "rds", "loss:70%+rds", "ifd-alone", "ifd")}
LABELS = {"ifd": "ifd (default: loss:70% filter first)", "ifd-alone": "ifd alone (--ifd-filter none)"}
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


def _read_rows(results_path: Path) -> list[dict]:
    if not results_path.exists():
        return []
    return [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]


def method_spec(method: str, budget: str, seed: int) -> tuple[list[tuple[str, str]], SelectOptions]:
    """A benchmark method name -> (chain, options): "ifd-alone" is ifd without its quality filter."""
    if method == "ifd-alone":
        return parse_chain("ifd", budget), SelectOptions(seed=seed, ifd_filter="none")
    return parse_chain(method.replace("+", ","), budget), SelectOptions(seed=seed)


def diagnostics(pool, indices, n_types: int, target_types=(), eval_prompts=frozenset()) -> dict:
    """What a selection holds, against the pool's planted truth."""
    faults = Counter(pool.examples[i].meta["fault"] for i in indices)
    per_task = Counter(pool.examples[i].meta["task"] for i in indices)
    n = max(len(indices), 1)
    out = {"corrupted": sum(faults[f] for f in CORRUPT_FAULTS) / n, "duplicated": sum(faults[f] for f in DUPS) / n,
           "leaked": faults["eval_copy"] / n, "tasks_covered": len(per_task), "task_types": n_types,
           "min_per_task": min(per_task.values()) if len(per_task) == n_types else 0}
    if target_types:
        out["target_share"] = sum(per_task[t] for t in target_types) / n
        out["per_target"] = {t: per_task[t] for t in target_types}
        out["leaked"] = sum(pool.examples[i].messages[0]["content"] in eval_prompts for i in indices) / n
    return out


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
    model = model.merge_and_unload().eval()  # the same weights, without the adapter's extra matmuls
    t0 = time.perf_counter()
    scores = eval_tasks(model, tokenizer, eval_items, max_new_tokens=args.max_new_tokens, batch_size=64)
    return {"exact_match": scores["score"], "final_loss": result.losses[-1], "train_s": round(train_s, 1),
            "eval_s": round(time.perf_counter() - t0, 1), "steps": len(result.losses),
            "per_task": {t: v["exact_match"] for t, v in scores["per_task"].items()}}


def ci95(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t interval of paired differences."""
    m = statistics.fmean(diffs)
    if len(diffs) < 2:
        return m, float("nan"), float("nan")
    half = T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return m, m - half, m + half


def paired(rows: list[dict], a: str, b: str) -> tuple[float, float, float, int]:
    """a minus b, paired by seed: mean, 95% interval, seeds."""
    by = {(r["method"], r["seed"]): r["exact_match"] for r in rows}
    diffs = [by[(a, s)] - by[(b, s)] for (m, s) in by if m == a and (b, s) in by]
    return (*ci95(diffs), len(diffs)) if diffs else (float("nan"),) * 3 + (0,)


def summarise(rows: list[dict], methods: list[str]) -> list[dict]:
    out = []
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        if not mine:
            continue
        accs = [r["exact_match"] for r in mine]
        d, lo, hi, _ = paired(rows, m, "random")
        keys = [k for k in mine[0]["diag"] if isinstance(mine[0]["diag"][k], (int, float))]
        out.append({"method": m, "seeds": len(mine), "acc": statistics.fmean(accs),
                    "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "diff": d, "lo": lo, "hi": hi,
                    **{k: statistics.fmean(r["diag"][k] for r in mine) for k in keys},
                    "per_task": {t: statistics.fmean(r["per_task"][t] for r in mine) for t in mine[0]["per_task"]},
                    "select_s": max(r["select_s"] for r in mine)})  # the uncached run
    return out


def _vs(s: dict) -> str:
    if s["method"] == "random":
        return "—"
    return f"{100 * s['diff']:+.1f} pp [{100 * s['lo']:+.1f}, {100 * s['hi']:+.1f}]"


def table(summary: list[dict], n_types: int) -> str:
    head = ("| method | seeds | held-out exact-match (mean ± sd) | vs random (paired, 95% CI) | corrupted | "
            "duplicated | leaked | task types covered | min per type | selection s (uncached) |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {LABELS.get(s['method'], s['method'])} | {s['seeds']} | {100 * s['acc']:.1f}% ± {100 * s['sd']:.1f} | "
             f"{_vs(s)} | {100 * s['corrupted']:.1f}% | {100 * s['duplicated']:.1f}% | {100 * s['leaked']:.1f}% | "
             f"{s['tasks_covered']:.1f}/{n_types} | {s['min_per_task']:.1f} | {s['select_s']:.1f} |" for s in summary]
    return head + "\n".join(lines) + "\n"


def targeted_table(summary: list[dict], targets: tuple[str, ...]) -> str:
    head = ("| method | seeds | exact-match on the target types (mean ± sd) | vs random (paired, 95% CI) | "
            "target share | fault share (corrupted) | duplicated | leaked | " + " | ".join(targets) +
            " | selection s (slowest seed) |\n|" + "---|" * (9 + len(targets)) + "\n")
    lines = [f"| {LABELS.get(s['method'], s['method'].replace('+', ' → '))} | {s['seeds']} | "
             f"{100 * s['acc']:.1f}% ± {100 * s['sd']:.1f} | {_vs(s)} | {100 * s['target_share']:.1f}% | "
             f"{100 * s['corrupted']:.1f}% | {100 * s['duplicated']:.1f}% | {100 * s['leaked']:.1f}% | " +
             " | ".join(f"{100 * s['per_task'].get(t, float('nan')):.1f}%" for t in targets) +
             f" | {s['select_s']:.1f} |" for s in summary]
    return head + "\n".join(lines) + "\n"


def comparisons(rows: list[dict], methods: list[str]) -> str:
    """Paired differences that answer the scenario's questions: does a filter add to the method after
    it, and what does ifd's default filter change; and which methods beat random."""
    lines = []
    for m in methods:
        if "+" in m and m.rsplit("+", 1)[1] in methods:
            lines.append((m, m.rsplit("+", 1)[1]))
    if "ifd" in methods and "ifd-alone" in methods:
        lines.append(("ifd", "ifd-alone"))
    out = []
    for a, b in lines:
        d, lo, hi, k = paired(rows, a, b)
        if k:
            out.append(f"- {LABELS.get(a, a.replace('+', ' → '))} minus {LABELS.get(b, b)}: {100 * d:+.1f} pp "
                       f"[{100 * lo:+.1f}, {100 * hi:+.1f}] (paired over {k} seeds)")
    above = [m for m in methods if m != "random" and paired(rows, m, "random")[1] > 0]
    out.append("- above random with the paired 95% interval excluding 0: " +
               (", ".join(LABELS.get(m, m.replace("+", " → ")) for m in above) if above else "none"))
    return "\n".join(out) + "\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=("uniform", "targeted"), default="uniform")
    p.add_argument("--pool", type=int, default=None, help="task rows (uniform: 4000, targeted: 1300)")
    p.add_argument("--if-rows", type=int, default=200, help="targeted: IFEval-style rows added to the pool")
    p.add_argument("--targets", default="convert_units,max_number,reverse_words", help="targeted: target task types")
    p.add_argument("--targets-per-type", type=int, default=8, help="targeted: target examples per type")
    p.add_argument("--eval-per-type", type=int, default=134, help="targeted: held-out items per target type")
    p.add_argument("--budget", default=None, help="uniform: 10%%, targeted: 80")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed-list", help="run only these seeds (e.g. 0,2,4: split seeds over processes)")
    p.add_argument("--prepare-only", action="store_true", help="compute and cache every method's features, no training")
    p.add_argument("--lock", help="a lock file shared with timing benchmarks (see cpu_turn)")
    p.add_argument("--methods", default=None, help="comma-separated; a chain joins its steps with '+'")
    p.add_argument("--eval-n", type=int, default=130, help="uniform: held-out task items scored (10 per type)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="uniform: 20, targeted: 8 (the target types' answers are at most 5 tokens)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="runs/bench_selection, or runs/bench_selection_targeted")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    p.add_argument("--note", default="", help="a sentence added to the recorded section (e.g. where features came from)")
    args = p.parse_args()
    targeted = args.scenario == "targeted"
    args.pool = args.pool or (1300 if targeted else 4000)
    args.budget = args.budget or ("80" if targeted else "10%")
    args.max_new_tokens = args.max_new_tokens or (8 if targeted else 20)
    args.out = args.out or ("runs/bench_selection_targeted" if targeted else "runs/bench_selection")
    args.methods = [m.strip() for m in (args.methods or ",".join(METHODS[args.scenario])).split(",") if m.strip()]
    if "random" not in args.methods:
        args.methods.insert(0, "random")
    for m in args.methods:
        try:
            method_spec(m, args.budget, 0)
        except Exception as err:  # a bad method or budget: one message, no traceback
            p.error(f"--methods {m}: {err}")
    return args


def main() -> int:
    args = parse_args()
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = {(r["method"], r["seed"]) for r in _read_rows(results_path)}

    if args.scenario == "targeted":
        tp = build_targeted_pool(args.pool, args.if_rows, tuple(args.targets.split(",")), args.targets_per_type,
                                 args.eval_per_type)
        pool, targets, eval_items, n_types = tp, tp.targets, tp.eval_items, len(tp.sources)
        eval_prompts = frozenset(it.prompt for it in eval_items)
        diag_extra = (tp.target_types, eval_prompts)
    else:
        pool = build_fault_pool(args.pool, seed=0)
        n_types = len(pool.task_types)
        eval_items = pool.eval_items[: args.eval_n]
        targets = [item.to_example("dev") for item in pool.dev_items]
        diag_extra = ()
    tokenizer = load_tokenizer(None, log=lambda *a: None)
    base = load_model(None, log=lambda *a: None)
    ctx = ScoringContext(base, tokenizer, model_fingerprint(local_model_dir(None, log=lambda *a: None)))
    print(f"{args.scenario}: pool {len(pool.examples)} rows, {n_types} sources; budget {args.budget}; "
          f"{len(targets)} targets; eval {len(eval_items)} held-out items; seeds {args.seeds}", flush=True)

    seeds = [int(x) for x in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    if args.prepare_only:
        for method in args.methods:
            with cpu_turn(args.lock):
                _select(pool, method, args.budget, 0, targets, ctx)
        return 0
    for seed in seeds:
        for method in args.methods:
            if (method, seed) in done or (method, seed) in {(r["method"], r["seed"]) for r in _read_rows(results_path)}:
                continue  # done earlier, or by another process working on the same OUT
            with cpu_turn(args.lock):
                t0 = time.perf_counter()
                sel = _select(pool, method, args.budget, seed, targets, ctx)
                select_s = time.perf_counter() - t0
                diag = diagnostics(pool, sel.indices, n_types, *diag_extra)
                res = train_and_eval(base, tokenizer, pool, sel.indices.tolist(), eval_items, seed, args)
            row = {"method": method, "seed": seed, "select_s": round(select_s, 1), "diag": diag,
                   "steps_report": sel.steps, "wall_s": round(time.perf_counter() - t0, 1), **res}
            with open(results_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            share = f"target {100 * diag['target_share']:.0f}%  " if "target_share" in diag else ""
            print(f"seed {seed} {method:14s} exact-match {100 * res['exact_match']:.1f}%  {share}corrupted "
                  f"{100 * diag['corrupted']:.1f}%  dup {100 * diag['duplicated']:.1f}%  leaked "
                  f"{100 * diag['leaked']:.1f}%  (select {select_s:.0f}s, train {res['train_s']:.0f}s "
                  f"[{res['steps']} steps], eval {res['eval_s']:.0f}s)", flush=True)

    rows = _read_rows(results_path)
    summary = summarise(rows, args.methods)
    text = targeted_table(summary, pool.target_types) if args.scenario == "targeted" else table(summary, n_types)
    text += "\n" + comparisons(rows, args.methods)
    wall = time.perf_counter() - t_start
    cpu = sum(r.get("wall_s", 0) for r in rows)
    print(text)
    print(f"this invocation: {wall:.0f} s; all rows in {results_path}: {cpu:.0f} s of selection + training + eval")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.record:
        _record(args, pool, targets, eval_items, n_types, text, wall, cpu)
    return 0


def _select(pool, method: str, budget: str, seed: int, targets, ctx):
    chain, opts = method_spec(method, budget, seed)
    return select(pool.examples, chain, targets, opts, ctx)


def _record(args, pool, targets, eval_items, n_types: int, text: str, wall: float, cpu: float) -> None:
    argv = sys.argv[1:]
    if "--note" in argv:  # the note goes into the text, not into the command
        i = argv.index("--note")
        argv = argv[:i] + argv[i + 2:]
    argv = [a for a in argv if not a.startswith("--note=")]
    cmd = "`python benchmarks/selection_benchmark.py " + " ".join(argv) + "`"
    train = (f"LoRA r=16 all-linear, 1 epoch, batch {args.batch}, lr {args.lr}, threads {torch.get_num_threads()}")
    if args.scenario == "targeted":
        c = Counter(ex.meta["fault"] for ex in pool.examples)
        n = len(pool.examples)
        title = f"Selection for a target: {len(pool.target_types)} task types in a mixed pool with faults"
        body = (f"Pool {n} rows: {args.pool} generated task rows over 13 types with the fault pool's planted faults "
                f"and {args.if_rows} IFEval-style rows with rule-built answers checked by the IFEval checkers "
                f"({n_types} sources; corrupted {100 * sum(c[f] for f in CORRUPT_FAULTS) / n:.1f}% of all rows "
                f"incl. {c['if_violated']} IF answers that break an instruction; near/exact dups "
                f"{100 * (c['near_dup'] + c['exact_dup']) / n:.1f}%). Target types: {', '.join(pool.target_types)} "
                f"({100 * sum(pool.is_target(i) for i in range(n)) / n:.1f}% of the pool); {len(targets)} target "
                f"examples ({args.targets_per_type} per type, a seed disjoint from pool and eval). Held-out "
                f"exact-match on {len(eval_items)} items of the target types only (max {args.max_new_tokens} new "
                f"tokens). Budget {args.budget}; {train}. Shares are of the selected rows, means over seeds; "
                f"the per-type columns are exact-match. Wall time: {wall / 60:.1f} min for this invocation, "
                f"{cpu / 60:.1f} min of selection + training + eval over all rows.\n\n")
    else:
        title = "Data selection vs random"
        body = (f"Pool {len(pool.examples)} rows over {n_types} task types with planted faults (20% corrupted, 10% "
                f"near-dup, 5% exact dup, 1% eval copies); budget {args.budget}; {train}; held-out exact-match on "
                f"{len(eval_items)} items. Shares are of the selected examples, means over seeds.\n\n")
    append_section(title, cmd, body + text + (f"\n{args.note}\n" if args.note else ""))


if __name__ == "__main__":
    sys.exit(main())
