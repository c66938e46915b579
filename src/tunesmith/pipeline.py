"""`tunesmith run`: data -> evaluate base -> train -> save adapter + merged model -> evaluate tuned.

Writes one run directory:
  config.yaml          the resolved recipe
  data_report.json     counts, rejects by reason, token statistics; rejects.jsonl (every bad row)
  metrics.jsonl        one line per training step
  checkpoints/         atomic, resumable
  adapter/             the PEFT adapter (LoRA runs)
  model/               merged full model in safetensors (plain transformers loads it)
  eval/before.json, eval/after.json   per-suite scores with per-item records
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
from .evaluate.suites import eval_loss, eval_tasks
from .export.merge import merged_model, save_adapter, save_merged
from .models import load_model, load_tokenizer, parse_dtype
from .recipe import Recipe, dump_recipe
from .train.checkpoint import latest_checkpoint
from .train.distributed import init_distributed
from .train.loop import total_steps, train
from .train.setup import count_parameters, prepare_model


def evaluate_model(model, tokenizer, data: DataBundle, recipe: Recipe, label: str) -> dict[str, Any]:
    """Run the recipe's eval suites on `model`; returns {suite: result}."""
    results: dict[str, Any] = {}
    cfg = recipe.eval
    if "tasks" in cfg.suites and data.eval_items:
        with ui.progress_bar(f"eval {label}: tasks", len(data.eval_items), "prompts") as adv:
            results["tasks"] = eval_tasks(model, tokenizer, data.eval_items, cfg.max_new_tokens,
                                          cfg.batch_size, progress=adv)
    if "loss" in cfg.suites and data.loss_samples:
        samples = data.loss_samples[: cfg.loss_max_items] if cfg.loss_max_items else data.loss_samples
        results["loss"] = eval_loss(model, samples, recipe.train.max_tokens_per_row, recipe.train.loss_chunk_size)
    return results


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
        before_path = run_dir / "eval" / "before.json"
        if resume and before_path.exists():
            evals["before"] = json.loads(before_path.read_text())
            ui.log("base-model evaluation reused from eval/before.json")
        else:
            evals["before"] = evaluate_model(model, tokenizer, data, recipe, "base")
            _write_json(before_path, evals["before"])

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
        result = train(model, data.train_samples, recipe.train, run_dir, resume=resume, dist_info=info,
                       progress=on_step)
    if not info.is_main:
        return {}
    if result.resumed_from:
        ui.log(f"resumed from step {result.resumed_from}")

    adapter_dir = save_adapter(model, run_dir / "adapter")
    model = merged_model(model)
    model_dir = save_merged(model, tokenizer, run_dir / "model") if recipe.output.merge else None
    if do_eval and recipe.eval.after:
        evals["after"] = evaluate_model(model, tokenizer, data, recipe, "tuned")
        _write_json(run_dir / "eval" / "after.json", evals["after"])

    summary = build_summary(recipe, data, result, evals, adapter_dir, model_dir, time.perf_counter() - t_start)
    _write_json(run_dir / "summary.json", summary)
    (run_dir / "summary.md").write_text(summary_markdown(summary))
    print_summary(summary)
    return summary


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
        "eval": {suite: {"before": before.get(suite), "after": after.get(suite)} for suite in {**before, **after}},
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
        pct = suite == "tasks"
        lines.append(f"| {suite} | {_fmt(v['before'], pct)} | {_fmt(v['after'], pct)} |")
    if s["per_task"]:
        lines += ["", "| task | n | base | tuned |", "|---|---|---|---|"]
        for t, v in s["per_task"].items():
            lines.append(f"| {t} | {v['n']} | {_fmt(v['before'], True)} | {_fmt(v['after'], True)} |")
    return "\n".join(lines) + "\n"


def print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    if not s["eval"]:
        ui.log(f"run directory: {s['run_dir']}  (merged model: {s['merged_model']}; wall {s['wall_seconds']} s)")
        return
    table = Table(title="held-out evaluation: base vs tuned")
    for col in ("suite", "n", "base", "tuned", "change"):
        table.add_column(col, justify="right" if col != "suite" else "left")
    for suite, v in s["eval"].items():
        pct = suite == "tasks"
        change = "-" if v["before"] is None or v["after"] is None else (
            f"{100 * (v['after'] - v['before']):+.1f} pp" if pct else f"{v['after'] - v['before']:+.4f}")
        n = sum(t["n"] for t in s["per_task"].values()) if pct and s["per_task"] else ""
        table.add_row("tasks exact-match" if pct else "held-out loss", str(n), _fmt(v["before"], pct),
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
