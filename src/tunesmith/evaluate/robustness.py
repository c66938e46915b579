"""Robustness to instruction phrasing: the same task items asked several ways.

Instruction-tuned models are known to lose accuracy when the instruction is reworded (Sun et al.,
"Evaluating the Zero-shot Robustness of Instruction-tuned Language Models", 2023). Each task type
has a parser for its canonical prompt and several paraphrased templates (template 0 is the
canonical wording; the table is `tunesmith.evalsets.phrasings`); every held-out item is asked in
every phrasing, and the spread of accuracy across phrasings is reported.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Callable

from ..data.tasks import TaskItem, check_answer
from ..evalsets.phrasings import n_phrasings, rephrase
from .generate import generate


def eval_robustness(model, tokenizer, items: list[TaskItem], max_new_tokens: int = 32, batch_size: int = 32,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Exact-match accuracy of the same items under every phrasing, and its spread."""
    k = n_phrasings()
    prompts = [(i, t, rephrase(it, t)) for t in range(k) for i, it in enumerate(items)]
    outputs = generate(model, tokenizer, [[{"role": "user", "content": p}] for _, _, p in prompts],
                       max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    records = []
    by_template: dict[int, list[bool]] = defaultdict(list)
    by_task_template: dict[str, dict[int, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for (i, t, prompt), out in zip(prompts, outputs):
        it = items[i]
        ok = check_answer(it.task, out, it.answer)
        by_template[t].append(ok)
        by_task_template[it.task][t].append(ok)
        records.append({"task": it.task, "phrasing": t, "prompt": prompt, "output": out, "reference": it.answer,
                        "correct": ok})
    acc = [sum(v) / len(v) for _, v in sorted(by_template.items())]
    per_task = {}
    for task, per_t in sorted(by_task_template.items()):
        a = [sum(v) / len(v) for _, v in sorted(per_t.items())]
        per_task[task] = {"per_phrasing": a, "spread": max(a) - min(a)}
    return {
        "suite": "robustness", "metric": "mean exact-match over phrasings",
        "score": statistics.fmean(acc) if acc else 0.0,
        "per_phrasing": acc, "min": min(acc, default=0.0), "max": max(acc, default=0.0),
        "spread": (max(acc) - min(acc)) if acc else 0.0, "std": statistics.pstdev(acc) if acc else 0.0,
        "n": len(items), "phrasings": k, "per_task": per_task, "records": records,
    }
