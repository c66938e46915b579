"""Generated prompt sources: IFEval-style constraint prompts and the built-in verifiable tasks.

Both are kept apart from the eval suites by construction, whatever seed the evaluation uses:

* `ifeval_prompts` builds items with the eval generator (`evalsets.ifeval.ifeval_items`) but about
  `SYNTH_TOPICS`, a topic list that shares no topic with the eval items' `TOPICS`, so a synthetic
  prompt never equals an eval prompt; it also draws from its own random stream (a string seed
  "synth:<seed>", which no integer eval seed produces). Each prompt carries its item, so the
  IFEval checkers score its answers.
* `task_prompts` draws `data.tasks` items and skips every prompt of the held-out eval items of
  `eval_seed` (the suite `tunesmith eval` and a recipe evaluate on); each carries its reference.

Decontamination (synth.decontam) then checks every prompt against the eval suites by n-gram overlap.
"""

from __future__ import annotations

from ..data.tasks import HELD_OUT_TASKS, generate_tasks, generate_train_eval
from .prompts import SynthPrompt

SYNTH_TOPICS = (
    "a night market", "learning a second language", "the water cycle", "a secondhand bookshop",
    "training for a marathon", "a village bakery", "bees and pollination", "a ferry crossing",
    "repairing an old bicycle", "a school science fair", "tides and the moon", "a family recipe",
    "winter camping", "a community radio station", "the invention of the printing press", "houseplants",
    "a museum of clocks", "volunteering at an animal shelter", "solar panels on a roof", "a chess club",
    "a lighthouse keeper", "making pottery", "a train journey across a desert", "a neighborhood cleanup",
    "the history of tea", "a weather balloon", "birdwatching in spring", "a street musician",
    "knitting a scarf", "a power outage", "the first snowfall of the year", "a recycling plant",
)


def ifeval_prompts(n: int, seed: int = 0) -> list[SynthPrompt]:
    """`n` IFEval-style constraint prompts for training (see the module docstring), each with its item."""
    from ..evalsets.ifeval import ifeval_items

    out = []
    for i, item in enumerate(ifeval_items(n, seed=f"synth:{seed}", topics=SYNTH_TOPICS)):
        out.append(SynthPrompt(id=item["key"], source="ifeval", origin=f"ifeval:synth:seed={seed}:{i + 1}",
                               messages=[{"role": "user", "content": item["prompt"]}], verifier="ifeval",
                               spec=item, groups=list(item["instruction_id_list"])))
    return out


def task_prompts(n: int, seed: int = 0, eval_seed: int = 0, eval_n: int = HELD_OUT_TASKS) -> list[SynthPrompt]:
    """`n` generated tasks (round-robin over the task types), none of them a held-out eval prompt of
    `eval_seed`, each with its reference answer."""
    held_out = {it.prompt for it in generate_train_eval(0, eval_n, eval_seed)[1]}
    want = n + 16
    while True:  # generate_tasks is prefix-stable: ask for more until n survive the filter
        drawn = generate_tasks(want, seed)
        kept = [(i, it) for i, it in enumerate(drawn) if it.prompt not in held_out][:n]
        if len(kept) == n or want > 4 * n + 1000:
            break
        want *= 2
    return [SynthPrompt(id=f"tasks-{seed}-{i}", source="tasks", origin=f"tasks:seed={seed}:{i + 1}",
                        messages=[{"role": "user", "content": it.prompt}], verifier="tasks",
                        spec={"task": it.task, "answer": it.answer}, groups=[it.task])
            for i, it in kept]
