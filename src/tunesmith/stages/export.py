"""The export stage: turn a tuned model into what people run, and measure each form.

Steps (`--to`, or the recipe's `export.to`):
  merged       the merged fp32 model (a plain transformers folder)
  interpolate  WiSE-FT sweep between the base and the tuned model; one alpha chosen by a stated rule
  int8         weight-only, per-output-channel symmetric int8
  int4-rtn     weight-only, group-wise symmetric int4, round-to-nearest
  int4-awq     the same with activation-aware scales searched on the run's own training prompts
  gguf-f32, gguf-f16, gguf-q8_0, gguf-q4_0    one GGUF file for llama.cpp
and, from several models, `tunesmith export soup A B C ... [--greedy --metric SUITE]`.

Every step is written atomically into OUT/<step>/ (GGUF: OUT/gguf/model-<type>.gguf); with
`suites`, each is evaluated on the run's held-out items (the source model too, as the fp32 row),
so export_report.json and MODEL_CARD.md hold an accuracy-vs-size table.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from .. import ui
from ..config import Section, split_csv
from ..data.tasks import HELD_OUT_TASKS
from ..errors import UsageError, UserError
from ..evaluate.harness import LOWER_IS_BETTER, EvalContext, run_suites
from ..export.gguf import GGUF_TYPES, write_gguf
from ..export.quantize import METHODS as QUANT_METHODS, export_quantized
from ..export.soup import greedy_soup, interpolate, uniform_soup
from ..io import atomic_dir, atomic_open, write_json, write_text
from ..models import load_model, load_tokenizer, local_model_dir
from ..report.model_card import export_lines, file_sha256
from .evaluate import SuiteOptions, held_out_context, is_run_dir, run_held_out, suite_names
from .outputs import prepare_out

GGUF_STEPS = {f"gguf-{q}": q for q in GGUF_TYPES}
STEPS = ("merged", "interpolate", *QUANT_METHODS, *GGUF_STEPS)


class InterpolateOptions(Section):
    """WiSE-FT: (1 - alpha) * base + alpha * tuned, each alpha evaluated, one chosen."""

    alphas: list[float] = Field([0.0, 0.25, 0.5, 0.75, 1.0], description="blend weights of the tuned model")
    metric: str = Field("tasks", description="the alpha with the best score on this suite is chosen ...")
    guard: str | None = Field("ifeval", description="... among those whose score on this suite is at most "
                                                    "max_drop below the base model's (alpha 0); null: no guard")
    max_drop: float = Field(0.01, ge=0, description="allowed drop of the guard suite (0.01 = 1 pp; loss: absolute)")


class ExportOptions(Section):
    """The recipe's `export:` section."""

    to: list[str] = Field([], description=f"steps: {', '.join(STEPS)}")
    group_size: int = Field(32, ge=8, description="int4 group size (SmolLM2's 576 is a multiple of 32 and 64, "
                                                  "not 128)")
    calibration: int = Field(128, ge=1, description="int4-awq: training sequences whose activations set the scales")
    suites: list[str] = Field([], description="evaluate every export (and the source) on these suites")
    limit: int | None = Field(None, ge=1, description="items per suite when evaluating exports")
    ifeval_items: int = Field(100, ge=1, description="IFEval-style items when evaluating exports")
    interpolate: InterpolateOptions = InterpolateOptions()

    @field_validator("to", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        value = split_csv(value)
        unknown = [s for s in value if s not in STEPS and s != "soup"] if isinstance(value, list) else []
        if unknown:
            raise ValueError(f"unknown export step(s) {unknown}; choose from {', '.join(STEPS)} (or soup)")
        return value

    @field_validator("suites", mode="before")
    @classmethod
    def _suites(cls, value: Any) -> Any:
        return suite_names(value)


class ExportVerbConfig(ExportOptions):
    """`tunesmith export RUN_OR_MODEL --out DIR --to STEP,...` or `tunesmith export soup A B ... --out DIR`."""

    sources: list[str] = Field(..., description="a run directory or a model folder (soup: two or more)")
    out: str = Field(..., description="output folder")
    base: str | None = Field(None, description="interpolate: the base model (default: the run's model.name)")
    greedy: bool = Field(False, description="soup: greedy soup (add by held-out score, keep if it does not drop)")
    metric: str = Field("tasks", description="soup: the held-out suite that orders and gates the greedy soup")


class Evaluator:
    """Scores a model on the run's held-out items: {suite: score, "tokens_per_s": generation speed}."""

    def __init__(self, opts: SuiteOptions, ctx: EvalContext, tokenizer):
        self.opts, self.ctx, self.tokenizer = opts, ctx, tokenizer

    def __call__(self, model, label: str, suites: list[str] | None = None) -> dict[str, float]:
        results = run_suites(model, self.tokenizer, suites or self.opts.suites, self.ctx, label)
        scores: dict[str, Any] = {s: r["score"] for s, r in results.items()}
        for s, r in results.items():  # instruction following: the loose prompt-level accuracy as well
            if "prompt_level_loose" in r:
                scores[f"{s}_loose"] = r["prompt_level_loose"]
        if "tasks" in results and results["tasks"]["wall_s"]:
            generated = sum(len(self.tokenizer(r["output"], add_special_tokens=False).input_ids)
                            for r in results["tasks"]["records"])
            scores["tokens_per_s"] = round(generated / results["tasks"]["wall_s"], 1)
        return scores


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _better(a: float, b: float, suite: str) -> bool:
    return a < b if suite in LOWER_IS_BETTER else a > b


def choose_alpha(points: list[dict[str, Any]], rule: InterpolateOptions) -> tuple[dict[str, Any], str]:
    """The chosen sweep point and the rule, stated: best `metric` among points whose `guard` is within
    max_drop of the base (alpha 0); without a guard, best `metric`."""
    base = next((p for p in points if p["alpha"] == 0.0), points[0])
    ok = points
    if rule.guard:
        def within(p: dict[str, Any]) -> bool:
            drop = base["eval"][rule.guard] - p["eval"][rule.guard]
            return (-drop if rule.guard in LOWER_IS_BETTER else drop) <= rule.max_drop + 1e-12
        ok = [p for p in points if within(p)] or [base]
    best = ok[0]
    for p in ok[1:]:
        if _better(p["eval"][rule.metric], best["eval"][rule.metric], rule.metric):
            best = p
    why = f"best {rule.metric}" + (f" among alphas with {rule.guard} at most {rule.max_drop} below the base "
                                   f"(alpha 0)" if rule.guard else "")
    return best, why


def plot_sweep(points: list[dict[str, Any]], chosen: float, path: Path) -> None:
    """One line per suite over alpha, the chosen alpha marked (SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = [s for s in points[0]["eval"] if s != "tokens_per_s"]
    fig, axes = plt.subplots(1, len(suites), figsize=(4 * len(suites), 3.2), squeeze=False)
    for ax, suite in zip(axes[0], suites):
        ax.plot([p["alpha"] for p in points], [p["eval"][suite] for p in points], marker="o")
        ax.axvline(chosen, color="grey", linestyle="--")
        ax.set_xlabel("alpha (0 = base, 1 = tuned)")
        ax.set_title(suite)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="svg")
    plt.close(fig)


def _save_state(state: dict, template_dir: Path, out: Path) -> Path:
    """A full model folder holding `state`, config and tokenizer from `template_dir`, written atomically."""
    model = load_model(str(template_dir), log=ui.quiet)
    model.load_state_dict(state)
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        load_tokenizer(str(template_dir), log=ui.quiet).save_pretrained(str(tmp))
    return out


def _interpolate(model_dir: Path, base: str, out: Path, cfg: ExportOptions, evaluate: Evaluator | None
                 ) -> dict[str, Any]:
    if evaluate is None:
        raise UsageError("interpolate evaluates every alpha: give suites (e.g. --suites tasks,ifeval)")
    rule = cfg.interpolate
    needed = [rule.metric] + ([rule.guard] if rule.guard else [])
    tuned, base_model = load_model(str(model_dir), log=ui.log), load_model(base, log=ui.log)
    vessel = load_model(str(model_dir), log=ui.quiet)
    points = []
    for alpha in cfg.interpolate.alphas:
        vessel.load_state_dict(interpolate(base_model, tuned, alpha, (base, str(model_dir))))
        points.append({"alpha": alpha, "eval": evaluate(vessel, f"alpha {alpha}", list(dict.fromkeys(
            [*needed, *evaluate.opts.suites])))})
        ui.log(f"interpolate: alpha {alpha}: " + ", ".join(f"{k} {v:.4f}" for k, v in points[-1]["eval"].items()))
    best, why = choose_alpha(points, rule)
    _save_state(interpolate(base_model, tuned, best["alpha"]), model_dir, out / "interpolate")
    plot_sweep(points, best["alpha"], out / "interpolate_sweep.svg")
    write_json(out / "interpolate_sweep.json", {"base": base, "tuned": str(model_dir), "rule": why,
                                                "chosen": best["alpha"], "points": points})
    ui.log(f"interpolate: chose alpha {best['alpha']} ({why})")
    return {"path": "interpolate", "note": f"alpha {best['alpha']}: {why}", "eval": best["eval"],
            "sweep": "interpolate_sweep.json", "plot": "interpolate_sweep.svg"}


def export_steps(model_dir: Path, out: Path, cfg: ExportOptions, evaluate: Evaluator | None,
                 calibration_ids: list[list[int]] | None, base: str | None, command: str) -> dict[str, Any]:
    """Run cfg.to in order on an fp32 model folder; export_report.json is rewritten after every step."""
    report: dict[str, Any] = {"source": str(model_dir), "source_sha256": file_sha256(model_dir),
                              "command": command, "steps": []}

    def record(step: str, path: Path, extra: dict[str, Any]) -> None:
        entry = {"step": step, "path": str(path.relative_to(out)), "bytes": _size(path), **extra}
        if evaluate is not None and step != "interpolate":
            entry["eval"] = evaluate(load_model(str(path), log=ui.quiet), step)
        report["steps"].append(entry)
        write_json(out / "export_report.json", report)

    if evaluate is not None:  # the source itself: the fp32 row of the accuracy-vs-size table
        report["steps"].append({"step": "fp32 (source)", "path": str(model_dir), "bytes": _size(model_dir),
                                "eval": evaluate(load_model(str(model_dir), log=ui.quiet), "fp32")})
    for step in cfg.to:
        t0 = time.perf_counter()
        ui.log(f"[bold]export {step}[/]")
        if step == "merged":
            with atomic_dir(out / "merged") as tmp:
                shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
            record(step, out / "merged", {})
        elif step in QUANT_METHODS:
            res = export_quantized(model_dir, out / step, step, cfg.group_size,
                                   calibration_ids if step == "int4-awq" else None, log=ui.log)
            note = f"{res['quantized']} layers quantized" + (f"; skipped: {res['skipped']}" if res["skipped"] else "")
            record(step, out / step, {"note": note, "skipped": res["skipped"]})
        elif step in GGUF_STEPS:
            path = out / "gguf" / f"model-{GGUF_STEPS[step]}.gguf"
            res = write_gguf(model_dir, path, GGUF_STEPS[step], log=ui.log)
            fallback = res.get("fallback_f16") or []
            record(step, path, {"note": f"{res['quantized']} tensors quantized" +
                                (f", {len(fallback)} kept f16" if fallback else "")})
        elif step == "interpolate":
            if base is None:
                raise UsageError("interpolate needs the base model: give --base, or export a run directory")
            entry = _interpolate(model_dir, base, out, cfg, evaluate)
            record(step, out / "interpolate", entry)
        report["steps"][-1]["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(out / "export_report.json", report)
    return report


def _run_settings(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(recipe, eval section) from a run's config.yaml ({} when absent)."""
    recipe = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    return recipe or {}, (recipe or {}).get("eval") or {}


def evaluator_for(cfg: ExportOptions, tokenizer, run: Path | None) -> Evaluator | None:
    """Scores on the run's held-out items with the run's generation settings (None without suites)."""
    if not cfg.suites:
        return None
    _, run_eval = _run_settings(run) if run else ({}, {})
    settings = {k: v for k, v in run_eval.items() if k in SuiteOptions.model_fields}  # the run's generation bounds
    opts = SuiteOptions(**{**settings, "suites": cfg.suites, "limit": cfg.limit, "ifeval_items": cfg.ifeval_items})
    n_eval, seed = run_held_out(run) if run else (HELD_OUT_TASKS, 0)
    return Evaluator(opts, held_out_context(opts, tokenizer, n_eval, seed), tokenizer)


def calibration_from_run(run: Path, tokenizer, n: int) -> list[list[int]] | None:
    """The first n training sequences of a run (its data section re-read, generated tasks included)."""
    from .data import DataConfig, load
    from ..data.samples import tokenize_examples

    recipe, _ = _run_settings(run)
    if not recipe.get("data"):
        return None
    loaded = load(DataConfig.model_validate(recipe["data"]), None)
    samples = tokenize_examples(tokenizer, loaded.examples[:n], DataConfig.model_validate(recipe["data"]).max_seq_len,
                                "truncate")[0]
    return [s.input_ids for s in samples]


def _soup(cfg: ExportVerbConfig, out: Path) -> int:
    if len(cfg.sources) < 2:
        raise UsageError("a soup needs two or more models: tunesmith export soup A B [C ...] --out DIR")
    dirs = [Path(s) / "model" if is_run_dir(s) else Path(local_model_dir(s, log=ui.log)) for s in cfg.sources]
    models = [load_model(str(d), log=ui.log) for d in dirs]
    tokenizer = load_tokenizer(str(dirs[0]), log=ui.quiet)
    info: dict[str, Any] = {"ingredients": [str(d) for d in dirs], "sha256": [file_sha256(d) for d in dirs]}
    if cfg.greedy:
        soup_cfg = cfg.model_copy(update={"suites": list(dict.fromkeys([cfg.metric, *cfg.suites]))})
        evaluate = evaluator_for(soup_cfg, tokenizer, Path(cfg.sources[0]) if is_run_dir(cfg.sources[0]) else None)
        res = greedy_soup(models, [str(d) for d in dirs], lambda m: evaluate(m, "soup", [cfg.metric])[cfg.metric],
                          higher_is_better=cfg.metric not in LOWER_IS_BETTER, log=ui.log)
        state = res.state
        info.update(kind="greedy", metric=cfg.metric, order=res.order, kept=res.kept, scores=res.scores,
                    steps=res.steps, score=res.score)
    else:
        state = uniform_soup(models, [str(d) for d in dirs])
        info["kind"] = "uniform"
    _save_state(state, dirs[0], out / "soup")
    write_json(out / "soup.json", info)
    ui.log(f"soup ({info['kind']}) of {len(dirs)} models -> {out / 'soup'}")
    return 0


EXPORT_WRITES = ("export_report.json", "MODEL_CARD.md", "merged", "interpolate", "interpolate_sweep.json",
                 "interpolate_sweep.svg", *QUANT_METHODS, "gguf", "soup", "soup.json")  # what the verb writes


def _read_paths(cfg: ExportVerbConfig) -> list[str]:
    """What the export reads: a run's model/ and config.yaml (RUN/export is a fine --out), a model folder
    or file, and the base model."""
    paths: list[str] = []
    for s in cfg.sources:
        run = is_run_dir(s) or (Path(s) / "config.yaml").is_file()
        paths += [str(Path(s) / "model"), str(Path(s) / "config.yaml")] if run else [s]
    return paths + ([cfg.base] if cfg.base else [])


def run_export(cfg: ExportVerbConfig, overwrite: bool = False) -> int:
    """The `export` verb (overwrite: replace the exports of an earlier run in --out)."""
    if cfg.sources and cfg.sources[0] == "soup":
        cfg = cfg.model_copy(update={"sources": cfg.sources[1:], "to": ["soup"]})
    if "soup" not in cfg.to and len(cfg.sources) != 1:
        raise UsageError("export one model at a time (several models: tunesmith export soup A B ...)")
    if not cfg.to:
        raise UsageError(f"nothing to export: give --to with one or more of {', '.join(STEPS)}")
    out = prepare_out(cfg.out, overwrite=overwrite, inputs=_read_paths(cfg), writes=EXPORT_WRITES,
                      marker=("export_report.json", "soup.json"))
    if "soup" in cfg.to:
        return _soup(cfg, out)
    source = Path(cfg.sources[0])
    run = source if is_run_dir(source) else None
    if run is None and source.is_dir() and (source / "config.yaml").is_file():
        raise UserError(f"{source} is a run directory without a merged model (model/); rerun it with "
                        "output.merge: true, or export a model folder")
    model_dir = run / "model" if run else Path(local_model_dir(str(source), log=ui.log))
    tokenizer = load_tokenizer(str(model_dir), log=ui.quiet)
    recipe, _ = _run_settings(run) if run else ({}, {})
    base = cfg.base or (recipe.get("model") or {}).get("name")
    calibration = calibration_from_run(run, tokenizer, cfg.calibration) if run and "int4-awq" in cfg.to else None
    command = "tunesmith export " + " ".join(cfg.sources) + f" --out {cfg.out} --to {','.join(cfg.to)}" + \
        (f" --suites {','.join(cfg.suites)}" if cfg.suites else "")
    report = export_steps(model_dir, out, cfg, evaluator_for(cfg, tokenizer, run), calibration, base, command)
    write_text(out / "MODEL_CARD.md", export_card(report, model_dir))
    ui.console.print("\n".join(export_lines(report)))
    return 0


def export_card(report: dict[str, Any], model_dir: Path) -> str:
    """MODEL_CARD.md of an export folder: the source, its hash, every export with size and scores."""
    lines = [f"# Exports of {model_dir}", "", f"Source weights sha256 `{report['source_sha256']}`.", ""]
    lines += export_lines(report)
    lines += ["## Reproduce", "", "    " + report["command"], ""]
    return "\n".join(lines)
