"""Specialise without forgetting: the demo's data tuned with no guard, with replay at several ratios, with
a KL term to the base, and with WiSE-FT interpolation; held-out tasks exact-match (specialisation) and the
guard's IFEval-style prompt-level loose (general), base vs each, with 95% bootstrap intervals paired by item,
and the time each costs.

    flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/guard_benchmark.py \\
        --variants none,replay-0.1,replay-0.25,replay-0.5,kl,interpolate --guard-items 200 --record

Every variant is `recipes/quickstart.yaml` (the demo: 1152 generated task rows, LoRA r16, one epoch) with
eval.suites [tasks] plus the guard, no export, into runs/bench_guard/<variant>/. The base is evaluated once
(in the first variant run) and given to the others as their base, so every variant is compared with the same
base answers. `replay-R` sets replay.ratio R; `kl` is replay.ratio 0.25 with train.kl_to_base --kl;
`interpolate` blends the base and the `none` variant's model at each --alphas and keeps, by the rule, the
largest tasks score among the alphas whose guard change is not below 0 beyond its interval (else the best
guard score). A finished variant (its summary.json and MODEL_CARD.md) is not run again, so an interrupted
benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from record import append_section

OUT = Path("runs/bench_guard")


def variant_overrides(name: str, kl: float) -> dict:
    if name == "none":
        return {"replay.ratio": 0.0}
    if name.startswith("replay-"):
        return {"replay.ratio": float(name.split("-", 1)[1])}
    if name == "kl":
        return {"replay.ratio": 0.25, "train.kl_to_base": kl}
    raise SystemExit(f"unknown variant {name!r}: none, replay-R, kl, interpolate")


def run_variant(name: str, args, base_evals: dict | None) -> dict:
    from tunesmith.stages.recipe import load_recipe
    from tunesmith.stages.run import finished, run_one

    run_dir = OUT / name
    if finished(run_dir):
        return json.loads((run_dir / "summary.json").read_text())
    overrides = {"output.dir": str(run_dir), "export.to": [], "eval.suites": ["tasks"], "eval.guard": True,
                 "eval.guard_items": args.guard_items, "eval.guard_max_new_tokens": args.guard_tokens,
                 "model.dtype": args.dtype, "eval.before": base_evals is None, **variant_overrides(name, args.kl)}
    recipe = load_recipe(args.recipe, overrides)
    return run_one(recipe, resume=True, base_evals=base_evals)


def interpolate_variant(args, base_evals: dict) -> tuple[dict, list[dict], float]:
    """The WiSE-FT sweep on the `none` model: (the chosen alpha's evals, every alpha's row, seconds)."""
    from tunesmith.evaluate.harness import run_suites
    from tunesmith.export.soup import interpolate
    from tunesmith.io import write_json
    from tunesmith.models import ModelConfig, load_model_and_tokenizer
    from tunesmith.report.guard import guard_verdict
    from tunesmith.data.tasks import HELD_OUT_TASKS, generate_train_eval
    from tunesmith.stages.evaluate import EvalConfig, eval_context, load_evals
    from tunesmith.stages.run import guard_reference
    from tunesmith.ui import quiet

    t0 = time.perf_counter()
    base, tok = load_model_and_tokenizer(ModelConfig(name="smollm2-135m-instruct", dtype=args.dtype), log=quiet)
    tuned, _ = load_model_and_tokenizer(ModelConfig(name=str(OUT / "none" / "model"), dtype=args.dtype), log=quiet)
    vessel, _ = load_model_and_tokenizer(ModelConfig(name=str(OUT / "none" / "model"), dtype=args.dtype), log=quiet)
    opts = EvalConfig(suites=["tasks", "guard"], guard_items=args.guard_items, guard_max_new_tokens=args.guard_tokens,
                      max_new_tokens=20, batch_size=64)
    ctx = eval_context(opts, generate_train_eval(0, HELD_OUT_TASKS, 0)[1], [], 0)
    ctx.guard_reference = guard_reference(base_evals)
    rows = []
    for alpha in args.alphas:
        d = OUT / "interpolate" / f"alpha-{alpha}"
        if d.is_dir() and len(list(d.glob("*.json"))) == 2:
            evals = load_evals(d)
        else:
            vessel.load_state_dict(interpolate(base, tuned, alpha))
            evals = run_suites(vessel, tok, ["tasks", "guard"], ctx, f"alpha {alpha}")
            for suite, result in evals.items():
                write_json(d / f"{suite}.json", result)
        rows.append({"alpha": alpha, "evals": evals, "verdict": guard_verdict(base_evals, evals)})
    keep = [r for r in rows if r["verdict"]["general"]["change"]["high"] >= 0]
    chosen = max(keep, key=lambda r: r["verdict"]["specialisation"]["after"]["mean"]) if keep else \
        max(rows, key=lambda r: r["verdict"]["general"]["after"]["mean"])
    return chosen, rows, time.perf_counter() - t0


def _pct(iv: dict) -> str:
    return f"{100 * iv['mean']:.1f} [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]"


def _pp(iv: dict) -> str:
    return f"{100 * iv['mean']:+.1f} [{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}]"


def table(rows: list[tuple[str, dict, str]], base_row: dict) -> str:
    lines = ["| variant | tasks exact-match % [95% CI] | tasks vs base, pp | guard prompt-loose % [95% CI] | "
             "guard vs base, pp | guard loss on base answers | time |", "|---|---|---|---|---|---|---|"]
    g, s = base_row["general"], base_row["specialisation"]
    lines.append(f"| base | {_pct(s['before'])} | | {_pct(g['before'])} | | "
                 f"{base_row['drift']['before']:.3f} | |" if base_row.get("drift") else
                 f"| base | {_pct(s['before'])} | | {_pct(g['before'])} | | | |")
    for name, v, cost in rows:
        drift = f"{v['drift']['after']:.3f}" if v.get("drift") else "-"
        lines.append(f"| {name} | {_pct(v['specialisation']['after'])} | {_pp(v['specialisation']['change'])} | "
                     f"{_pct(v['general']['after'])} | {_pp(v['general']['change'])} | {drift} | {cost} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="none,replay-0.1,replay-0.25,replay-0.5,kl,interpolate")
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--guard-items", type=int, default=200)
    ap.add_argument("--guard-tokens", type=int, default=384)
    ap.add_argument("--kl", type=float, default=0.5, help="train.kl_to_base of the kl variant")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    from tunesmith.report.guard import guard_verdict
    from tunesmith.stages.evaluate import load_evals

    t0 = time.perf_counter()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    trained = [n for n in names if n != "interpolate"]
    if "interpolate" in names and "none" not in trained:
        trained.insert(0, "none")
    base_evals, rows = None, []
    for name in trained:
        summary = run_variant(name, args, base_evals)
        if base_evals is None:
            base_evals = load_evals(OUT / name / "eval" / "before")
        after = load_evals(OUT / name / "eval" / "after")
        report = json.loads((OUT / name / "data_report.json").read_text())
        replay_s = (report.get("replay") or {}).get("seconds", 0.0)
        cost = f"train {summary['train']['seconds']:.0f} s, replay answers {replay_s:.0f} s, " \
               f"run {summary['wall_seconds']:.0f} s"
        rows.append((name, guard_verdict(base_evals, after), cost))
    sweep_text = ""
    if "interpolate" in names:
        chosen, sweep, secs = interpolate_variant(args, base_evals)
        rows.append((f"interpolate (alpha {chosen['alpha']})", chosen["verdict"],
                     f"sweep of {len(sweep)} alphas {secs:.0f} s (after training `none`)"))
        sweep_text = "\n\nInterpolation sweep (WiSE-FT between the base and `none`): " + "; ".join(
            f"alpha {r['alpha']}: tasks {_pct(r['verdict']['specialisation']['after'])}, guard "
            f"{_pct(r['verdict']['general']['after'])}" for r in sweep)
    base_row = guard_verdict(base_evals, base_evals)
    text = table(rows, base_row) + sweep_text + (
        f"\n\nGuard: {args.guard_items} IFEval-style items (evalsets.ifeval.guard_items), answers up to "
        f"{args.guard_tokens} new tokens; tasks: the 260 held-out task items. Intervals: 95% percentile bootstrap "
        f"(10,000 resamples), changes paired by item against the base. Model dtype {args.dtype}.")
    print(text)
    if args.record:
        append_section("Specialise without forgetting: no guard vs replay vs KL vs interpolation (demo data)",
                       f"`flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/guard_benchmark.py --variants "
                       f"{args.variants} --guard-items {args.guard_items} --guard-tokens {args.guard_tokens} "
                       f"--dtype {args.dtype} --record` ({time.perf_counter() - t0:.0f} s)", text)


if __name__ == "__main__":
    main()
