"""A deterministic pool of task examples with planted faults and ground truth, for benchmarks.

`build_fault_pool(n, seed)` mixes generated task items (`data.tasks`) with known problems, so that
curation (dedup, decontamination) and data selection can be scored against the truth:

    exact_dup        5%  copies of clean rows; a third verbatim, a third with the prompt's case
                         changed, a third with extra whitespace (the normalised hash catches all)
    near_dup        10%  copies of clean rows with one edit that leaves the content alone (below)
    eval_copy        1%  held-out eval items of the `tasks` suite (same seed and n_eval as
                         `generate_train_eval(.., n_eval, seed)`), with their correct answers
    corrupted_wrong 10%  a plausible wrong answer of the right form (perturbed number, numbers out
                         of order, the words not reversed, another item's answer of the same type)
    corrupted_swap  10%  responses swapped between two rows of different task types
    clean           rest unique items (by normalised prompt), none of them an eval prompt

Near-duplicate edits (`near_dup_edit`), drawn evenly: a polite prefix ("Please, ", "Hi! "...), a
polite suffix ("Thanks!", "Thank you."), a filler word ("Just answer with..."), a punctuation change
inside the prompt ("? " -> "?! ", ": " -> " — "), and a one-word re-wording of the instruction ("Answer with" ->
"Reply with" / "Respond with", "these" -> "those", "What is" -> "What's"). Every edit changes the
normalised text (so it is not an exact duplicate) but not a single number or content word.

Every row's `meta` holds the truth: task, answer (the correct one), fault, dup_of (the row index of
the original for exact_dup / near_dup, else None), plus `edit` for near_dup and `variant` for
exact_dup. Originals of planted duplicates stay in the pool as clean rows. `dev_items` is a small
target set (per task type) drawn from another seed, disjoint from the pool and from the eval items.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from tunesmith.data.example import Example
from tunesmith.data.tasks import (CITIES, EVAL_SEED_OFFSET, NAMES, TaskItem, check_answer, generate_tasks,
                                  generate_train_eval, resolve_types)
from tunesmith.errors import UsageError

FAULTS = ("clean", "corrupted_wrong", "corrupted_swap", "near_dup", "exact_dup", "eval_copy")
DEV_SEED_OFFSET = 2 * EVAL_SEED_OFFSET + 17  # dev items come from yet another seed
NEAR_EDITS = ("prefix", "suffix", "filler", "punctuation", "rephrase")
_PREFIXES = ("Please, ", "Hi! ", "Hello. ", "Hey, ")
_SUFFIXES = (" Thanks!", " Thank you.", " Thanks so much!")
_FILLERS = ("Just", "Simply", "Now", "Please")
_REPHRASES = (("Answer with", "Reply with"), ("Answer with", "Respond with"), ("these", "those"),
              ("What is", "What's"), ("this", "the"))
_PUNCT_EDITS = (("? ", "?! "), ("? ", "?? "), (". ", "! "), (". ", "; "), (": ", " — "), (", ", " , "))


@dataclass
class FaultPool:
    """The pool (`examples`, with ground truth in each `meta`), the held-out eval items and a dev set."""

    examples: list[Example]
    eval_items: list[TaskItem]
    dev_items: list[TaskItem]
    seed: int
    task_types: tuple[str, ...] = field(default_factory=tuple)

    def indices(self, *faults: str) -> list[int]:
        """Row indices whose fault is one of `faults`."""
        return [i for i, ex in enumerate(self.examples) if ex.meta["fault"] in faults]

    def counts(self) -> dict[str, int]:
        """Rows per fault kind."""
        c = Counter(ex.meta["fault"] for ex in self.examples)
        return {f: c.get(f, 0) for f in FAULTS}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def build_fault_pool(n: int = 4000, seed: int = 0, task_types: Sequence[str] | None = None, n_eval: int = 260,
                     dev_per_task: int = 8) -> FaultPool:
    """A pool of `n` rows with the planted faults described in the module docstring (deterministic)."""
    types = resolve_types(task_types)
    if n < 20:
        raise UsageError(f"a fault pool needs n >= 20 rows, got {n}")
    rng = random.Random(f"fault-pool:{seed}")
    _, eval_items = generate_train_eval(0, n_eval, seed, types)
    eval_norm = {_norm(it.prompt) for it in eval_items}

    n_exact, n_near = round(0.05 * n), round(0.10 * n)
    n_eval_copy = min(round(0.01 * n), len(eval_items))
    n_swap = 2 * (round(0.10 * n) // 2)  # swaps come in pairs
    n_wrong = round(0.20 * n) - n_swap
    n_clean = n - n_exact - n_near - n_eval_copy - n_swap - n_wrong
    bases = _unique_items(n_clean + n_wrong + n_swap, seed, types, n_eval, eval_norm)
    rng.shuffle(bases)
    clean, wrong, swap = bases[:n_clean], bases[n_clean:n_clean + n_wrong], bases[n_clean + n_wrong:]

    rows: list[tuple[Example, int | None]] = []  # (example, position of the original in `rows`)
    for it in clean:
        rows.append((_row(it.prompt, it.answer, it, "clean"), None))
    by_type: dict[str, list[str]] = {}
    for it in bases:
        by_type.setdefault(it.task, []).append(it.answer)
    for it in wrong:
        rows.append((_row(it.prompt, wrong_answer(it, rng, by_type[it.task]), it, "corrupted_wrong"), None))
    for a, b in _swap_pairs(swap, rng):
        rows.append((_row(a.prompt, b.answer, a, "corrupted_swap"), None))
        rows.append((_row(b.prompt, a.answer, b, "corrupted_swap"), None))
    originals = rng.sample(range(n_clean), n_exact + n_near)
    for k, i in enumerate(originals):
        it = clean[i]
        if k < n_exact:
            variant = ("verbatim", "case", "whitespace")[k % 3]
            ex = _row(_exact_variant(it.prompt, variant), it.answer, it, "exact_dup")
            ex.meta["variant"] = variant
        else:
            prompt, kind = near_dup_edit(it.prompt, rng, NEAR_EDITS[k % len(NEAR_EDITS)])
            ex = _row(prompt, it.answer, it, "near_dup")
            ex.meta["edit"] = kind
        rows.append((ex, i))
    for it in rng.sample(eval_items, n_eval_copy):
        rows.append((_row(it.prompt, it.answer, it, "eval_copy"), None))

    order = list(range(len(rows)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    source = f"fault_pool:seed={seed}"
    examples = []
    for new, old in enumerate(order):
        ex, orig = rows[old]
        ex.source, ex.line = source, new + 1
        ex.meta["dup_of"] = position[orig] if orig is not None else None
        examples.append(ex)
    taken = {_norm(it.prompt) for it in bases} | eval_norm
    dev = _dev_items(seed, types, dev_per_task, taken)
    return FaultPool(examples, eval_items, dev, seed, types)


def _row(prompt: str, response: str, item: TaskItem, fault: str) -> Example:
    return Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                   meta={"task": item.task, "answer": item.answer, "fault": fault})


def _unique_items(k: int, seed: int, types: tuple[str, ...], n_eval: int, skip: set[str]) -> list[TaskItem]:
    """k train items with distinct normalised prompts, none of them an eval prompt."""
    draw = 2 * k + 100
    while True:
        train, _ = generate_train_eval(draw, n_eval, seed, types)
        seen, out = set(skip), []
        for it in train:
            key = _norm(it.prompt)
            if key not in seen:
                seen.add(key)
                out.append(it)
                if len(out) == k:
                    return out
        if draw > 50 * k + 10_000:
            raise UsageError(f"cannot draw {k} distinct task prompts of types {list(types)}; lower n")
        draw *= 2


def _dev_items(seed: int, types: tuple[str, ...], per_task: int, taken: set[str]) -> list[TaskItem]:
    out = []
    for t in types:
        got = 0
        for it in generate_tasks(per_task * 20 + 50, seed + DEV_SEED_OFFSET, [t]):
            key = _norm(it.prompt)
            if key not in taken:
                taken.add(key)
                out.append(it)
                got += 1
                if got == per_task:
                    break
    return out


def _exact_variant(prompt: str, variant: str) -> str:
    if variant == "case":
        return prompt.lower() if prompt != prompt.lower() else prompt.upper()
    if variant == "whitespace":
        return "  " + prompt.replace(" ", "  ", 2) + " \n"
    return prompt


def near_dup_edit(prompt: str, rng: random.Random, kind: str | None = None) -> tuple[str, str]:
    """(edited prompt, kind): one edit of `kind` (random if None) that keeps every content word.

    Falls back to a polite prefix when the kind does not apply to this prompt.
    """
    kind = kind or rng.choice(NEAR_EDITS)
    if kind == "suffix":
        return prompt + rng.choice(_SUFFIXES), kind
    if kind == "filler" and "Answer with" in prompt:
        return prompt.replace("Answer with", rng.choice(_FILLERS) + " answer with", 1), kind
    if kind == "punctuation":
        options = [(a, b) for a, b in _PUNCT_EDITS if a in prompt]
        if options:
            a, b = rng.choice(options)
            return prompt.replace(a, b, 1), kind
    if kind == "rephrase":
        options = [(a, b) for a, b in _REPHRASES if re.search(rf"\b{a}\b", prompt)]
        if options:
            a, b = rng.choice(options)
            return re.sub(rf"\b{a}\b", b, prompt, count=1), kind
    return rng.choice(_PREFIXES) + prompt, "prefix"


def wrong_answer(item: TaskItem, rng: random.Random, same_type_answers: Sequence[str]) -> str:
    """A plausible wrong answer of the right form for `item` (never one `check_answer` accepts)."""
    for _ in range(50):
        cand = _perturb(item, rng) if rng.random() < 0.8 else rng.choice(same_type_answers)
        if cand and not check_answer(item.task, cand, item.answer):
            return cand
    for cand in same_type_answers:  # pragma: no cover - a perturbation nearly always works
        if not check_answer(item.task, cand, item.answer):
            return cand
    return item.answer + " 0"  # pragma: no cover


def _perturb(item: TaskItem, rng: random.Random) -> str:
    task, ans = item.task, item.answer
    listed = item.prompt.rsplit(": ", 1)[-1].split(", ")  # the list after the colon, where there is one
    if task in ("max_number", "min_number", "last_word") and len(listed) > 1:
        return rng.choice([x for x in listed if x != ans] or [ans])
    if task == "sort_numbers":
        nums = ans.split(", ")
        i = rng.randrange(len(nums) - 1)
        nums[i], nums[i + 1] = nums[i + 1], nums[i]
        return ", ".join(nums)
    if task == "reverse_words":
        return " ".join(reversed(ans.split()))  # the words in their original order
    if task == "repeat_word":
        words = ans.split()
        return " ".join(words[:1] * max(1, len(words) + rng.choice((-1, 1))))
    if task == "json_object":
        obj = json.loads(ans)
        key = rng.choice(sorted(obj))
        val = obj[key]
        obj[key] = val + rng.choice((-2, -1, 1, 2)) if isinstance(val, int) else rng.choice(
            [v for v in (NAMES if val in NAMES else CITIES) if v != val])
        return json.dumps(obj)
    if ans.isdigit():
        return str(max(0, int(ans) + rng.choice((-3, -2, -1, 1, 2, 3))))
    return ""  # no perturbation for this type: the caller takes another item's answer


def _swap_pairs(items: list[TaskItem], rng: random.Random) -> list[tuple[TaskItem, TaskItem]]:
    """Pairs of items of different task types whose swapped answers are both wrong.

    Items are ordered by type and item i is paired with item i + len/2, so two items of one type
    are never paired while no type holds more than half of the items.
    """
    ordered = sorted(items, key=lambda it: (it.task, rng.random()))
    half = len(ordered) // 2
    first, second = ordered[:half], ordered[half:2 * half]

    def ok(a: TaskItem, b: TaskItem) -> bool:
        return a.task != b.task and not check_answer(a.task, b.answer, a.answer) and not check_answer(
            b.task, a.answer, b.answer)

    for i in range(half):
        for k in range(i, half):  # item i's partner, or one from a later pair that fits both ways
            if ok(first[i], second[k]) and (k == i or ok(first[k], second[i])):
                second[i], second[k] = second[k], second[i]
                break
        else:
            raise UsageError("corrupted_swap needs items of at least two task types, none holding over half")
    return list(zip(first, second))


def score_dedup(pool: FaultPool, keep: Sequence[bool]) -> dict[str, float | int | dict]:
    """Dedup quality against the planted truth, from a keep mask over `pool.examples`.

    A planted duplicate (exact_dup / near_dup, always a pair with its original) is *found* when
    exactly one of the pair is kept. A removed row is a *false positive* unless it is half of a
    found pair (the copy, or the original when the copy was the one kept). fp_rate divides the
    false positives by the rows that should all stay (everything but the planted copies).
    """
    keep = [bool(k) for k in keep]
    if len(keep) != len(pool.examples):
        raise UsageError(f"keep mask has {len(keep)} entries for {len(pool.examples)} rows")
    explained: set[int] = set()
    found: Counter[str] = Counter()
    planted: Counter[str] = Counter()
    for i, ex in enumerate(pool.examples):
        fault, orig = ex.meta["fault"], ex.meta["dup_of"]
        if fault not in ("exact_dup", "near_dup"):
            continue
        kind = fault if fault == "exact_dup" else f"near_dup:{ex.meta['edit']}"
        planted[kind] += 1
        if keep[i] != keep[orig]:
            found[kind] += 1
            explained.add(orig if keep[i] else i)
    removed = [i for i, k in enumerate(keep) if not k]
    fps = [i for i in removed if i not in explained]
    n_near = sum(v for k, v in planted.items() if k.startswith("near"))
    should_stay = len(keep) - planted["exact_dup"] - n_near
    return {
        "exact_recall": found["exact_dup"] / max(planted["exact_dup"], 1),
        "near_recall": sum(v for k, v in found.items() if k.startswith("near")) / max(n_near, 1),
        "near_recall_by_edit": {k.split(":")[1]: found[k] / v for k, v in sorted(planted.items()) if ":" in k},
        "false_positives": len(fps),
        "fp_rate": len(fps) / max(should_stay, 1),
        "fp_by_fault": dict(Counter(pool.examples[i].meta["fault"] for i in fps)),
        "removed": len(removed),
    }
