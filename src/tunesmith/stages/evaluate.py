"""The evaluate stage: the eval suites on a model, before and after tuning in a run, cheap suites
during training, and the `tunesmith eval` verb.

Every verb writes evaluations in one layout: `<run dir>/eval/<label>/<suite>.json` (a run writes
labels `before` and `after`; `tunesmith eval RUN` evaluates RUN/model, the tuned model, as
`after`; any other model goes to `runs/eval/<name>/eval/model/`). An existing suite file is only
replaced with --overwrite.

`tunesmith eval MODEL --data FILE` scores the user's own held-out conversations twice: by
generation (the `data` suite: the reply to every turn before the last assistant turn, matched
with --match against that turn) and by loss; those two are the default suites when --data is given.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import Field, field_validator, model_validator

from .. import ui
from ..config import Section, split_csv
from ..data.chat import TokenizedExample
from ..data.example import Example
from ..data.samples import tokenize_examples
from ..data.load import load_examples
from ..data.packing import MAX_TOKENS_PER_ROW
from ..data.tasks import HELD_OUT_TASKS, TaskItem, generate_train_eval
from ..errors import DataError, UsageError
from ..evaluate.harness import LOWER_IS_BETTER, SUITES, EvalContext, run_suites
from ..evaluate.owndata import check_match_spec, prepare_items
from ..io import write_json
from ..models import ModelConfig, load_model_and_tokenizer
from ..report.tables import results_table
from ..train.tracking import BestTracker


class SuiteOptions(Section):
    """Which suites, and how generation is bounded (shared by the recipe and `tunesmith eval`)."""

    suites: list[str] = Field(["tasks", "loss"], description="tasks, loss, data (your held-out conversations, by "
                                                             "generation), robustness, ifbench, ifeval, humaneval, "
                                                             "guard (general ability: IFEval-style answers and the "
                                                             "loss on the base's answers)")
    max_new_tokens: int = Field(32, ge=1, description="new tokens for short-answer suites (tasks, robustness)")
    long_max_new_tokens: int = Field(512, ge=1, description="new tokens for open-ended suites (ifbench, ifeval, "
                                                            "humaneval)")
    batch_size: int = Field(48, ge=1, description="sequences the generation engine decodes together (its rows)")
    limit: int | None = Field(None, ge=1, description="items per suite (default: all)")
    ifeval_items: int = Field(100, ge=1, description="IFEval-style items generated")
    guard_items: int = Field(100, ge=1, description="guard suite: its fixed IFEval-style general prompts")
    guard_max_new_tokens: int = Field(384, ge=1, description="guard suite: new tokens per answer")
    humaneval_samples: int = Field(0, ge=0, description="sampled completions per problem for pass@k (0: greedy only)")
    match: str = Field("normalized", description="data suite: how a reply is compared with the reference: exact, "
                                                 "normalized, contains, regex, or your checker module:function or "
                                                 "file.py:function (a row's `match` field overrides it)")
    data_max_new_tokens: int = Field(256, ge=1, description="new tokens for the data suite")

    @field_validator("suites", mode="before")
    @classmethod
    def _suites(cls, value: Any) -> Any:
        return suite_names(value)

    @field_validator("match")
    @classmethod
    def _match(cls, value: str) -> str:
        return check_match_spec(value)


def suite_names(value: Any) -> Any:
    """'tasks,loss' or a list -> the list, every name checked against the suites table."""
    value = split_csv(value)
    if isinstance(value, list):
        unknown = [s for s in value if s not in SUITES]
        if unknown:
            raise ValueError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    return value


class EvalConfig(SuiteOptions):
    """The recipe's `eval:` section: before and after tuning, and cheap suites during training."""

    before: bool = Field(True, description="evaluate the base model")
    guard: bool = Field(True, description="general-ability guard: the guard suite before and after tuning, and "
                                          "specialisation vs general change (with a warning) in the summary")
    after: bool = Field(True, description="evaluate the tuned model")
    every: int = Field(0, ge=0, description="evaluate every N training steps (0: off)")
    during: list[str] = Field(["loss"], description="cheap suites to run during training")
    during_limit: int | None = Field(64, ge=1, description="items per suite during training")
    best_metric: str | None = Field(None, description="keep the best checkpoint by this suite (e.g. loss, tasks)")
    keep_best: bool = Field(True, description="with best_metric: the saved model is the best checkpoint")

    @field_validator("during", mode="before")
    @classmethod
    def _during(cls, value: Any) -> Any:
        return suite_names(value)

    @model_validator(mode="after")
    def _check_best(self) -> "EvalConfig":
        if self.best_metric is not None and self.best_metric not in self.during:
            raise ValueError(f"eval.best_metric '{self.best_metric}' must be one of eval.during {self.during}")
        if self.best_metric is not None and not self.every:
            raise ValueError("eval.best_metric needs eval.every > 0 (evaluations during training to compare)")
        return self


class EvalVerbConfig(SuiteOptions):
    """`tunesmith eval MODEL_OR_RUN`: a run directory (its merged model and held-out items) or a model."""

    model: ModelConfig = Field(ModelConfig(), description="run directory, model directory, .gguf, bundled name "
                                                          "or hub id")
    tasks_n: int = Field(HELD_OUT_TASKS, ge=0, description="held-out generated task items (a run: its data.tasks)")
    seed: int = Field(0, description="seed of the generated items (a run: its data.tasks.seed)")
    data: str | None = Field(None, description="your held-out conversations (file, folder or glob): the data "
                                               "suite (by generation) and the loss suite; with it the default "
                                               "suites are data,loss")
    max_seq_len: int = Field(1024, ge=8, description="tokens per loss sample")
    max_tokens_per_row: int = Field(MAX_TOKENS_PER_ROW, ge=8, description="packing budget of the loss suite")
    out: str | None = Field(None, description="run directory the results go under (default: the run evaluated, "
                                              "or runs/eval/NAME)")
    label: str | None = Field(None, description="eval/<label>/ folder (default: after for a run, model otherwise)")


def eval_context(opts: SuiteOptions, task_items: list[TaskItem], loss_samples: list[TokenizedExample], seed: int,
                 max_tokens_per_row: int = MAX_TOKENS_PER_ROW, loss_chunk_size: int = 512,
                 during: bool = False, data_items: list[Example] | None = None) -> EvalContext:
    """The suites' inputs and bounds; during training (an EvalConfig): during_limit items, no sampling.

    data_items: the user's held-out conversations for the data suite (e.g. read_eval_data(data.eval)).
    """
    return EvalContext(task_items=task_items, loss_samples=loss_samples, data_items=list(data_items or []),
                       match=opts.match, data_max_new_tokens=opts.data_max_new_tokens,
                       max_new_tokens=opts.max_new_tokens,
                       long_max_new_tokens=opts.long_max_new_tokens, batch_size=opts.batch_size,
                       limit=opts.during_limit if during else opts.limit, ifeval_items=opts.ifeval_items,
                       guard_items=opts.guard_items, guard_max_new_tokens=opts.guard_max_new_tokens,
                       humaneval_samples=0 if during else opts.humaneval_samples,
                       seed=seed, max_tokens_per_row=max_tokens_per_row, loss_chunk_size=loss_chunk_size)


def available(suites: list[str], ctx: EvalContext) -> list[str]:
    """Suites that have something to evaluate on (tasks/robustness need task items, loss samples,
    data the user's held-out conversations)."""
    return [s for s in suites if not (s in ("tasks", "robustness") and not ctx.task_items)
            and not (s == "loss" and not ctx.loss_samples) and not (s == "data" and not ctx.data_items)]


def evaluate(model, tokenizer, suites: list[str], ctx: EvalContext, label: str, out_dir: Path | None
             ) -> dict[str, Any]:
    """Run the suites; with out_dir, write out_dir/<suite>.json (atomically). Returns {suite: result}."""
    results = run_suites(model, tokenizer, available(suites, ctx), ctx, label)
    if out_dir is not None:
        for suite, result in results.items():
            write_json(out_dir / f"{suite}.json", result)
    return results


def load_evals(out_dir: Path) -> dict[str, Any]:
    """Evaluations already written under out_dir: {suite: result}."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))}


def during_training(model, tokenizer, cfg: EvalConfig, ctx: EvalContext, ckpt_root: Path
                    ) -> tuple[Callable[[int], dict[str, float]] | None, BestTracker | None]:
    """The evaluator called every eval.every steps, and the best-checkpoint tracker."""
    if not cfg.every:
        return None, None
    suites = available(cfg.during, ctx)

    def evaluate_step(step: int) -> dict[str, float]:
        results = run_suites(model, tokenizer, suites, ctx, f"step {step}")
        return {suite: r["score"] for suite, r in results.items()}

    best = BestTracker(ckpt_root, cfg.best_metric, cfg.best_metric in LOWER_IS_BETTER) if cfg.best_metric else None
    return evaluate_step, best


def is_run_dir(path: str | Path) -> bool:
    """A run directory: it holds a merged model (model/config.json)."""
    return (Path(path) / "model" / "config.json").is_file()


def run_held_out(run: Path, n_eval: int = HELD_OUT_TASKS, seed: int = 0) -> tuple[int, int]:
    """(count, seed) of a run's held-out task items, from its config.yaml (only data.tasks is read)."""
    if (run / "config.yaml").is_file():
        tasks = ((yaml.safe_load((run / "config.yaml").read_text()) or {}).get("data") or {}).get("tasks")
        if tasks:
            return tasks.get("n_eval", n_eval), tasks.get("seed", seed)
    return n_eval, seed


def read_eval_data(spec: str | list[str], fmt: str = "auto") -> list[Example]:
    """The user's held-out conversations; unreadable rows are skipped with a warning naming them."""
    loaded = load_examples(spec, fmt, on_error="skip")
    if loaded.rejects:
        shown = "; ".join(f"{r.where()}: {r.reason}" for r in loaded.rejects[:3])
        more = f" (and {len(loaded.rejects) - 3} more)" if len(loaded.rejects) > 3 else ""
        ui.log(f"[yellow]warning:[/] {len(loaded.rejects)} of {loaded.total} eval rows skipped: {shown}{more}")
    if not loaded.examples:
        raise DataError(f"no usable conversation in {spec}: each row needs a user turn and an assistant turn "
                        "(the reference answer)")
    return loaded.examples


def check_data_suite(examples: list[Example], match: str) -> None:
    """Before any model is loaded: every row's matcher and pattern, and the checkers, must work."""
    items, _, skipped = prepare_items(examples, match)
    if skipped:
        ui.log(f"[yellow]warning:[/] data suite: {len(skipped)} conversations have no assistant text to compare "
               f"with (first: {skipped[0]['where']}); they count for the loss suite only")
    if not items:
        raise DataError("the data suite has no item with a reference answer to compare with")


def held_out_context(opts: SuiteOptions, tokenizer, n_eval: int, seed: int, data: str | None = None,
                     max_seq_len: int = 1024, max_tokens_per_row: int = MAX_TOKENS_PER_ROW,
                     examples: list[Example] | None = None) -> EvalContext:
    """An eval context on generated held-out items, and the `data` conversations (or `examples`
    already read from them) for the data and loss suites."""
    _, items = generate_train_eval(0, n_eval, seed)
    own = examples if examples is not None else read_eval_data(data) if data else []
    held = own or [it.to_example("tasks:eval") for it in items]
    loss_samples = tokenize_examples(tokenizer, held, max_seq_len, "truncate")[0] if held else []
    return eval_context(opts, items, loss_samples, seed, max_tokens_per_row, data_items=own)


def _target(cfg: EvalVerbConfig) -> tuple[ModelConfig, Path, str, int, int]:
    """(model to load, run dir for results, label, held-out count, seed): a run directory brings its
    merged model and its held-out items."""
    run = Path(cfg.model.name)
    if is_run_dir(run):
        n_eval, seed = run_held_out(run, cfg.tasks_n, cfg.seed)
        model = cfg.model.model_copy(update={"name": str(run / "model")})
        return model, Path(cfg.out) if cfg.out else run, cfg.label or "after", n_eval, seed
    out = Path(cfg.out) if cfg.out else Path("runs") / "eval" / run.name
    return cfg.model, out, cfg.label or "model", cfg.tasks_n, cfg.seed


def verb_suites(cfg: EvalVerbConfig) -> list[str]:
    """The suites `tunesmith eval` runs: --suites as given; with --data and no --suites, data and loss."""
    if cfg.data and "suites" not in cfg.model_fields_set:
        return ["data", "loss"]
    if "data" in cfg.suites and not cfg.data:
        raise UsageError("the data suite scores your own held-out conversations: give them with --data FILE")
    return list(cfg.suites)


def run_eval(cfg: EvalVerbConfig, overwrite: bool = False) -> int:
    """The `eval` verb: results in <run dir>/eval/<label>/<suite>.json and a table."""
    suites = verb_suites(cfg)
    model_cfg, run_dir, label, n_eval, seed = _target(cfg)
    out = run_dir / "eval" / label
    clash = [s for s in suites if (out / f"{s}.json").exists()]
    if clash and not overwrite:
        raise UsageError(f"{out} already holds {', '.join(c + '.json' for c in clash)}: add --overwrite to replace "
                         "them, or choose --label or --out")
    own = read_eval_data(cfg.data) if cfg.data else None
    if own and "data" in suites:
        check_data_suite(own[:cfg.limit] if cfg.limit else own, cfg.match)
    model, tokenizer = load_model_and_tokenizer(model_cfg, log=ui.log)
    ctx = held_out_context(cfg, tokenizer, n_eval, seed, cfg.data, cfg.max_seq_len, cfg.max_tokens_per_row, own)
    t0 = time.perf_counter()
    results = evaluate(model, tokenizer, suites, ctx, Path(cfg.model.name).name, out)
    ui.console.print(results_table(results, f"evaluation of {cfg.model.name}"))
    ui.log(f"per-item records: {out}/<suite>.json  (total {time.perf_counter() - t0:.0f} s)")
    return 0
