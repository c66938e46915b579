"""The tuning methods side by side: same data, steps, batch and seed, each method in its own process.

    .venv/bin/python benchmarks/tuning_methods.py [--steps 144] [--record]      # the full table
    .venv/bin/python benchmarks/tuning_methods.py --smoke                       # 3 steps, 8 items: does it run
    .venv/bin/python benchmarks/tuning_methods.py --data if --if-sft runs/if-sft/sft.jsonl --steps 24 [--record]

Data: recipes/quickstart.yaml's (the demo's generated tasks: 1152 training samples, 260 held-out items),
with its batch (8), warm-up and seed. Methods: LoRA, DoRA, LoRA+PiSSA, LoRA+CorDA, LoRA+LoftQ (on the int4
base, what LoftQ is made for), int8-base LoRA, int4-base LoRA, LISA, GaLore, full, LoRA+NEFTune, and LoRA,
int4-base LoRA and LISA again with train.gradient_checkpointing (each layer recomputed in backward). Adapter
methods use the quickstart's lr; the full-weight methods (full, LISA, GaLore) take --full-lr / --galore-lr
(2e-3 would wreck a full fine-tune).

`--data if`: the same methods on an instruction-following SFT set instead, the verified answers of a RAFT synth
run (`tunesmith synth --prompts ifeval ...`, its sft.jsonl): every 7th row is held out for the loss, the rest
trains (max_seq_len 1024), and the score is IFEval-style prompt-level loose (and strict) on --eval-items generated
items (eval topics, apart from the synth topics). The checkpointing rows and the merged-model scores are left to
the task table (they change nothing but memory and time, and the merged score is measured there).

Per method (a fresh `python benchmarks/tuning_methods.py --worker NAME` process, so that its peak RSS,
`ru_maxrss`, is its own and includes loading the model): trainable parameters (LISA: one period's), peak
RSS at the end of training (before evaluation), seconds per step, training loss at 25/50/100% of the steps
(each the mean of the 5 steps ending there), held-out tasks exact-match and held-out loss. For int4-base
LoRA the merged model (adapter merged into the dequantized base) is scored too, next to the adapter on the
quantized base. A finished method's json in --out is reused (delete it to run it again).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from record import append_section

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.yaml"

METHODS = {  # name -> train.* overrides (beyond the quickstart's)
    "LoRA": {},
    "DoRA": {"method": "dora"},
    "LoRA+PiSSA": {"lora.init": "pissa"},
    "LoRA+CorDA": {"lora.init": "corda"},
    "LoRA+LoftQ (int4 base)": {"lora.init": "loftq", "base_quant": "int4"},
    "int8-base LoRA": {"base_quant": "int8"},
    "int4-base LoRA": {"base_quant": "int4"},
    "LISA": {"method": "lisa", "lisa.layers": 2, "lisa.period": 20},
    "GaLore": {"method": "galore", "galore.rank": 128, "galore.update_proj_gap": 50, "galore.scale": 0.25},
    "full": {"method": "full"},
    "LoRA+NEFTune": {"neftune_alpha": 5.0},
    # train.gradient_checkpointing: what recomputing each layer in backward adds to the memory saving
    "LoRA, checkpointing": {"gradient_checkpointing": True},
    "int4-base LoRA, checkpointing": {"base_quant": "int4", "gradient_checkpointing": True},
    "LISA, checkpointing": {"method": "lisa", "lisa.layers": 2, "lisa.period": 20, "gradient_checkpointing": True},
}
IF_METHODS = [m for m in METHODS if "checkpointing" not in m]
IF_HOLDOUT_EVERY = 7  # every 7th verified answer is held out for the loss suite
FULL_WEIGHT = {"full", "lisa", "galore"}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def worker(args) -> None:
    """Train and score one method; write its json."""
    import torch

    from tunesmith.export.merge import merged_model
    from tunesmith.models import load_tokenizer
    from tunesmith.stages.evaluate import eval_context, evaluate
    from tunesmith.stages.prepare import prepare_data
    from tunesmith.stages.recipe import load_recipe
    from tunesmith.stages.train import load_base, setup_model
    from tunesmith.train.lisa import trainable_count
    from tunesmith.train.loop import train
    from tunesmith.train.setup import count_parameters

    quiet = lambda *a, **k: None  # noqa: E731
    over = {f"train.{k}": v for k, v in METHODS[args.worker].items()}
    method = over.get("train.method", "lora")
    over.update({"train.max_steps": args.steps, "train.save_every": 10**6, "train.seed": args.seed})
    if method in FULL_WEIGHT:
        over["train.lr"] = args.galore_lr if method == "galore" else args.full_lr
    if args.init_lr and over.get("train.lora.init") in ("pissa", "corda"):
        over["train.lr"] = args.init_lr
    if args.smoke:  # the periodic parts happen within 3 steps
        over.update({"lisa": {"train.lisa.period": 1}, "galore": {"train.galore.update_proj_gap": 2}}.get(method, {}))
        if over.get("train.lora.init") == "corda":
            over["train.lora.corda_samples"] = 16
    recipe = load_recipe(args.recipe or RECIPE, over)
    tcfg = recipe.train
    torch.manual_seed(tcfg.seed)
    tok = load_tokenizer(recipe.model.name, log=quiet)
    data = prepare_data(recipe.data, recipe.curate, recipe.select, recipe.model, tok, None)
    t_load = time.perf_counter()
    model = load_base(recipe.model, tcfg, log=quiet)
    model = setup_model(model, tcfg, data.train_samples)
    setup_s = time.perf_counter() - t_load
    trainable = trainable_count(model, tcfg) if method == "lisa" else count_parameters(model)[0]
    result = train(model, data.train_samples, tcfg, None)
    train_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB, setup + training
    losses = result.losses
    at = {f"loss_{p}": sum(w := losses[max(0, i - 4):i + 1]) / len(w)
          for p, i in ((25, max(0, len(losses) // 4 - 1)), (50, max(0, len(losses) // 2 - 1)), (100, len(losses) - 1))}
    ctx = eval_context(recipe.eval, data.eval_items, data.loss_samples, tcfg.seed, tcfg.max_tokens_per_row,
                       tcfg.loss_chunk_size)
    ctx.limit = args.eval_items
    model.eval()
    suite = "ifeval" if args.data == "if" else "tasks"
    scores = evaluate(model, tok, [suite, "loss"], ctx, args.worker, None)
    out = {"method": args.worker, "overrides": over, "lr": tcfg.lr, "steps": len(losses), "trainable": trainable,
           "peak_rss_mb": round(train_rss), "setup_s": round(setup_s, 1),
           "s_per_step": round(result.seconds / max(1, len(losses)), 3), **at, "losses": losses,
           "eval_loss": scores["loss"]["score"], "n_eval_items": scores[suite]["n"]}
    if args.data == "if":
        out.update(ifeval_loose=scores["ifeval"]["prompt_level_loose"],
                   ifeval_strict=scores["ifeval"]["prompt_level_strict"])
    else:
        out["tasks_em"] = scores["tasks"]["score"]
    if tcfg.base_quant != "none" and args.data == "tasks":  # the merged (dequantized-base) model, scored on the same items
        merged = merged_model(model)
        m = evaluate(merged, tok, ["tasks", "loss"], ctx, args.worker + " merged", None)
        out.update(merged_tasks_em=m["tasks"]["score"], merged_eval_loss=m["loss"]["score"])
    Path(args.result).write_text(json.dumps(out, indent=2))


def fmt_row(r: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    if "ifeval_loose" in r:
        score = f"{pct(r['ifeval_loose'])} / {pct(r['ifeval_strict'])}"
    else:
        score = pct(r["tasks_em"]) + (f" (merged: {pct(r['merged_tasks_em'])})" if "merged_tasks_em" in r else "")
    return (f"| {r['method']} | {r['trainable'] / 1e6:.2f} M | {r['peak_rss_mb']:,} | {r['s_per_step']:.2f} | "
            f"{r['loss_25']:.3f} / {r['loss_50']:.3f} / {r['loss_100']:.3f} | {score} | "
            f"{r['eval_loss']:.4f} | {r['lr']:g} |")


def write_if_recipe(sft: Path, out: Path, eval_items: int) -> tuple[Path, int, int]:
    """Split a synth run's sft.jsonl into train / held-out files in `out` and write the recipe that trains on
    them: the quickstart's model and train settings, IFEval-style and loss suites. Returns (recipe, n_train,
    n_heldout)."""
    import yaml

    if not sft.is_file():
        sys.exit(f"{sft}: no such file; make it with: tunesmith synth --prompts ifeval --out {sft.parent}")
    rows = [line for line in sft.read_text().splitlines() if line.strip()]
    held = [r for i, r in enumerate(rows) if i % IF_HOLDOUT_EVERY == IF_HOLDOUT_EVERY - 1]
    train = [r for i, r in enumerate(rows) if i % IF_HOLDOUT_EVERY != IF_HOLDOUT_EVERY - 1]
    (out / "train.jsonl").write_text("\n".join(train) + "\n")
    (out / "heldout.jsonl").write_text("\n".join(held) + "\n")
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.pop("replay", None)
    recipe.pop("export", None)
    recipe["data"] = {"train": [str(out / "train.jsonl")], "eval": [str(out / "heldout.jsonl")],
                      "max_seq_len": 1024, "on_error": "fail", "overlong": "truncate"}
    recipe["eval"] = {"suites": ["ifeval", "loss"], "ifeval_items": eval_items, "long_max_new_tokens": 384,
                      "batch_size": 32}
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path, len(train), len(held)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=144, help="optimizer steps per method (144: one epoch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-items", type=int, default=None, help="held-out items per suite (default: all 260)")
    ap.add_argument("--full-lr", type=float, default=3e-5, help="lr of full and LISA")
    ap.add_argument("--galore-lr", type=float, default=1e-4)
    ap.add_argument("--init-lr", type=float, default=None,
                    help="lr of LoRA+PiSSA and LoRA+CorDA (default: the quickstart's, as every adapter method)")
    ap.add_argument("--methods", nargs="*", default=None, help="a subset, by name (default: all; --data if: all "
                                                                   "but the checkpointing rows)")
    ap.add_argument("--data", choices=["tasks", "if"], default="tasks",
                    help="tasks: the quickstart's; if: an instruction-following SFT set (--if-sft)")
    ap.add_argument("--if-sft", default=str(ROOT / "runs" / "if-sft" / "sft.jsonl"),
                    help="--data if: a synth run's sft.jsonl (tunesmith synth --prompts ifeval)")
    ap.add_argument("--out", default=None, help="result folder (default runs/bench-tuning[-smoke])")
    ap.add_argument("--smoke", action="store_true", help="3 steps, 8 items: a check that every method runs")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--recipe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.eval_items = 3, 8
    if args.worker:
        return worker(args)
    default_methods = IF_METHODS if args.data == "if" else list(METHODS)
    args.methods = args.methods or default_methods
    name = "bench-tuning" + ("-if" if args.data == "if" else "") + ("-smoke" if args.smoke else "")
    out = Path(args.out or ROOT / "runs" / name)
    out.mkdir(parents=True, exist_ok=True)
    recipe = None
    if args.data == "if":
        if args.eval_items is None:
            args.eval_items = 100
        recipe, n_train, n_held = write_if_recipe(Path(args.if_sft).resolve(), out.resolve(), args.eval_items)
    t0 = time.perf_counter()
    rows = []
    for name in args.methods:
        result = out / f"{slug(name)}.json"
        if not result.is_file():
            cmd = [sys.executable, __file__, "--worker", name, "--result", str(result), "--steps", str(args.steps),
                   "--seed", str(args.seed), "--full-lr", str(args.full_lr), "--galore-lr", str(args.galore_lr)]
            cmd += ["--init-lr", str(args.init_lr)] if args.init_lr else []
            cmd += ["--eval-items", str(args.eval_items)] if args.eval_items else []
            cmd += ["--smoke"] if args.smoke else []
            cmd += ["--data", args.data] + (["--recipe", str(recipe)] if recipe else [])
            t = time.perf_counter()
            print(f"== {name}", flush=True)
            if subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).returncode:
                sys.exit(f"{name} failed")
            print(f"   {time.perf_counter() - t:.0f} s", flush=True)
        rows.append(json.loads(result.read_text()))
        print(fmt_row(rows[-1]), flush=True)
    score_head = "IFEval-style loose / strict" if args.data == "if" else "held-out tasks EM"
    lines = [f"| method | trainable | peak RSS MB | s/step | train loss 25/50/100% | {score_head} | "
             "held-out loss | lr |", "|---|---|---|---|---|---|---|---|"] + [fmt_row(r) for r in rows]
    text = "\n".join(lines)
    by = {r["method"]: r for r in rows}
    notes = []
    for quant in ("int4-base LoRA", "int4-base LoRA, checkpointing"):
        if "LoRA" in by and quant in by:
            a, b = by["LoRA"], by[quant]
            if args.data == "if":
                notes.append(f"{quant}: peak RSS {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x LoRA's, IFEval-style "
                             f"loose {100 * (b['ifeval_loose'] - a['ifeval_loose']):+.1f} pp.")
                continue
            notes.append(f"{quant}: peak RSS {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x LoRA's (target <= 0.5x), "
                         f"tasks EM {100 * (b['tasks_em'] - a['tasks_em']):+.1f} pp (target within 2 pp); merged into "
                         f"the dequantized base: {100 * b['merged_tasks_em']:.1f}% vs {100 * b['tasks_em']:.1f}% on "
                         "the quantized base.")
    for lisa in ("LISA", "LISA, checkpointing"):
        if lisa in by and "full" in by:
            notes.append(f"{lisa}: peak RSS {by[lisa]['peak_rss_mb'] / by['full']['peak_rss_mb']:.2f}x full's "
                         "(target <= 0.5x).")
    for init in ("LoRA+PiSSA", "LoRA+CorDA"):
        if init in by and "LoRA" in by:
            notes.append(f"{init}: loss at 25% {by[init]['loss_25']:.3f} vs default init {by['LoRA']['loss_25']:.3f}.")
    text += "\n\n" + "\n".join(f"- {n}" for n in notes) if notes else ""
    print(text)
    if args.record:
        n_items = rows[0]["n_eval_items"] if rows else 0
        if args.data == "if":
            on = "an instruction-following SFT set (RAFT-verified IFEval-style answers)"
            what = (f"{n_train} training rows from {args.if_sft}, {n_held} held out for the loss; {n_items} "
                    "IFEval-style eval items; each method in its own process")
        else:
            on = "the quickstart tasks"
            what = f"{n_items} held-out task items; each method in its own process; task data only"
        append_section(f"Tuning methods side by side on {on} ({args.steps} steps, batch 8, seed "
                       f"{args.seed}{', SMOKE' if args.smoke else ''})",
                       f"`python benchmarks/tuning_methods.py{' --data if' if args.data == 'if' else ''} "
                       f"--steps {args.steps}"
                       f"{f' --eval-items {args.eval_items}' if args.eval_items else ''}"
                       f"{f' --init-lr {args.init_lr:g}' if args.init_lr else ''}"
                       f"{' --methods ' + ' '.join(repr(m) for m in args.methods) if args.methods != default_methods else ''}"
                       " --record` "
                       f"({time.perf_counter() - t0:.0f} s this invocation; {what})", text)


if __name__ == "__main__":
    main()
