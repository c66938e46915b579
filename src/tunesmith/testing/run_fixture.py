"""A run directory written from nothing, in the formats the stages write, for the report's tests and
benchmark: no model is loaded, nothing is trained; the numbers are made up but consistent (the
data funnel adds up, the scores are the means of the records).

    write_run(path, items=40, metric_lines=120, selection=True, exports=True, phases=True,
              rejects=True, seed=0, if_items=None, synth=False)

`items` task items (the tasks suite, before and after) plus `if_items` (default items // 4) IFEval-style ones;
`metric_lines` training steps in metrics.jsonl, with an evaluation line every tenth of the run.
A `then:` phase ("dpo") is a smaller run directory of its own under phases/.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

TASKS = ("add_numbers", "reverse_words", "sort_numbers", "uppercase", "json_object")
INSTRUCTIONS = ("length_constraints:number_words", "detectable_format:title", "keywords:existence",
                "change_case:english_lowercase")
INJECTION = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2"><b>bold?</b> & done'


def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _task_records(rng: random.Random, n: int, p_right: float) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        ref = f"answer {i}"
        right = rng.random() < p_right and i != 3  # item 3 answers with markup, shown as text
        output = ref if right else (INJECTION if i == 3 else f"wrong {i}")
        out.append({"task": task, "prompt": f"Item {i}: do {task.replace('_', ' ')} on <{i}>", "output": output,
                    "reference": ref, "correct": right})
    return out


def _tasks_result(records: list[dict[str, Any]]) -> dict[str, Any]:
    per: dict[str, list[bool]] = {}
    for r in records:
        per.setdefault(r["task"], []).append(r["correct"])
    n = len(records)
    return {"suite": "tasks", "metric": "exact_match", "score": sum(r["correct"] for r in records) / n, "n": n,
            "correct": sum(r["correct"] for r in records), "wall_s": 1.0, "records": records,
            "per_task": {t: {"n": len(v), "exact_match": sum(v) / len(v)} for t, v in sorted(per.items())}}


def _ifeval_result(rng: random.Random, n: int, p_follow: float) -> dict[str, Any]:
    records = []
    for i in range(n):
        ids = [INSTRUCTIONS[i % len(INSTRUCTIONS)], INSTRUCTIONS[(i + 1) % len(INSTRUCTIONS)]][: 1 + i % 2]
        strict = [rng.random() < p_follow for _ in ids]
        records.append({"key": 1000 + i, "prompt": f"Write about topic {i}.", "output": f"Response {i}.",
                        "instruction_id_list": ids, "follow_all_strict": all(strict),
                        "follow_instruction_strict": strict, "follow_all_loose": all(strict),
                        "follow_instruction_loose": strict})
    score = sum(r["follow_all_strict"] for r in records) / n
    n_instr = sum(len(r["instruction_id_list"]) for r in records)
    instr = sum(sum(r["follow_instruction_strict"]) for r in records) / n_instr
    return {"suite": "ifeval", "score": score, "prompt_level_strict": score, "instruction_level_strict": instr,
            "prompt_level_loose": score, "instruction_level_loose": instr, "n": n, "records": records}


def _loss_result(n: int, loss: float) -> dict[str, Any]:
    return {"suite": "loss", "metric": "loss", "score": loss, "n": n, "target_tokens": 10 * n,
            "records": [{"source": "tasks:eval", "line": i, "target_tokens": 10, "loss": loss} for i in range(n)]}


def _metrics(rng: random.Random, lines: int, lr: float = 2e-3) -> list[dict[str, Any]]:
    rows, every = [], max(1, lines // 10)
    for step in range(1, lines + 1):
        loss = 2.0 * (0.97 ** (step * 100 / lines)) + 0.1 + 0.15 * rng.random()
        rows.append({"step": step, "loss": loss, "lr": lr * min(1.0, step / 5), "grad_norm": 0.5 + rng.random(),
                     "tokens": 400, "targets": 30, "samples": 8, "rows": 1, "tokens_per_s": 240 + 20 * rng.random(),
                     "elapsed_s": step * 1.7})
        if step % every == 0:
            rows.append({"step": step, "eval": {"loss": 1.5 * 0.9 ** (step * 10 / lines) + 0.2}})
    return rows


def _data(path: Path, rng: random.Random, rows: int, selection: bool, rejects: bool) -> dict[str, Any]:
    n_rejected_read = 6 if rejects else 0
    valid = rows - n_rejected_read
    dedup_kept = valid - 10
    decon_kept = dedup_kept - 4
    selected = decon_kept // 2 if selection else decon_kept
    overlong = 2 if rejects else 0
    kept = selected - overlong
    reject_rows = [{"source": "data/train.jsonl", "line": 10 + i, "reason": f"{kind}: turn {i} is broken",
                    "raw": {"messages": [{"role": "user", "content": f"row {i} <i>"}]}}
                   for i, kind in enumerate(["role_order", "role_order", "empty_content", "bad_json",
                                             "role_order", "empty_content"][:n_rejected_read])]
    reject_rows += [{"source": "data/train.jsonl", "line": 500 + i, "reason": "overlong: 300 tokens > 256",
                     "raw": None} for i in range(overlong)]
    _jsonl(path / "rejects.jsonl", reject_rows)
    lengths = [min(256, int(rng.gauss(90, 40)) + 20) for _ in range(kept)]
    _jsonl(path / "trained.jsonl", ({"origin": f"data/train.jsonl:{i}", "source": "data/train.jsonl", "line": i,
                                     "tokens": n, "trained_tokens": n // 5, **({"truncation": "cut_end"}
                                                                               if n >= 256 else {})}
                                    for i, n in enumerate(lengths)))
    _jsonl(path / "curation/dedup/removed.jsonl",
           ({"row": i, "source": "data/train.jsonl", "line": 40 + i, "reason": f"exact duplicate of row {i}",
             "messages": [{"role": "user", "content": "same"}]} for i in range(10)))
    refined: dict[str, Any] = {"dedup": {"total": valid, "kept": dedup_kept, "exact_removed": 7, "near_removed": 3},
                               "decontaminate": {"total": dedup_kept, "kept": decon_kept, "removed": 4,
                                                 "removed_by_suite": {"tasks": 3, "ifeval": 1}}}
    if selection:
        refined["select"] = {"method": "rds", "budget": "50%", "pool": decon_kept, "selected": selected}
        _selection(path, rng, decon_kept, selected)
    refined["removed"] = valid - selected
    truncated = sum(n >= 256 for n in lengths)
    return {"total": rows, "kept": kept, "rejected": n_rejected_read + overlong,
            "sources": {"data/train.jsonl": {"sha256": "ab" * 32, "rows": rows, "rejected": n_rejected_read + overlong,
                                             "removed": valid - selected, "trained": kept}},
            "by_reason": {"role_order": 3 if rejects else 0, "empty_content": 2 if rejects else 0,
                          "bad_json": 1 if rejects else 0, "overlong": overlong} if rejects else {},
            "tokens": {"total_tokens": sum(lengths), "trainable_tokens": sum(n // 5 for n in lengths),
                       "truncated": truncated, "dropped_overlong": overlong, "trainable_share": 0.2},
            "curation_and_selection": refined, "eval_items": 40}


def _selection(path: Path, rng: random.Random, pool: int, selected: int) -> None:
    order = sorted(range(pool), key=lambda i: -((i * 7919) % pool))
    rank = {i: r for r, i in enumerate(order[:selected])}
    _jsonl(path / "selection/scores.jsonl", ({"index": i, "source": "data/train.jsonl" if i % 3 else "data/extra.jsonl",
                                              "line": i, "origin": f"data/train.jsonl:{i}", "selected": i in rank,
                                              "rank": rank.get(i), "rds": ((i * 7919) % pool) / pool}
                                             for i in range(pool)))
    _dump(path / "selection/selection_report.json",
          {"pool": pool, "selected": selected, "method": "rds", "budget": "50%",
           "steps": [{"method": "rds", "input": pool, "kept": selected, "seconds": 0.4}],
           "coverage": {t: selected // len(TASKS) for t in TASKS}})


def write_run(path: str | Path, items: int = 40, metric_lines: int = 120, selection: bool = True,
              exports: bool = True, phases: bool = True, rejects: bool = True, seed: int = 0,
              name: str = "fixture", if_items: int | None = None, synth: bool = False) -> Path:
    """Write the run directory (see the module doc) and return its path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    config: dict[str, Any] = {"model": {"name": "smollm2-135m-instruct", "dtype": "fp32"},
                              "data": {"max_seq_len": 256, "train": ["data/train.jsonl"]},
                              "train": {"method": "lora", "lr": 0.002, "batch_size": 8, "seed": seed},
                              "eval": {"suites": ["tasks", "loss", "ifeval"]}, "output": {"dir": str(path)}}
    if selection:
        config["select"] = {"method": "rds", "budget": "50%"}
    if phases:
        config["then"] = [{"name": "dpo", "train": {"objective": "dpo"}}]
    path.joinpath("config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    report = _data(path, rng, 120, selection, rejects)
    _dump(path / "data_report.json", report)
    _jsonl(path / "metrics.jsonl", _metrics(rng, metric_lines))
    for step in (metric_lines // 2, metric_lines):
        (path / "checkpoints" / f"step-{step:06d}").mkdir(parents=True, exist_ok=True)
        (path / "checkpoints" / f"step-{step:06d}" / "COMPLETE").write_text("")
    n_if = max(1, items // 4) if if_items is None else if_items
    evals = {"before": {"tasks": _tasks_result(_task_records(rng, items, 0.1)), "loss": _loss_result(items, 1.9),
                        "ifeval": _ifeval_result(rng, n_if, 0.5)},
             "after": {"tasks": _tasks_result(_task_records(random.Random(seed + 1), items, 0.7)),
                       "loss": _loss_result(items, 0.3), "ifeval": _ifeval_result(rng, n_if, 0.4)}}
    for when, results in evals.items():
        for suite, result in results.items():
            _dump(path / "eval" / when / f"{suite}.json", result)
    summary = {"model": "smollm2-135m-instruct", "method": "lora", "run_dir": str(path),
               "data": {k: report[k] for k in ("total", "kept", "rejected", "by_reason")},
               "train": {"steps": metric_lines, "final_loss": 0.21, "resumed_from": None, "seconds": 200.0,
                         "tokens_per_s": 241.6},
               "eval": {s: {"before": evals["before"][s]["score"], "after": evals["after"][s]["score"],
                            "n": evals["after"][s]["n"]} for s in evals["after"]},
               "wall_seconds": 300.0, "checkpoint_kept": None}
    if exports:
        _exports(path)
    if synth:
        _synth(path)
    if phases:
        sub = write_run(path / "phases" / "dpo", items=max(4, items // 4), metric_lines=max(10, metric_lines // 4),
                        selection=False, exports=False, phases=False, rejects=False, seed=seed + 7, name="dpo")
        summary["phases"] = [{"name": "dpo", "run_dir": str(sub), "method": "lora, dpo (sigmoid)",
                              "train": {"steps": max(10, metric_lines // 4), "final_loss": 0.5}, "wall_seconds": 90.0}]
    _dump(path / "summary.json", summary)
    (path / "MODEL_CARD.md").write_text(f"# Model card: {name}\n\nTuned from `smollm2-135m-instruct` (fp32), weights "
                                        f"sha256 `{'cd' * 32}` with tunesmith, method `lora`.\n")
    return path


def _exports(path: Path) -> None:
    steps = [{"step": "fp32 (source)", "path": "model", "bytes": 541614977,
              "eval": {"tasks": 0.68, "loss": 0.213, "tokens_per_s": 29.5}},
             {"step": "int8", "path": "int8", "bytes": 223766861, "note": "210 layers quantized",
              "eval": {"tasks": 0.69, "loss": 0.2132, "tokens_per_s": 32.9}, "seconds": 80.0},
             {"step": "gguf-q4_0", "path": "gguf/model-q4_0.gguf", "bytes": 91000000, "note": "q4_0",
              "eval": {"tasks": 0.6, "loss": 0.27, "tokens_per_s": 40.1}, "seconds": 3.0}]
    _dump(path / "export/export_report.json", {"source": "model", "source_sha256": "ef" * 32, "steps": steps,
                                               "command": "tunesmith export RUN --out RUN/export --to int8,gguf-q4_0"})
    points = [{"alpha": a, "eval": {"tasks": 0.08 + 0.6 * a, "ifeval": 0.3 - 0.1 * a}} for a in (0, 0.25, 0.5, 0.75, 1)]
    _dump(path / "wise/interpolate_sweep.json", {"rule": "best tasks among alphas with ifeval at most 0.01 below "
                                                         "the base (alpha 0)", "chosen": 0.5, "points": points})
    _dump(path / "wise/export_report.json", {"source": "model", "steps": [
        {"step": "interpolate", "path": "interpolate", "bytes": 541614977, "note": "alpha 0.5",
         "eval": points[2]["eval"], "sweep": "interpolate_sweep.json"}]})


def _synth(path: Path) -> None:
    _dump(path / "synth/report.json", {
        "model": "smollm2-135m-instruct", "settings": {"samples": 4},
        "sources": {"ifeval": {"prompts": 50, "sampled": 48, "samples": 192, "verified_samples": 192,
                               "accepted_samples": 80, "acceptance_rate": 80 / 192, "kept": 30, "pairs": 25,
                               "dropped": {"decontaminated": 2, "no_sample_passed": 18}}},
        "acceptance": {"ifeval": {"keywords:existence": {"samples": 100, "accepted": 70, "rate": 0.7},
                                  "detectable_format:title": {"samples": 92, "accepted": 10, "rate": 10 / 92}}},
        "outputs": {"sft": 30, "pairs": 25, "samples": 192, "no_pair": 5}})
