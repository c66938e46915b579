"""A mixed pool for selection *for a target*: many task types plus synthetic IF data, with planted
faults, a few target examples of 2-3 types, and held-out evaluation items of those types only.

`build_targeted_pool(n_tasks, n_if, target_types, ...)` holds:

    task rows   `build_fault_pool(n_tasks)` over all 13 generated task types, with its planted
                faults (20% corrupted: wrong answers and swapped responses; 10% near-duplicates,
                5% exact duplicates, 1% copies of eval items); meta as there
    ifeval rows `n_if` IFEval-style constraint prompts (`evalsets.ifeval.ifeval_items` over
                `IF_INSTRUCTIONS`, 1-2 instructions each, about `synth.generated.SYNTH_TOPICS`)
                with rule-built answers, every one checked by the IFEval checkers: 80% follow all
                their instructions (fault "clean"), 20% break at least one (fault "if_violated").
                meta task "ifeval". No model runs: the answers are built to satisfy or violate.
    targets     `targets_per_type` examples per target type: the fault pool's dev items (a seed
                disjoint from the pool and from every eval item)
    eval_items  `eval_per_type` held-out items per target type, no prompt of which is in the pool
                (normalised) or among the targets: the fault pool's own eval items of those types
                (the ones its eval_copy rows leak) first, then fresh ones from another seed

Every row's meta holds the truth (task, fault), so a selection can be scored for its target share
(rows of the target types), fault share (corrupted rows) and leaks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.example import Example
from tunesmith.data.tasks import EVAL_SEED_OFFSET, TaskItem, generate_tasks, resolve_types
from tunesmith.errors import UsageError
from tunesmith.testing.fault_pool import FaultPool, _norm, build_fault_pool

CORRUPT_FAULTS = ("corrupted_wrong", "corrupted_swap", "if_violated")
IF_SOURCE = "ifeval"
EXTRA_EVAL_SEED_OFFSET = 3 * EVAL_SEED_OFFSET + 29  # further target-type eval items come from this seed
# Instructions whose answers can be built by rule (and checked by the IFEval checker).
IF_INSTRUCTIONS = ("change_case:english_capital", "change_case:english_lowercase", "detectable_content:postscript",
                   "detectable_format:number_bullet_lists", "detectable_format:title", "keywords:existence",
                   "keywords:forbidden_words", "punctuation:no_comma", "startend:end_checker", "startend:quotation")
_SENTENCES = ("{T} is worth a closer look.", "Most people notice {t} only when something changes.",
              "A small plan helps a lot with {t}.", "Start simple, keep notes and ask questions.",
              "Friends can make {t} more fun.", "The details of {t} matter more than they seem.",
              "Give {t} a little time each week.", "Many good stories begin with {t}.")


@dataclass
class TargetedPool:
    """The pool (`examples`, truth in each meta), target examples, and held-out items of the target types."""

    examples: list[Example]
    targets: list[Example]
    eval_items: list[TaskItem]
    target_types: tuple[str, ...]
    sources: tuple[str, ...]  # the 13 task types and "ifeval"
    base: FaultPool = field(repr=False)
    if_dropped: int = 0  # built IF answers whose checker verdict was not the planned one

    def is_target(self, i: int) -> bool:
        return self.examples[i].meta["task"] in self.target_types


def build_targeted_pool(n_tasks: int = 1300, n_if: int = 200, target_types: tuple[str, ...] | list[str] = (
        "convert_units", "max_number", "reverse_words"), targets_per_type: int = 8, eval_per_type: int = 134,
        seed: int = 0, if_violated: float = 0.2) -> TargetedPool:
    """The pool described in the module docstring (deterministic in its arguments)."""
    types = resolve_types(list(target_types))
    if not 1 <= len(types) < 13:
        raise UsageError(f"give 1 to 12 target task types, got {list(types)}")
    base = build_fault_pool(n_tasks, seed=seed, dev_per_task=targets_per_type)
    examples = list(base.examples)
    if_rows, dropped = if_examples(n_if, seed, if_violated)
    for ex in if_rows:
        ex.source, ex.line = f"ifeval:synth-pool:seed={seed}", len(examples) + 1
        examples.append(ex)
    targets = [it.to_example("targets") for it in base.dev_items if it.task in types]
    taken = {_norm(ex.messages[0]["content"]) for ex in examples} | {_norm(t.messages[0]["content"]) for t in targets}
    eval_items = _target_eval(base, types, eval_per_type, seed, taken)
    return TargetedPool(examples, targets, eval_items, types, (*base.task_types, IF_SOURCE), base, dropped)


def _target_eval(base: FaultPool, types: tuple[str, ...], per_type: int, seed: int, taken: set[str]) -> list[TaskItem]:
    """`per_type` held-out items per target type: the fault pool's own eval items first (their
    prompts are already kept out of the pool), then fresh prompts no pool row or target has."""
    out: list[TaskItem] = []
    for t in types:
        mine = [it for it in base.eval_items if it.task == t][:per_type]
        seen = taken | {_norm(it.prompt) for it in mine}
        for it in generate_tasks(per_type * 30 + 200, seed + EXTRA_EVAL_SEED_OFFSET, [t]):
            if len(mine) == per_type:
                break
            key = _norm(it.prompt)
            if key not in seen:
                seen.add(key)
                mine.append(it)
        if len(mine) < per_type:
            raise UsageError(f"only {len(mine)} held-out {t} prompts outside the pool; lower eval_per_type")
        out += mine
    return out


def if_examples(n: int, seed: int = 0, violated: float = 0.2) -> tuple[list[Example], int]:
    """`n` IFEval-style rows with rule-built answers, checked by the IFEval checkers; a share
    `violated` breaks an instruction on purpose. Returns (rows, items dropped because the checker
    disagreed with the plan)."""
    from tunesmith.evalsets.ifcheck import check_item, ifeval_registry
    from tunesmith.evalsets.ifeval import ifeval_items
    from tunesmith.synth.generated import SYNTH_TOPICS

    if n <= 0:
        return [], 0
    registry = ifeval_registry()
    rng = random.Random(f"targeted-pool-if:{seed}")
    n_bad = round(violated * n)
    items = ifeval_items(2 * n + 20, seed=f"targeted-pool:{seed}", instruction_ids=IF_INSTRUCTIONS,
                         max_instructions=2, topics=SYNTH_TOPICS)
    rows, dropped = [], 0
    for item in items:
        if len(rows) == n:
            break
        bad = len(rows) < n_bad
        topic = next((t for t in SYNTH_TOPICS if t in item["prompt"]), "it")
        answer = if_answer(item, topic, rng, follow=not bad)
        if check_item(registry, item, answer)["follow_all_strict"] == bad:
            dropped += 1
            continue
        rows.append(Example([{"role": "user", "content": item["prompt"]}, {"role": "assistant", "content": answer}],
                            meta={"task": IF_SOURCE, "fault": "if_violated" if bad else "clean", "dup_of": None,
                                  "instructions": list(item["instruction_id_list"])}))
    if len(rows) < n:  # pragma: no cover - nearly every built answer gets the planned verdict
        raise UsageError(f"built only {len(rows)} of {n} IF rows")
    rng.shuffle(rows)
    return rows, dropped


def if_answer(item: dict[str, Any], topic: str, rng: random.Random, follow: bool = True) -> str:
    """A short answer about `topic` that follows every instruction of `item` (or, with follow
    False, a plain answer that ignores them, with a comma, a capital and a forbidden word added
    where an instruction rules one out)."""
    kw = dict(zip(item["instruction_id_list"], item["kwargs"]))
    sents = [s.format(T=topic[0].upper() + topic[1:], t=topic) for s in rng.sample(_SENTENCES, 3)]
    if not follow:
        extra = kw.get("keywords:forbidden_words", {}).get("forbidden_words", ["very"])[0]
        return " ".join(sents) + f" Honestly, it is {extra} good."
    if "keywords:existence" in kw:
        sents.append("It reminds me of a " + " and a ".join(kw["keywords:existence"]["keywords"]) + ".")
    if "detectable_format:number_bullet_lists" in kw:
        n = kw["detectable_format:number_bullet_lists"]["num_bullets"]
        while len(sents) < n:
            sents.append(rng.choice(_SENTENCES).format(T="It", t="it"))
        body = "\n".join("* " + s for s in sents[: n - 1] + [" ".join(sents[n - 1:])])
    else:
        body = " ".join(sents)
    if "detectable_format:title" in kw:
        body = f"<<{topic.title()}>>\n" + body
    if "detectable_content:postscript" in kw:
        body += "\n\n" + kw["detectable_content:postscript"]["postscript_marker"] + " Thanks for reading."
    if "startend:end_checker" in kw:
        body += "\n" + kw["startend:end_checker"]["end_phrase"]
    if "punctuation:no_comma" in kw:
        body = body.replace(",", "")
    if "change_case:english_lowercase" in kw:
        body = body.lower()
    if "change_case:english_capital" in kw:
        body = body.upper()
    if "startend:quotation" in kw:
        body = '"' + body + '"'
    return body
