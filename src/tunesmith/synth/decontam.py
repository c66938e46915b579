"""Keep synthetic prompts apart from every eval suite: the n-gram decontamination of `curate`, before sampling.

The prompts' user turns are compared with the eval prompts of the chosen suites (by default tasks,
ifeval, ifbench and humaneval; the generated suites with the eval seed and sizes the evaluation
uses), exactly as `tunesmith data decontaminate` compares training rows; a prompt at or above the
threshold is removed and listed with the eval item it overlaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..curate import DecontamConfig, decontaminate
from ..data.example import Example
from ..data.tasks import HELD_OUT_TASKS
from .prompts import SynthPrompt

SYNTH_SUITES = ("tasks", "ifeval", "ifbench", "humaneval")


def decontaminate_prompts(prompts: list[SynthPrompt], suites: Sequence[str] = SYNTH_SUITES, eval_seed: int = 0,
                          tasks_n: int = HELD_OUT_TASKS, ifeval_n: int = 100, ngram: int = 8,
                          threshold: float = 0.8, progress: bool = False
                          ) -> tuple[list[SynthPrompt], dict[str, Any]]:
    """(the prompts that overlap no eval prompt, a summary: removed, removed_by_suite, eval_prompts, hits)."""
    if not suites:
        return prompts, {"removed": 0, "removed_by_suite": {}, "eval_prompts": {}, "hits": [], "suites": []}
    cfg = DecontamConfig(suites=tuple(suites), ngram=ngram, threshold=threshold, tasks_n=tasks_n, seed=eval_seed,
                         ifeval_n=ifeval_n)
    examples = [Example([{"role": "user", "content": p.user_text}, {"role": "assistant", "content": ""}],
                        source=p.id) for p in prompts]
    res = decontaminate(examples, cfg, total=len(examples), progress=progress)
    hits = []
    for h in res.hits:
        row = h.to_json()
        row["prompt_id"] = prompts[h.row].id
        row.pop("where", None)
        hits.append(row)
    summary = res.summary()
    out = {"removed": summary["removed"], "removed_by_suite": summary["removed_by_suite"],
           "eval_prompts": summary["eval_prompts"], "suites": list(suites), "eval_seed": eval_seed,
           "ngram": ngram, "threshold": threshold, "hits": hits}
    return [p for p, keep in zip(prompts, res.keep) if keep], out
