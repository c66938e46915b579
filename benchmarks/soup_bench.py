"""Greedy and uniform soups of runs that differ only by seed, against the best single run.

    .venv/bin/python benchmarks/soup_bench.py --seeds 0 1 2 --record

Trains `recipes/quickstart.yaml` once per seed (`tunesmith train ... --train.seed S`, no
evaluation, no export) into runs/soup-seedS, then `tunesmith export soup ... --greedy --metric
tasks --suites tasks,loss` and the uniform soup, scores every ingredient and both soups on the
held-out tasks and loss, prints the table and, with --record, appends it to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from record import append_section



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    from tunesmith.cli import main as cli
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.stages.export import ExportOptions, evaluator_for

    t0 = time.perf_counter()
    runs = []
    for seed in args.seeds:
        run = Path(f"runs/soup-seed{seed}")
        if not (run / "model" / "model.safetensors").is_file():
            if cli(["train", args.recipe, "--train.seed", str(seed), "--output.dir", str(run), "--export.to", "[]",
                    "--overwrite"]) != 0:
                sys.exit(1)
        runs.append(run)
    out = Path("runs/soup-bench")
    for kind in ("greedy", "uniform"):
        argv = ["export", "soup", *map(str, runs), "--out", str(out / kind), "--suites", "tasks,loss"]
        if cli(argv + (["--greedy", "--metric", "tasks"] if kind == "greedy" else [])) != 0:
            sys.exit(1)
    tok = load_tokenizer(str(runs[0] / "model"), log=lambda *a: None)
    evaluate = evaluator_for(ExportOptions(suites=["tasks", "loss"]), tok, runs[0])
    rows = [(f"seed {s}", evaluate(load_model(str(r / "model"), log=lambda *a: None), f"seed {s}"))
            for s, r in zip(args.seeds, runs)]
    greedy = json.loads((out / "greedy" / "soup.json").read_text())
    for kind in ("uniform", "greedy"):
        rows.append((f"{kind} soup", evaluate(load_model(str(out / kind / "soup"), log=lambda *a: None), kind)))
    best = max(rows[: len(runs)], key=lambda r: r[1]["tasks"])
    lines = ["| model | tasks exact-match | held-out loss |", "|---|---|---|"]
    lines += [f"| {name} | {100 * v['tasks']:.1f}% | {v['loss']:.4f} |" for name, v in rows]
    text = "\n".join(lines) + (f"\n\nBest single run: {best[0]}. Greedy soup kept {greedy['kept']} "
                               f"(order by own tasks score: {greedy['order']}).")
    print(text)
    if args.record:
        append_section(f"Model soups of {len(runs)} quickstart runs (seeds {args.seeds})",
                       f"`python benchmarks/soup_bench.py --seeds {' '.join(map(str, args.seeds))} --record` "
                       f"({time.perf_counter() - t0:.0f} s)", text)


if __name__ == "__main__":
    main()
