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
  phases/<name>/       a recipe's `then:` phases, each a run directory of its own (from the previous
                       phase's model/), and at the end summary.json / summary.md compare base, the
                       recipe's tuned model and every phase on the same items (report.compare)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .. import ui
from ..errors import UserError
from ..io import write_json, write_text
from ..models import base_weights_sha256, load_configured_model, load_tokenizer
from ..report.compare import compare_evals
from ..report.guard import guard_verdict
from ..report.model_card import run_model_card
from ..report.summary import build_summary, print_phases_summary, print_summary, summary_markdown
from ..runlock import run_lock
from ..train.distributed import DistInfo, init_distributed
from .data import DataBundle, print_data_report, validate_data
from .evaluate import check_data_suite, during_training, eval_context, evaluate, load_evals
from .export import Evaluator, export_steps
from .outputs import out_dir, prepare_out
from .prepare import prepare_data
from .recipe import Recipe, dump_recipe, parent_label, phase_recipe
from .report import report_at_end
from .replay import add_replay
from .synth import with_synth_data
from .train import fit, keep_best, load_base, merged_into, method_label, save, setup_model, unsharded


def _holds(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def guard_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Never mix a new run into an old one silently (its phases, in RUN/phases/, included)."""
    if resume or not (_holds(run_dir / "checkpoints") or _holds(run_dir / "phases")):
        return
    if not overwrite:
        raise UserError(f"{run_dir} already holds checkpoints from an earlier run: add --resume to continue it, "
                        "--overwrite to start again in the same directory, or set --output.dir elsewhere")
    for sub in ("checkpoints", "eval", "adapter", "model", "tensorboard", "phases"):
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


def _evaluate_base(model, tokenizer, suites: list[str], ctx, run_dir: Path, resume: bool) -> dict[str, Any]:
    before_dir = run_dir / "eval" / "before"
    if resume and before_dir.is_dir() and any(before_dir.glob("*.json")):
        ui.log("base-model evaluation reused from eval/before/")
        return load_evals(before_dir)
    return evaluate(model, tokenizer, suites, ctx, "base", before_dir)


def run_suites_of(cfg) -> list[str]:
    """The suites a run evaluates before and after: eval.suites, and the guard unless eval.guard is off."""
    return [*cfg.suites, *(["guard"] if cfg.guard and "guard" not in cfg.suites else [])]


def guard_reference(before: dict[str, Any] | None) -> list[str] | None:
    """The base's own guard answers (the reference of the tuned model's guard loss), if the base ran the guard."""
    guard = (before or {}).get("guard")
    if not guard or any("reference_answer" not in r for r in guard["records"]):
        return None
    return [r["reference_answer"] for r in guard["records"]]


def _replay(recipe: Recipe, data: DataBundle, model, tokenizer, run_dir: Path, info: DistInfo) -> None:
    """The base model's own answers mixed into the training rows (recipe.replay), before the model is tuned."""
    if not recipe.replay.ratio:
        return
    if recipe.train.objective != "sft":
        ui.log(f"replay: not used with train.objective {recipe.train.objective} (it mixes answers into SFT rows)")
        return
    if add_replay(recipe.replay, data, model, tokenizer, recipe.model, run_dir if info.is_main else None,
                  recipe.data.max_seq_len, info.world_size) and info.is_main:
        write_json(run_dir / "data_report.json", data.report)


def run(recipe: Recipe, resume: bool = False, do_eval: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run the whole recipe (and its `then:` phases) and return the summary (also written to the run directory).

    Rank 0 holds RUN/.lock throughout: a second run on the same output.dir is refused (runlock)."""
    with ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) == 0:
            stack.enter_context(run_lock(out_dir(recipe.output.dir, "output.dir"), log=ui.log))
        if recipe.then:
            return run_phases(recipe, resume, do_eval, overwrite)
        return run_one(recipe, resume, do_eval, overwrite)


def run_one(recipe: Recipe, resume: bool = False, do_eval: bool = True, overwrite: bool = False,
            base_evals: dict[str, Any] | None = None, written: Recipe | None = None) -> dict[str, Any]:
    """One run of the chain. base_evals: the starting model's evaluation when it is already known (a phase:
    the previous phase's eval/after), used as the summary's base instead of evaluating it again;
    written: the recipe written as config.yaml (default: `recipe`)."""
    t_start = time.perf_counter()
    info = init_distributed()  # under torchrun every rank trains; rank 0 alone evaluates and writes
    do_eval = do_eval and info.is_main
    run_dir = Path(recipe.output.dir)
    if info.is_main:
        guard_run_dir(run_dir, resume, overwrite)
        out_dir(run_dir, "output.dir")
        write_text(run_dir / "config.yaml", dump_recipe(written or recipe))
        ui.log(f"[bold]tunesmith run[/] -> {run_dir}" + (f" ({info.world_size} ranks)" if info.world_size > 1 else ""))
    if recipe.synth is not None:  # synthetic data first, into RUN/synth; its output joins data.train
        recipe = with_synth_data(recipe, run_dir, info.world_size)

    tokenizer = load_tokenizer(recipe.model.name, log=ui.log)
    data = _data(recipe, tokenizer, run_dir, info)
    if "data" in recipe.eval.suites:  # a bad checker or pattern fails now, not after training
        check_data_suite(data.eval_examples, recipe.eval.match)
    tcfg = recipe.train
    model = load_base(recipe.model, tcfg, log=ui.log, load=load_configured_model)  # base_quant: quantized as read
    ctx = eval_context(recipe.eval, data.eval_items, data.loss_samples, tcfg.seed, tcfg.max_tokens_per_row,
                       tcfg.loss_chunk_size, data_items=data.eval_examples)
    evals: dict[str, Any] = {}
    suites = run_suites_of(recipe.eval)
    if do_eval and recipe.eval.before:
        evals["before"] = _evaluate_base(model, tokenizer, suites, ctx, run_dir, resume)
    elif do_eval and base_evals:
        evals["before"] = base_evals
    ctx.guard_reference = guard_reference(evals.get("before"))
    _replay(recipe, data, model, tokenizer, run_dir, info)

    model = setup_model(model, tcfg, data.train_samples)
    during_ctx = eval_context(recipe.eval, data.eval_items, data.loss_samples, tcfg.seed, tcfg.max_tokens_per_row,
                              tcfg.loss_chunk_size, during=True, data_items=data.eval_examples)
    evaluator, best = during_training(model, tokenizer, recipe.eval, during_ctx, run_dir / "checkpoints")
    result = fit(model, data, tcfg, run_dir, resume, info, evaluator, recipe.eval.every, best)
    model = unsharded(model, lambda: load_configured_model(recipe.model, log=ui.quiet), tcfg, info)  # fsdp
    if not info.is_main:
        return {}

    kept = keep_best(model, best, recipe.eval.keep_best, run_dir)
    adapter_dir, model_dir, model = save(model, tokenizer, run_dir, recipe.output.merge)
    if do_eval and recipe.eval.after:
        evals["after"] = evaluate(model, tokenizer, suites, ctx, "tuned", run_dir / "eval" / "after")

    about = {"model": recipe.model.name, "method": method_label(tcfg), "run_dir": recipe.output.dir}
    summary = build_summary(about, data.report, result, evals, adapter_dir, model_dir, time.perf_counter() - t_start)
    summary["checkpoint_kept"] = kept
    summary["merged_into"] = merged_into(tcfg) if model_dir else None
    summary["guard"] = guard_verdict(evals.get("before", {}), evals.get("after", {}))
    write_json(run_dir / "summary.json", summary)
    write_text(run_dir / "summary.md", summary_markdown(summary))
    print_summary(summary)
    if recipe.export.to:
        _export(recipe, data, tokenizer, ctx, run_dir, model_dir)
    write_text(run_dir / "MODEL_CARD.md", run_model_card(run_dir, base_weights_sha256(recipe.model.name)))
    ui.log(f"model card: {run_dir / 'MODEL_CARD.md'}")
    report_at_end(run_dir)
    return summary


PHASES = "phases"


def finished(run_dir: Path) -> bool:
    """A run (or phase) that completed: its summary and, written last, its model card exist."""
    return (run_dir / "summary.json").is_file() and (run_dir / "MODEL_CARD.md").is_file()


def _load_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def run_phases(recipe: Recipe, resume: bool = False, do_eval: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """The recipe's own run into RUN/, then each `then:` phase into RUN/phases/<name>/ from the previous merged
    model, its base evaluation being the previous eval/after; with --resume, finished runs are skipped and the
    unfinished one continues. Ends with the comparison of base, the tuned model and every phase."""
    run_dir = Path(recipe.output.dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("a recipe with then: runs in one process: run each phase as a recipe of its own under "
                        "torchrun (its model.name the previous run's model/)")
    guard_run_dir(run_dir, resume, overwrite)
    out_dir(run_dir, "output.dir")
    own = recipe.model_copy(update={"then": []})
    runs: list[tuple[str, Path, dict[str, Any]]] = []  # (label, run dir, summary)
    if resume and finished(run_dir):
        ui.log(f"--resume: {run_dir} is finished; going on with its phases")
        summary = _load_summary(run_dir)
    else:
        summary = run_one(own, resume, do_eval, overwrite, written=recipe)  # config.yaml: phases included
    runs.append((parent_label(recipe), run_dir, summary))
    for i, phase in enumerate(recipe.then, start=1):
        prev, phase_dir = runs[-1][1], run_dir / PHASES / phase.name
        if resume and finished(phase_dir):
            ui.log(f"--resume: phase {phase.name} is finished ({phase_dir})")
            runs.append((phase.name, phase_dir, _load_summary(phase_dir)))
            continue
        if not (prev / "model" / "config.json").is_file():
            raise UserError(f"phase {phase.name} starts from {prev / 'model'}, which holds no merged model")
        ui.log(f"[bold]phase {i}/{len(recipe.then)}: {phase.name}[/] from {prev / 'model'} -> {phase_dir}")
        sub = phase_recipe(recipe, phase, prev / "model", phase_dir)
        _explain_phase_data(recipe, sub, phase.name)
        base = _carry_evals(prev, phase_dir) if do_eval else None
        runs.append((phase.name, phase_dir, run_one(sub, resume, do_eval, base_evals=base)))
    summary = _phases_summary(runs, do_eval)
    report_at_end(run_dir)  # again, now with the phases and the comparison
    return summary


def _explain_phase_data(parent: Recipe, sub: Recipe, name: str) -> None:
    """Say what a phase trains on when its synth output replaces the recipe's training rows."""
    if sub.synth is None or sub.synth.feed == "none":
        return
    dropped = []
    if parent.data.train and not sub.data.train:
        dropped.append("data.train files")
    if parent.data.tasks and parent.data.tasks.n_train and sub.data.tasks and not sub.data.tasks.n_train:
        dropped.append("generated training tasks (data.tasks.n_train)")
    extra = sub.data.train or []
    ui.log(f"phase {name}: trains on its synth output (synth/{sub.synth.feed}.jsonl)"
           + (f" and {len(extra)} data.train entries of its own" if extra else "")
           + (f"; the recipe's {' and '.join(dropped)} are not used (name them in the phase to keep them)"
              if dropped else ""))


def _carry_evals(prev: Path, phase_dir: Path) -> dict[str, Any]:
    """The previous run's eval/after, copied to the phase's eval/before: the phase's base, not evaluated again."""
    src, dst = prev / "eval" / "after", phase_dir / "eval" / "before"
    if not src.is_dir():
        return {}
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.json")):
        shutil.copyfile(f, dst / f.name)
    return load_evals(dst)


def _phases_summary(runs: list[tuple[str, Path, dict[str, Any]]], do_eval: bool) -> dict[str, Any]:
    """RUN/summary.json and summary.md: the recipe's own summary, each phase's, and the comparison."""
    run_dir = runs[0][1]
    summary = {k: v for k, v in runs[0][2].items() if k not in ("phases", "comparison", "final_model")}
    summary["phases"] = [{"name": label, "run_dir": str(d), "method": s.get("method"), "train": s.get("train"),
                          "merged_model": s.get("merged_model"), "wall_seconds": s.get("wall_seconds")}
                         for label, d, s in runs[1:]]
    summary["final_model"] = runs[-1][2].get("merged_model")
    summary["total_wall_seconds"] = round(sum(s.get("wall_seconds") or 0 for _, _, s in runs), 1)  # each run's last
    models = [("base", run_dir / "eval" / "before")] + [(label, d / "eval" / "after") for label, d, _ in runs]
    models = [(label, load_evals(d)) for label, d in models if d.is_dir() and any(d.glob("*.json"))]
    if do_eval and len(models) > 1:
        summary["comparison"] = compare_evals(models)
    write_json(run_dir / "summary.json", summary)
    write_text(run_dir / "summary.md", summary_markdown(summary))
    print_phases_summary(summary)
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
