"""`tunesmith run`: the chain. data -> evaluate base -> train -> save -> evaluate tuned, into one
run directory (`tunesmith train` is the same without evaluation; `tunesmith data check` is its
data half).

  config.yaml          the resolved recipe
  data_report.json     counts, rejects by reason, token statistics; rejects.jsonl (every bad row)
  curation/, selection/   every row removed or not selected, with its reason and scores
  metrics.jsonl        one line per training step
  checkpoints/         atomic, resumable (best.json with eval.best_metric)
  adapter/             the PEFT adapter (LoRA runs)
  model/               merged full model in safetensors (plain transformers loads it)
  eval/before/<suite>.json, eval/after/<suite>.json   scores with per-item records
  summary.json, summary.md            the short story of the run
  export/              the recipe's export steps (export_report.json: size and scores of each)
  MODEL_CARD.md        provenance: base weights hash, data sources and funnel, config, evals, exports
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from .. import ui
from ..errors import UserError
from ..io import write_json, write_text
from ..models import base_weights_sha256, load_configured_model, load_tokenizer
from ..report.model_card import run_model_card
from ..report.summary import build_summary, print_summary, summary_markdown
from ..train.distributed import DistInfo, init_distributed
from .data import DataBundle, print_data_report, validate_data
from .evaluate import check_data_suite, during_training, eval_context, evaluate, load_evals
from .export import Evaluator, export_steps
from .outputs import out_dir, prepare_out
from .prepare import prepare_data
from .recipe import Recipe, dump_recipe
from .synth import with_synth_data
from .train import fit, keep_best, save, setup_model


def guard_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
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


def _data(recipe: Recipe, tokenizer, run_dir: Path | None, info: DistInfo) -> DataBundle:
    data = prepare_data(recipe.data, recipe.curate, recipe.select, recipe.model, tokenizer,
                        run_dir if info.is_main else None, objective=recipe.train.objective)
    if info.is_main:
        print_data_report(data.report)
        if run_dir is not None:
            write_json(run_dir / "data_report.json", data.report)
    return data


def _evaluate_base(model, tokenizer, recipe: Recipe, ctx, run_dir: Path, resume: bool) -> dict[str, Any]:
    before_dir = run_dir / "eval" / "before"
    if resume and before_dir.is_dir() and any(before_dir.glob("*.json")):
        ui.log("base-model evaluation reused from eval/before/")
        return load_evals(before_dir)
    return evaluate(model, tokenizer, recipe.eval.suites, ctx, "base", before_dir)


def run(recipe: Recipe, resume: bool = False, do_eval: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run the whole recipe and return the summary (also written to the run directory)."""
    t_start = time.perf_counter()
    info = init_distributed()  # under torchrun every rank trains; rank 0 alone evaluates and writes
    do_eval = do_eval and info.is_main
    run_dir = Path(recipe.output.dir)
    if info.is_main:
        guard_run_dir(run_dir, resume, overwrite)
        out_dir(run_dir, "output.dir")
        write_text(run_dir / "config.yaml", dump_recipe(recipe))
        ui.log(f"[bold]tunesmith run[/] -> {run_dir}" + (f" ({info.world_size} ranks)" if info.world_size > 1 else ""))
    if recipe.synth is not None:  # synthetic data first, into RUN/synth; its output joins data.train
        recipe = with_synth_data(recipe, run_dir, info.world_size)

    tokenizer = load_tokenizer(recipe.model.name, log=ui.log)
    data = _data(recipe, tokenizer, run_dir, info)
    if "data" in recipe.eval.suites:  # a bad checker or pattern fails now, not after training
        check_data_suite(data.eval_examples, recipe.eval.match)
    model = load_configured_model(recipe.model, log=ui.log)
    tcfg = recipe.train
    ctx = eval_context(recipe.eval, data.eval_items, data.loss_samples, tcfg.seed, tcfg.max_tokens_per_row,
                       tcfg.loss_chunk_size, data_items=data.eval_examples)
    evals: dict[str, Any] = {}
    if do_eval and recipe.eval.before:
        evals["before"] = _evaluate_base(model, tokenizer, recipe, ctx, run_dir, resume)

    model = setup_model(model, tcfg)
    during_ctx = eval_context(recipe.eval, data.eval_items, data.loss_samples, tcfg.seed, tcfg.max_tokens_per_row,
                              tcfg.loss_chunk_size, during=True, data_items=data.eval_examples)
    evaluator, best = during_training(model, tokenizer, recipe.eval, during_ctx, run_dir / "checkpoints")
    result = fit(model, data, tcfg, run_dir, resume, info, evaluator, recipe.eval.every, best)
    if not info.is_main:
        return {}

    kept = keep_best(model, best, recipe.eval.keep_best, run_dir)
    adapter_dir, model_dir, model = save(model, tokenizer, run_dir, recipe.output.merge)
    if do_eval and recipe.eval.after:
        evals["after"] = evaluate(model, tokenizer, recipe.eval.suites, ctx, "tuned", run_dir / "eval" / "after")

    method = tcfg.method if tcfg.objective == "sft" else f"{tcfg.method}, dpo ({tcfg.dpo.loss})"
    about = {"model": recipe.model.name, "method": method, "run_dir": recipe.output.dir}
    summary = build_summary(about, data.report, result, evals, adapter_dir, model_dir, time.perf_counter() - t_start)
    summary["checkpoint_kept"] = kept
    write_json(run_dir / "summary.json", summary)
    write_text(run_dir / "summary.md", summary_markdown(summary))
    print_summary(summary)
    if recipe.export.to:
        _export(recipe, data, tokenizer, ctx, run_dir, model_dir)
    write_text(run_dir / "MODEL_CARD.md", run_model_card(run_dir, base_weights_sha256(recipe.model.name)))
    ui.log(f"model card: {run_dir / 'MODEL_CARD.md'}")
    return summary


def _export(recipe: Recipe, data: DataBundle, tokenizer, ctx, run_dir: Path, model_dir: Path | None) -> None:
    """The recipe's export steps on RUN/model into RUN/export/, scored on the run's held-out items."""
    if model_dir is None:
        raise UserError("export needs the merged model: set output.merge: true (or drop the export section)")
    cfg = recipe.export
    evaluate_export = None
    if cfg.suites:
        opts = recipe.eval.model_copy(update={"suites": cfg.suites, "limit": cfg.limit,
                                              "ifeval_items": cfg.ifeval_items})
        evaluate_export = Evaluator(opts, eval_context(opts, data.eval_items, data.loss_samples, recipe.train.seed,
                                                       recipe.train.max_tokens_per_row,
                                                       data_items=data.eval_examples), tokenizer)
    calibration = [s.input_ids for s in data.train_samples[:cfg.calibration]]
    command = f"tunesmith export {run_dir} --out {run_dir / 'export'} --overwrite --to {','.join(cfg.to)}" + \
        (f" --suites {','.join(cfg.suites)}" if cfg.suites else "")
    export_steps(model_dir, out_dir(run_dir / "export"), cfg, evaluate_export, calibration, recipe.model.name,
                 command)


def run_recipe(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> int:
    """The `run` verb."""
    run(recipe, resume=resume, overwrite=overwrite)
    return 0


def train_recipe(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> int:
    """The `train` verb: the chain without evaluation."""
    run(recipe, resume=resume, do_eval=False, overwrite=overwrite)
    return 0


CHECK_WRITES = ("data_report.json", "rejects.jsonl", "trained.jsonl", "curation", "selection")  # what `data check --out` writes


def check_recipe(recipe: Recipe, out: str | None = None, overwrite: bool = False, validate_only: bool = False) -> int:
    """The `data check` verb: the data half of the recipe, with data_report.json and rejects.jsonl in --out
    (overwrite: replace the outputs of an earlier check there; validate_only: read and validate the
    rows in flat memory, without tokenizing)."""
    decontam = recipe.curate.decontaminate
    inputs = [*recipe.data.train_paths(), *recipe.data.eval, *(recipe.select.target if recipe.select else []),
              *(getattr(decontam, "eval_files", ()) if decontam else ())]
    out_path = prepare_out(out, overwrite=overwrite, inputs=inputs, writes=CHECK_WRITES,
                           marker="data_report.json") if out else None
    if validate_only:
        report = validate_data(recipe.data, out_path / "rejects.jsonl" if out_path else None)
        if out_path is not None:
            write_json(out_path / "data_report.json", report)
        return 0
    tokenizer = load_tokenizer(recipe.model.name, log=ui.log)
    _data(recipe, tokenizer, out_path, DistInfo())
    return 0
