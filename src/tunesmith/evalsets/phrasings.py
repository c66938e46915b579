"""Paraphrased instructions for the generated task items: the phrasings the robustness suite asks.

Each task type has a regex that parses its canonical prompt (as `tunesmith.data.tasks` writes it)
and several templates that reword it from the parsed groups; template 0 is the canonical wording.
`rephrase(item, t)` gives an item's prompt in phrasing `t`; `n_phrasings()` is how many phrasings
every task type has. Scoring (`eval_robustness`) lives in `tunesmith.evaluate.robustness`.
"""

from __future__ import annotations

import re

from ..data.tasks import TaskItem

__all__ = ["PHRASINGS", "rephrase", "n_phrasings"]

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
