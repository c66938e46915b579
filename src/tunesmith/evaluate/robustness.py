"""Robustness to instruction phrasing: the same task items asked several ways.

Instruction-tuned models are known to lose accuracy when the instruction is reworded (Sun et al.,
"Evaluating the Zero-shot Robustness of Instruction-tuned Language Models", 2023). Each task type
has a parser for its canonical prompt and several paraphrased templates (template 0 is the
canonical wording); every held-out item is asked in every phrasing, and the spread of accuracy
across phrasings is reported.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from typing import Any, Callable

from ..data.tasks import TaskItem, check_answer
from .generate import generate

# task -> (regex over the canonical prompt, templates using its named groups)
PHRASINGS: dict[str, tuple[str, list[str]]] = {
    "sort_numbers": (r"^Sort these numbers in ascending order\. Answer with the numbers only, separated by commas: (?P<x>.+)$", [
        "Sort these numbers in ascending order. Answer with the numbers only, separated by commas: {x}",
        "Put these numbers in increasing order and reply with just the numbers, comma-separated: {x}",
        "Numbers: {x}\nList them from smallest to largest, separated by commas, and write nothing else.",
    ]),
    "reverse_words": (r"^Reverse the order of these words\. Answer with the words only, separated by spaces: (?P<x>.+)$", [
        "Reverse the order of these words. Answer with the words only, separated by spaces: {x}",
        "Write these words backwards in order (last word first), separated by spaces, nothing else: {x}",
        "Words: {x}\nGive the same words in reverse order, separated by spaces, with no other text.",
    ]),
    "uppercase": (r"^Convert these words to upper case\. Answer with the words only: (?P<x>.+)$", [
        "Convert these words to upper case. Answer with the words only: {x}",
        "Rewrite in capital letters and reply with only the rewritten words: {x}",
        "Words: {x}\nWrite them in ALL CAPS. Reply with the words only.",
    ]),
    "count_items": (r"^How many items are in this list\? Answer with a number only: (?P<x>.+)$", [
        "How many items are in this list? Answer with a number only: {x}",
        "Count the entries in this comma-separated list and reply with just the count: {x}",
        "List: {x}\nHow many elements does the list above have? Reply with a single number.",
    ]),
    "add_numbers": (r"^What is (?P<a>\d+) \+ (?P<b>\d+)\? Answer with the number only\.$", [
        "What is {a} + {b}? Answer with the number only.",
        "Add {a} and {b}. Reply with just the result.",
        "Compute the sum of {a} and {b} and write only the number.",
    ]),
    "subtract_numbers": (r"^What is (?P<a>\d+) - (?P<b>\d+)\? Answer with the number only\.$", [
        "What is {a} - {b}? Answer with the number only.",
        "Subtract {b} from {a}. Reply with just the result.",
        "Compute {a} minus {b} and write only the number.",
    ]),
    "json_object": (r'^Write a JSON object with the keys "(?P<k1>\w+)" and "(?P<k2>\w+)"\. Answer with the JSON only: (?P<x>.+)$', [
        'Write a JSON object with the keys "{k1}" and "{k2}". Answer with the JSON only: {x}',
        'Return only a JSON object whose keys are "{k1}" and "{k2}", using these facts: {x}',
        'Facts: {x}\nEncode them as a JSON object with keys "{k1}" and "{k2}". Output the JSON and nothing else.',
    ]),
    "extract_email": (r"^Find the email address in this sentence\. Answer with the email only: (?P<x>.+)$", [
        "Find the email address in this sentence. Answer with the email only: {x}",
        "Which email address appears in the following text? Reply with the address only: {x}",
        "Text: {x}\nCopy out the e-mail address from the text above and write nothing else.",
    ]),
    "convert_units": (r"^Convert (?P<v>\d+) (?P<src>\w+) to (?P<dst>\w+)\. Answer with the number only\.$", [
        "Convert {v} {src} to {dst}. Answer with the number only.",
        "How many {dst} are in {v} {src}? Reply with just the number.",
        "Express {v} {src} in {dst}. Write only the numeric value.",
    ]),
    "max_number": (r"^What is the largest of these numbers\? Answer with the number only: (?P<x>.+)$", [
        "What is the largest of these numbers? Answer with the number only: {x}",
        "Which number is the biggest? Reply with just that number: {x}",
        "Numbers: {x}\nWrite the maximum of the numbers above and nothing else.",
    ]),
    "min_number": (r"^What is the smallest of these numbers\? Answer with the number only: (?P<x>.+)$", [
        "What is the smallest of these numbers? Answer with the number only: {x}",
        "Which number is the lowest? Reply with just that number: {x}",
        "Numbers: {x}\nWrite the minimum of the numbers above and nothing else.",
    ]),
    "last_word": (r"^What is the last word in this list\? Answer with the word only: (?P<x>.+)$", [
        "What is the last word in this list? Answer with the word only: {x}",
        "Give the final item of this list and nothing else: {x}",
        "List: {x}\nWhich word comes last in the list above? Reply with that word only.",
    ]),
    "repeat_word": (r'^Repeat the word "(?P<w>\w+)" (?P<n>\d+) times\. Answer with the words only, separated by spaces\.$', [
        'Repeat the word "{w}" {n} times. Answer with the words only, separated by spaces.',
        'Write "{w}" {n} times in a row, separated by spaces, with no other text.',
        'Say the word {w} exactly {n} times, space-separated, and nothing else.',
    ]),
}


def rephrase(item: TaskItem, template_index: int) -> str:
    """The item's prompt in phrasing `template_index` (0 = canonical)."""
    pattern, templates = PHRASINGS[item.task]
    match = re.match(pattern, item.prompt, flags=re.S)
    if match is None:  # the generator's wording changed without this table following it
        raise ValueError(f"{item.task}: prompt does not match its robustness parser: {item.prompt!r}")
    return templates[template_index].format(**match.groupdict())


def n_phrasings() -> int:
    return min(len(t) for _, t in PHRASINGS.values())


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
