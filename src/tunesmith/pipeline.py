"""`tunesmith run`: data -> evaluate base -> train -> save adapter + merged model -> evaluate tuned.

Writes one run directory:
  config.yaml          the resolved recipe
  data_report.json     counts, rejects by reason, token statistics; rejects.jsonl (every bad row)
  metrics.jsonl        one line per training step
  checkpoints/         atomic, resumable
  adapter/             the PEFT adapter (LoRA runs)
  model/               merged full model in safetensors (plain transformers loads it)
  eval/before/<suite>.json, eval/after/<suite>.json   scores with per-item records
  summary.json, summary.md            the short story of the run
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from . import ui
from .errors import UserError
from .data.prepare import DataBundle, prepare_data, print_data_report
from .evaluate.harness import LOWER_IS_BETTER, EvalContext, run_suites
from .export.merge import merged_model, save_adapter, save_merged
from .models import load_model, load_tokenizer, parse_dtype
from .recipe import Recipe, dump_recipe
from .train.checkpoint import latest_checkpoint, load_checkpoint
from .train.distributed import init_distributed
from .train.loop import BestTracker, total_steps, train
from .train.setup import count_parameters, load_trainable_state, prepare_model


def eval_context(recipe: Recipe, data: DataBundle, during: bool = False) -> EvalContext:
    cfg = recipe.eval
    return EvalContext(task_items=data.eval_items, loss_samples=data.loss_samples,
                       max_new_tokens=cfg.max_new_tokens, long_max_new_tokens=cfg.long_max_new_tokens,
                       batch_size=cfg.batch_size, limit=cfg.during_limit if during else cfg.limit,
                       ifeval_items=cfg.ifeval_items, humaneval_samples=0 if during else cfg.humaneval_samples,
                       seed=recipe.train.seed, max_tokens_per_row=recipe.train.max_tokens_per_row,
                       loss_chunk_size=recipe.train.loss_chunk_size)


def _available_suites(suites: list[str], data: DataBundle) -> list[str]:
    """Suites that have something to evaluate on (tasks/robustness need generated eval items)."""
    need_items = {"tasks", "robustness"}
    return [s for s in suites if not (s in need_items and not data.eval_items) and not (s == "loss" and not data.loss_samples)]


def evaluate_model(model, tokenizer, data: DataBundle, recipe: Recipe, label: str, out_dir: Path) -> dict[str, Any]:
    """Run the recipe's eval suites on `model`; writes out_dir/<suite>.json; returns {suite: result}."""
    results = run_suites(model, tokenizer, _available_suites(recipe.eval.suites, data), eval_context(recipe, data),
                         label)
    for suite, result in results.items():
        _write_json(out_dir / f"{suite}.json", result)
    return results


def _load_evals(out_dir: Path) -> dict[str, Any]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))}


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def _guard_existing_run(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Never mix a new run into an old one silently."""
    ckpts = run_dir / "checkpoints"
    if resume or not ckpts.is_dir() or not any(ckpts.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{run_dir} already holds checkpoints from an earlier run: add --resume to continue it, "
                        "--overwrite to start again in the same directory, or set --output.dir elsewhere")
    for sub in ("checkpoints", "eval", "adapter", "model", "tensorboard"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    for name in ("metrics.jsonl", "summary.json", "summary.md"):
        (run_dir / name).unlink(missing_ok=True)


def _during_training(model, tokenizer, data: DataBundle, recipe: Recipe, run_dir: Path):
    """The evaluator called every eval.every steps, and the best-checkpoint tracker."""
    cfg = recipe.eval
    if not cfg.every:
        return None, None
    suites = _available_suites(cfg.during, data)
    ctx = eval_context(recipe, data, during=True)

    def evaluate(step: int) -> dict[str, float]:
        results = run_suites(model, tokenizer, suites, ctx, f"step {step}")
        return {suite: r["score"] for suite, r in results.items()}

    best = BestTracker(run_dir / "checkpoints", cfg.best_metric, cfg.best_metric in LOWER_IS_BETTER) \
        if cfg.best_metric else None
    return evaluate, best


def _keep_best(model, recipe: Recipe, best, run_dir: Path) -> dict[str, Any] | None:
    """With eval.best_metric and keep_best: load the best checkpoint's weights before saving.

    Returns what was kept and why (it goes into the summary)."""
    if best is None or best.step is None:
        return None
    last = best.history[-1] if best.history else None
    why = {"metric": best.metric, "best_step": best.step, "best_value": best.value,
           "last_step": last["step"] if last else None, "last_value": last["value"] if last else None,
           "direction": "lower is better" if best.lower else "higher is better", "history": best.history}
    if not recipe.eval.keep_best or last is None or best.step == last["step"]:
        why["kept_step"] = last["step"] if last else best.step
        why["reason"] = "the last evaluated step is the best" if last and best.step == last["step"] else \
            "eval.keep_best is off: the last step is kept"
        return why
    weights, _, _ = load_checkpoint(run_dir / "checkpoints" / f"step-{best.step:06d}")
    load_trainable_state(model, weights)
    why["kept_step"] = best.step
    why["reason"] = (f"{best.metric} was best at step {best.step} ({best.value:.4f}) vs {last['value']:.4f} at the "
                     f"last evaluation (step {last['step']})")
    ui.log(f"keeping checkpoint step {best.step}: {why['reason']}")
    return why


def run(recipe: Recipe, resume: bool = False, do_eval: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run the whole recipe and return the summary (also written to the run directory)."""
    t_start = time.perf_counter()
    info = init_distributed()  # under torchrun every rank trains; rank 0 alone evaluates and writes
    if not info.is_main:
        do_eval = False
    run_dir = Path(recipe.output.dir)
    if info.is_main:
        _guard_existing_run(run_dir, resume, overwrite)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_recipe(recipe))
        ui.log(f"[bold]tunesmith run[/] -> {run_dir}" + (f" ({info.world_size} ranks)" if info.world_size > 1 else ""))

    tokenizer = load_tokenizer(recipe.model.name, log=ui.log)
    data = prepare_data(recipe, tokenizer, run_dir if info.is_main else None)
    if info.is_main:
        print_data_report(data.report)
        _write_json(run_dir / "data_report.json", data.report)

    model = load_model(recipe.model.name, parse_dtype(recipe.model.dtype), recipe.model.trust_remote_code, log=ui.log)
    evals: dict[str, Any] = {}
    if do_eval and recipe.eval.before:
        before_dir = run_dir / "eval" / "before"
        if resume and before_dir.is_dir() and any(before_dir.glob("*.json")):
            evals["before"] = _load_evals(before_dir)
            ui.log("base-model evaluation reused from eval/before/")
        else:
            evals["before"] = evaluate_model(model, tokenizer, data, recipe, "base", before_dir)

    torch.manual_seed(recipe.train.seed)  # LoRA initialisation is part of the reproducible run
    model = prepare_model(model, recipe.train)
    trainable, total = count_parameters(model)
    n_steps = total_steps(len(data.train_samples), recipe.train)
    if info.is_main:
        ui.log(f"training {recipe.train.method}: {trainable:,} of {total:,} parameters, "
               f"{len(data.train_samples)} samples, {n_steps} steps of {recipe.train.batch_size}")
    latest = latest_checkpoint(run_dir / "checkpoints") if resume else None
    start = int(latest.name.split("-")[1]) if latest else 0
    with ExitStack() as stack:
        on_step = None
        if info.is_main:  # one progress bar, on rank 0: steps, loss, tokens/s, ETA
            advance = stack.enter_context(ui.progress_bar("train", n_steps, "steps", completed=start))
            on_step = lambda step, n, rec: advance(1, extra=f"loss {rec['loss']:.4f}  {rec['tokens_per_s']:.0f} tok/s")  # noqa: E731
        evaluate, best = _during_training(model, tokenizer, data, recipe, run_dir)
        result = train(model, data.train_samples, recipe.train, run_dir, resume=resume, dist_info=info,
                       progress=on_step, evaluate=evaluate, eval_every=recipe.eval.every, best=best)
    if not info.is_main:
        return {}
    if result.resumed_from:
        ui.log(f"resumed from step {result.resumed_from}")

    kept = _keep_best(model, recipe, best, run_dir)
    adapter_dir = save_adapter(model, run_dir / "adapter")
    model = merged_model(model)
    model_dir = save_merged(model, tokenizer, run_dir / "model") if recipe.output.merge else None
    if do_eval and recipe.eval.after:
        evals["after"] = evaluate_model(model, tokenizer, data, recipe, "tuned", run_dir / "eval" / "after")

    summary = build_summary(recipe, data, result, evals, adapter_dir, model_dir, time.perf_counter() - t_start)
    summary["checkpoint_kept"] = kept
    _write_json(run_dir / "summary.json", summary)
    (run_dir / "summary.md").write_text(summary_markdown(summary))
    print_summary(summary)
    return summary


SUITE_TITLES = {"tasks": "tasks exact-match", "loss": "held-out loss", "robustness": "robustness (mean over phrasings)",
                "ifbench": "IFBench prompt-level strict", "ifeval": "IFEval prompt-level strict",
                "humaneval": "HumanEval pass@1"}


def _scores(evals: dict[str, Any], when: str) -> dict[str, float]:
    return {suite: r["score"] for suite, r in evals.get(when, {}).items()}


def build_summary(recipe, data, result, evals, adapter_dir, model_dir, seconds) -> dict[str, Any]:
    before, after = _scores(evals, "before"), _scores(evals, "after")
    per_task = {}
    if "tasks" in evals.get("after", {}):
        for task, v in evals["after"]["tasks"]["per_task"].items():
            b = evals.get("before", {}).get("tasks", {}).get("per_task", {}).get(task, {})
            per_task[task] = {"before": b.get("exact_match"), "after": v["exact_match"], "n": v["n"]}
    return {
        "model": recipe.model.name, "method": recipe.train.method, "run_dir": recipe.output.dir,
        "data": {k: data.report[k] for k in ("total", "kept", "rejected", "by_reason")},
        "train": {"steps": result.steps, "final_loss": result.losses[-1] if result.losses else None,
                  "resumed_from": result.resumed_from, "seconds": round(result.seconds, 1),
                  "tokens_per_s": round(result.tokens / result.seconds, 1) if result.seconds else None},
        "eval": {suite: {"before": before.get(suite), "after": after.get(suite),
                         "n": (evals.get("after") or evals.get("before") or {}).get(suite, {}).get("n")}
                 for suite in {**before, **after}},
        "per_task": per_task,
        "adapter": str(adapter_dir) if adapter_dir else None, "merged_model": str(model_dir) if model_dir else None,
        "wall_seconds": round(seconds, 1),
    }


def _fmt(v, pct: bool) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.4f}"


def summary_markdown(s: dict[str, Any]) -> str:
    lines = [f"# tunesmith run: {s['run_dir']}", "", f"- model: {s['model']} ({s['method']})",
             f"- data: {s['data']['kept']} kept of {s['data']['total']} ({s['data']['rejected']} rejected)",
             f"- training: {s['train']['steps']} steps, final loss {s['train']['final_loss']}, "
             f"{s['train']['tokens_per_s']} tokens/s", f"- wall time: {s['wall_seconds']} s", "",
             "| suite | base | tuned |", "|---|---|---|"]
    for suite, v in s["eval"].items():
        pct = suite not in LOWER_IS_BETTER
        lines.append(f"| {suite} | {_fmt(v['before'], pct)} | {_fmt(v['after'], pct)} |")
    if s.get("checkpoint_kept"):
        k = s["checkpoint_kept"]
        lines += ["", f"Checkpoint kept: step {k['kept_step']} by {k['metric']} ({k['direction']}): {k['reason']}."]
    if s["per_task"]:
        lines += ["", "| task | n | base | tuned |", "|---|---|---|---|"]
        for t, v in s["per_task"].items():
            lines.append(f"| {t} | {v['n']} | {_fmt(v['before'], True)} | {_fmt(v['after'], True)} |")
    return "\n".join(lines) + "\n"


def print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    if s.get("checkpoint_kept"):
        ui.log(f"checkpoint kept: step {s['checkpoint_kept']['kept_step']} ({s['checkpoint_kept']['reason']})")
    if not s["eval"]:
        ui.log(f"run directory: {s['run_dir']}  (merged model: {s['merged_model']}; wall {s['wall_seconds']} s)")
        return
    table = Table(title="held-out evaluation: base vs tuned")
    for col in ("suite", "n", "base", "tuned", "change"):
        table.add_column(col, justify="right" if col != "suite" else "left")
    for suite, v in s["eval"].items():
        pct = suite not in LOWER_IS_BETTER
        change = "-" if v["before"] is None or v["after"] is None else (
            f"{100 * (v['after'] - v['before']):+.1f} pp" if pct else f"{v['after'] - v['before']:+.4f}")
        table.add_row(SUITE_TITLES.get(suite, suite), str(v.get("n") or ""), _fmt(v["before"], pct),
                      _fmt(v["after"], pct), change)
    ui.console.print(table)
    if s["per_task"]:
        per = Table(title="exact-match per task type")
        for col in ("task", "n", "base", "tuned"):
            per.add_column(col)
        for t, v in s["per_task"].items():
            per.add_row(t, str(v["n"]), _fmt(v["before"], True), _fmt(v["after"], True))
        ui.console.print(per)
    ui.log(f"run directory: {s['run_dir']}  (merged model: {s['merged_model']}; wall {s['wall_seconds']} s)")
