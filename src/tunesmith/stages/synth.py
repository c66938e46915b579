"""The synth stage: verifier-filtered synthetic data by rejection sampling (RAFT).

`tunesmith synth --model M --prompts SOURCE --samples K --out DIR` (and a recipe's `synth:` section):
prompts from the sources (generated IFEval-style constraints, built-in tasks, the user's files, code
problems with tests) are decontaminated against the eval suites, K answers per prompt are sampled
on the generation engine and scored by each prompt's verifier, and DIR gets

  sft.jsonl       the best accepted answer per prompt (messages rows with provenance)
  pairs.jsonl     preference pairs (TRL conversational: prompt, chosen, rejected, both verdicts)
  samples.jsonl   every sample with its verdict
  report.json     prompts per source, acceptance per constraint / task type, speed, drops and why,
                  decontamination; rejects.jsonl lists every bad row of the prompt files (file:line)
  store/          every sample as it is produced, keyed by content: `--resume` (and a recipe's rerun)
                  continues an interrupted run without generating a stored sample again

See synth.raft for which prompts are dropped and which answers are chosen.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from rich.markup import escape

from .. import ui
from ..config import Section, split_csv
from ..data.load import write_rejects
from ..errors import DataError, UsageError, UserError
from ..evalsets.prompts import parse_suites
from ..evaluate.generate import prompt_ids
from ..generation.engine import Engine
from ..generation.requests import SamplingParams
from ..io import write_json
from ..models import ModelConfig, load_model_and_tokenizer
from ..synth.decontam import SYNTH_SUITES, decontaminate_prompts
from ..synth.outputs import write_outputs
from ..synth.prompts import SynthPrompt
from ..synth.raft import DROP_REASONS, Decision, Sample, decide
from ..synth.report import acceptance, per_source, print_report
from ..synth.sampling import Job, SampleStats, make_jobs, sample_all
from ..synth.sources import GENERATED, collect
from ..synth.store import SampleStore, model_identity
from ..synth.verify import verify_all
from .outputs import check_not_inside_inputs, out_dir, prepare_out

SYNTH_WRITES = ("sft.jsonl", "pairs.jsonl", "samples.jsonl", "report.json", "rejects.jsonl", "store")
STORE = Path("store") / "samples.jsonl"


class SynthOptions(Section):
    """K samples per prompt, scored by verifiers; the recipe's `synth:` section (the verb adds model and out)."""

    prompts: list[str] = Field(["ifeval"], description="prompt sources: ifeval (IFEval-style constraint prompts), "
                                                       "tasks (built-in verifiable tasks), or a file, folder or glob "
                                                       "of prompts, conversations or code problems {prompt, test, "
                                                       "entry_point}; several: a,b")
    samples: int = Field(4, ge=1, le=64, description="samples per prompt (K)")
    limit: int | None = Field(None, ge=1, description="prompts per source (default: every row of a file, 100 "
                                                      "generated)")
    temperature: float = Field(0.8, gt=0, description="sampling temperature (K greedy samples would be identical)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling")
    max_tokens: int = Field(512, ge=1, description="new tokens per sample")
    seed: int = Field(0, description="seed of the generated prompts and of the sampling")
    batch_size: int = Field(32, ge=1, description="sequences decoded together (at least --samples)")
    decontaminate: list[str] = Field(list(SYNTH_SUITES), description="eval suites every prompt is checked against "
                                                                     "(word 8-grams): tasks, robustness, ifeval, "
                                                                     "ifbench, humaneval; none: skip")
    eval_seed: int = Field(0, description="seed of the generated eval items kept clear of (tasks, ifeval)")
    on_error: Literal["fail", "skip"] = Field("fail", description="bad rows in prompt files: stop and list them, or "
                                                                  "skip them (listed in the report and rejects.jsonl)")
    workers: int = Field(2, ge=1, description="code answers run in the sandbox at a time")

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompts(cls, value: Any) -> Any:
        return split_csv(value)

    @field_validator("decontaminate", mode="before")
    @classmethod
    def _suites(cls, value: Any) -> Any:
        return list(parse_suites(split_csv(value) if value is not None else [], allow_empty=True))


class SynthSection(SynthOptions):
    """The recipe's `synth:` section: runs before the data stage, into RUN/synth, with the recipe's model."""

    feed: Literal["sft", "pairs", "none"] = Field("sft", description="which output joins data.train: sft "
                                                                     "(sft.jsonl), pairs (pairs.jsonl) or none")


class SynthVerbConfig(SynthOptions):
    """`tunesmith synth --model M --prompts SOURCE --samples K --out DIR`."""

    model: ModelConfig = Field(ModelConfig(), description="the model that answers: bundled name, model directory "
                                                          "(e.g. RUN/model), .gguf file or hub id")
    out: str = Field(..., description="folder for sft.jsonl, pairs.jsonl, samples.jsonl, report.json and the "
                                      "sample store (new or empty, else --resume or --overwrite)")


def run_synth(cfg: SynthVerbConfig, overwrite: bool = False, resume: bool = False) -> int:
    """The `synth` verb (resume: continue the run in --out, reusing its stored samples; overwrite: start again)."""
    inputs = [p for p in cfg.prompts if p not in GENERATED]  # the prompt files (an output may not lie in them)
    if resume and (Path(cfg.out) / STORE).is_file():
        check_not_inside_inputs(cfg.out, inputs)
        out = out_dir(cfg.out)
        ui.log(f"--resume: continuing the synth run in {out}")
    else:
        if not overwrite and (Path(cfg.out) / STORE).is_file():
            raise UserError(f"--out {cfg.out} holds an earlier synth run: add --resume to continue it (stored samples "
                            "are reused), --overwrite to start again, or choose another --out")
        out = prepare_out(cfg.out, overwrite=overwrite, inputs=inputs, writes=SYNTH_WRITES,
                          marker=("report.json", str(STORE)))
    synthesize(cfg, cfg.model, out)
    return 0


def synth_into(section: SynthSection, model: ModelConfig, run_dir: Path) -> list[str]:
    """A recipe's synth section: synthesize into RUN/synth (stored samples reused) and return the file that
    joins data.train (none with feed: none)."""
    out = out_dir(run_dir / "synth")
    synthesize(section, model, out)
    return [] if section.feed == "none" else [str(out / f"{section.feed}.jsonl")]


def synthesize(opts: SynthOptions, model_cfg: ModelConfig, out: Path) -> dict[str, Any]:
    """Prompts -> decontamination -> K samples each (stored as they come) -> verdicts -> RAFT -> files; returns
    the report (also out/report.json)."""
    t0 = time.perf_counter()
    collected, prompts, decon = _prompts(opts, out)  # before the model loads: bad rows fail fast

    model, tokenizer = load_model_and_tokenizer(model_cfg, log=ui.log)
    params = SamplingParams(max_tokens=opts.max_tokens, temperature=opts.temperature, top_p=opts.top_p,
                            seed=opts.seed)
    jobs = make_jobs(prompts, [prompt_ids(tokenizer, p.messages) for p in prompts], opts.samples, params,
                     model_identity(model_cfg.name, model_cfg.dtype))
    store = SampleStore(out / STORE)
    stats = _sample(model, tokenizer, jobs, params, opts, store)

    t1 = time.perf_counter()
    scored = _score(jobs, stats, store, opts.workers)
    by_id = {p.id: p for p in prompts}
    decisions = {pid: decide(by_id[pid], samples) for pid, samples in scored.items()}
    counts = write_outputs(out, prompts, scored, decisions, model_cfg.name)

    removed = {h["prompt_id"]: "decontaminated" for h in decon["hits"]} | \
        {pid: "not_sampled" for pid in stats.skipped}
    report = _report(opts, model_cfg, collected, prompts, removed, scored, decisions, decon, stats, counts, out)
    report["verification_seconds"] = round(time.perf_counter() - t1, 2)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out / "report.json", report)
    print_report(report)
    ui.log(f"sft rows: {out / 'sft.jsonl'}  pairs: {out / 'pairs.jsonl'}  report: {out / 'report.json'}")
    return report


def _prompts(opts: SynthOptions, out: Path):
    """Collect the sources' prompts (bad rows: listed, then fatal under on_error: fail), then decontaminate."""
    collected = collect(opts.prompts, opts.limit, opts.seed, opts.eval_seed)
    write_rejects(collected.rejects, out / "rejects.jsonl")
    if collected.rejects and opts.on_error == "fail":
        shown = "\n".join(f"  {r.where()}: {r.reason}" for r in collected.rejects[:20])
        more = f"\n  ... and {len(collected.rejects) - 20} more" if len(collected.rejects) > 20 else ""
        raise DataError(f"{len(collected.rejects)} rows of the prompt files cannot be used:\n{shown}{more}\n"
                        f"All are listed in {out / 'rejects.jsonl'}; fix them or add --on-error skip")
    prompts, decon = decontaminate_prompts(collected.prompts, opts.decontaminate, opts.eval_seed, progress=True)
    bad = f"; {len(collected.rejects)} bad rows skipped (listed at the end)" if collected.rejects else ""
    ui.log(f"synth: {len(collected.prompts)} prompts from {escape(', '.join(opts.prompts))}; {decon['removed']} "
           f"removed for overlapping eval prompts{bad}")
    unverified = sum(p.verifier == "none" for p in prompts)
    if unverified:
        ui.log(f"[yellow]{unverified} prompts have no verifier (free-text answers): they are sampled into "
               "samples.jsonl but give no sft row and no pair[/]")
    if not prompts:
        raise DataError("no prompt left to sample (see the counts above): give more prompts or other sources")
    return collected, prompts, decon


def _sample(model, tokenizer, jobs: list[Job], params: SamplingParams, opts: SynthOptions, store: SampleStore
            ) -> SampleStats:
    engine = Engine(model, tokenizer, max_batch=max(opts.batch_size, opts.samples),
                    max_queue=len(jobs) * opts.samples + 1)
    total = len(jobs) * opts.samples
    done = sum(k in store for j in jobs for k in j.keys)
    if done:
        ui.log(f"synth: {done} of {total} samples are already in {store.path.parent} and are reused")
    try:
        with ui.progress_bar("synth: sampling", total, "samples", completed=done) as advance:
            return sample_all(engine, jobs, params, store, progress=advance)
    except KeyboardInterrupt:
        ui.log(f"synth: interrupted; {len(store)} samples are stored in {store.path.parent}: run the same command "
               "with --resume to continue (stored samples are not generated again)")
        raise


def _score(jobs: list[Job], stats: SampleStats, store: SampleStore, workers: int) -> dict[str, list[Sample]]:
    """Every stored sample of every sampled prompt, with its verdict."""
    todo: list[tuple[SynthPrompt, dict[str, Any]]] = []
    for job in jobs:
        if job.prompt.id not in stats.skipped:
            todo += [(job.prompt, store.get(k)) for k in job.keys]
    with ui.progress_bar("synth: verifying", len(todo), "samples") as advance:
        verdicts = verify_all([(p, rec["text"]) for p, rec in todo], workers, progress=advance)
    scored: dict[str, list[Sample]] = {}
    for (prompt, rec), verdict in zip(todo, verdicts):
        scored.setdefault(prompt.id, []).append(Sample(rec["index"], rec["text"], rec["finish_reason"],
                                                       rec["tokens"], verdict))
    return scored


def _report(opts, model_cfg, collected, prompts, removed, scored, decisions: dict[str, Decision], decon, stats,
            counts, out: Path) -> dict[str, Any]:
    dropped = {reason: sum(d.reason == reason for d in decisions.values()) for reason in DROP_REASONS}
    dropped.update(decontaminated=decon["removed"], not_sampled=len(stats.skipped),
                   duplicate=len(collected.duplicates))
    kept = sum(d.chosen is not None for d in decisions.values())
    return {
        "model": model_cfg.name,
        "settings": opts.model_dump(mode="json", exclude={"out", "model"}),
        "sources": per_source(collected.per_source, collected.prompts, removed, scored, decisions),
        "acceptance": acceptance(prompts, scored),
        "sampling": {"samples": sum(len(s) for s in scored.values()), "generated": stats.generated,
                     "reused": stats.reused, "requests": stats.requests, "seconds": round(stats.seconds, 2),
                     "samples_per_s": stats.samples_per_s, "tokens_per_s": stats.tokens_per_s},
        "dropped": dropped,
        "dropped_prompts": [{"prompt_id": pid, "reason": d.reason} for pid, d in decisions.items() if d.reason] +
                           [{"prompt_id": pid, "reason": why} for pid, why in stats.skipped.items()] +
                           [{"prompt_id": d["prompt_id"], "reason": f"duplicate of {d['same_as']}"}
                            for d in collected.duplicates],
        "decontamination": decon,
        "rejected_rows": len(collected.rejects),
        "rejects": [{"where": r.where(), "reason": r.reason} for r in collected.rejects],
        "rejects_file": str(out / "rejects.jsonl"),
        "outputs": {**counts, "no_pair": kept - counts["pairs"]},
    }


def with_synth_data(recipe, run_dir: Path, world_size: int = 1):
    """`tunesmith run` with a `synth:` section: synthesize into RUN/synth (stored samples are reused on a
    rerun) and return the recipe with that output added to data.train."""
    if world_size > 1:
        raise UsageError("a recipe's synth: section runs in one process: run `tunesmith synth ... --out DIR` first, "
                         "then add DIR/sft.jsonl (or pairs.jsonl) to data.train and launch the training with torchrun")
    extra = synth_into(recipe.synth, recipe.model, run_dir)
    data = recipe.data.model_copy(update={"train": [*recipe.data.train, *extra]})
    return recipe.model_copy(update={"data": data})
