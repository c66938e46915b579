"""Deterministic generator of small, exactly verifiable instruction tasks.

Each task type turns a few random draws (small numbers, common short words, names) into a
short user prompt that states the output format, and one canonical reference answer. The same
items serve as training data and, generated from a different seed with their prompts kept out
of training, as a held-out exact-match eval suite (`generate_train_eval`).

The tasks are sized for a tiny chat model tuned on about a thousand samples: prompts of a few
dozen tokens, answers of a few tokens, whole-word and small-number operations rather than
character-level ones, and every answer depends on the input.

Only `random.Random(seed)` instances are used, so output is a pure function of the arguments.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tunesmith.data.example import Example
from tunesmith.errors import UsageError

WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "tree", "book", "bird", "fish", "milk", "rain", "star",
    "door", "hat", "cup", "car", "bus", "key", "box", "pen", "map", "road",
    "ship", "cake", "lamp", "rock", "sand", "king", "ring", "bell", "coat", "boat",
    "moon", "leaf", "frog", "bear", "wolf", "lion", "duck", "goat", "fire", "snow",
    "hill", "lake", "nest", "rose", "seed", "shoe", "sock", "desk", "wall", "bread",
    "apple", "chair", "house", "water", "green", "happy", "light", "river", "stone", "table",
)
NAMES: tuple[str, ...] = (
    "Ana", "Ben", "Tom", "Lia", "Sam", "Max", "Eva", "Leo", "Mia", "Zoe",
    "Kim", "Dan", "Amy", "Ian", "Joe", "Ray", "Nina", "Omar", "Paul", "Rosa",
)
CITIES: tuple[str, ...] = (
    "Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Berlin", "Madrid", "Dublin", "Vienna",
    "Lisbon", "Prague", "Athens", "Delhi", "Seoul", "Quito",
)
DOMAINS: tuple[str, ...] = ("mail.com", "example.org", "work.net", "post.io", "home.com", "site.org")

# (from unit, to unit, factor) for convert_units.
CONVERSIONS: tuple[tuple[str, str, int], ...] = (
    ("km", "m", 1000),
    ("m", "cm", 100),
    ("kg", "g", 1000),
    ("h", "min", 60),
    ("min", "s", 60),
)

# Sentence templates for extract_email; the email is never the last token, so a trailing
# period in the sentence cannot be confused with part of the address.
EMAIL_TEMPLATES: tuple[str, ...] = (
    "Please write to {e} about the trip.",
    "My email is {e} and I reply fast.",
    "Send the file to {e} before noon.",
    "You can reach {n} at {e} on Monday.",
    "Questions go to {e} or the front desk.",
    "For help, contact {e} today.",
)

# Offset between a train seed and the seed its held-out eval items are drawn with.
EVAL_SEED_OFFSET = 1_000_003
TARGET_SEED_OFFSET = 2_000_003  # generated selection targets: a seed disjoint from train and eval items
HELD_OUT_TASKS = 260  # held-out task items by default (20 per task type): eval, decontamination, recipes


@dataclass(frozen=True)
class TaskItem:
    """One generated task: its type, the user prompt and the canonical reference answer."""

    task: str
    prompt: str
    answer: str

    def to_example(self, source: str = "tasks") -> Example:
        """The item as a user/assistant conversation; `line` is left for the caller to set."""
        return Example(
            messages=[
                {"role": "user", "content": self.prompt},
                {"role": "assistant", "content": self.answer},
            ],
            source=source,
            meta={"task": self.task, "answer": self.answer},
        )


# ---------------------------------------------------------------------------------------------
# Generators: each takes the shared Random and returns (prompt, answer).
# ---------------------------------------------------------------------------------------------


def _numbers(rng: random.Random, lo: int = 3, hi: int = 5) -> list[int]:
    """lo..hi distinct integers in 0..99, in random order."""
    return rng.sample(range(100), rng.randint(lo, hi))


def _words(rng: random.Random, lo: int, hi: int) -> list[str]:
    """lo..hi distinct common words, in random order."""
    return rng.sample(WORDS, rng.randint(lo, hi))


def _join(values: Sequence[object]) -> str:
    return ", ".join(str(v) for v in values)


def _sort_numbers(rng: random.Random) -> tuple[str, str]:
    nums = _numbers(rng)
    prompt = ("Sort these numbers in ascending order. "
              f"Answer with the numbers only, separated by commas: {_join(nums)}")
    return prompt, _join(sorted(nums))


def _reverse_words(rng: random.Random) -> tuple[str, str]:
    words = _words(rng, 3, 4)
    prompt = ("Reverse the order of these words. "
              f"Answer with the words only, separated by spaces: {' '.join(words)}")
    return prompt, " ".join(reversed(words))


def _uppercase(rng: random.Random) -> tuple[str, str]:
    words = _words(rng, 2, 3)
    prompt = f"Convert these words to upper case. Answer with the words only: {' '.join(words)}"
    return prompt, " ".join(w.upper() for w in words)


def _count_items(rng: random.Random) -> tuple[str, str]:
    words = _words(rng, 2, 7)
    prompt = f"How many items are in this list? Answer with a number only: {_join(words)}"
    return prompt, str(len(words))


def _add_numbers(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    return f"What is {a} + {b}? Answer with the number only.", str(a + b)


def _subtract_numbers(rng: random.Random) -> tuple[str, str]:
    a, b = sorted((rng.randint(1, 50), rng.randint(1, 50)), reverse=True)
    return f"What is {a} - {b}? Answer with the number only.", str(a - b)


def _json_object(rng: random.Random) -> tuple[str, str]:
    pools: dict[str, Callable[[], object]] = {
        "name": lambda: rng.choice(NAMES),
        "age": lambda: rng.randint(18, 80),
        "city": lambda: rng.choice(CITIES),
        "score": lambda: rng.randint(1, 99),
    }
    keys = rng.sample(sorted(pools), 2)
    obj = {k: pools[k]() for k in keys}
    facts = ", ".join(f"{k} is {v}" for k, v in obj.items())
    prompt = (f'Write a JSON object with the keys "{keys[0]}" and "{keys[1]}". '
              f"Answer with the JSON only: {facts}")
    return prompt, json.dumps(obj)


def _extract_email(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    digits = str(rng.randint(1, 99)) if rng.random() < 0.5 else ""
    email = f"{name.lower()}{digits}@{rng.choice(DOMAINS)}"
    sentence = rng.choice(EMAIL_TEMPLATES).format(e=email, n=name)
    prompt = f"Find the email address in this sentence. Answer with the email only: {sentence}"
    return prompt, email


def _convert_units(rng: random.Random) -> tuple[str, str]:
    src, dst, factor = rng.choice(CONVERSIONS)
    value = rng.randint(1, 99)
    return f"Convert {value} {src} to {dst}. Answer with the number only.", str(value * factor)


def _max_number(rng: random.Random) -> tuple[str, str]:
    nums = _numbers(rng)
    prompt = f"What is the largest of these numbers? Answer with the number only: {_join(nums)}"
    return prompt, str(max(nums))


def _min_number(rng: random.Random) -> tuple[str, str]:
    nums = _numbers(rng)
    prompt = f"What is the smallest of these numbers? Answer with the number only: {_join(nums)}"
    return prompt, str(min(nums))


def _last_word(rng: random.Random) -> tuple[str, str]:
    words = _words(rng, 3, 5)
    prompt = f"What is the last word in this list? Answer with the word only: {_join(words)}"
    return prompt, words[-1]


def _repeat_word(rng: random.Random) -> tuple[str, str]:
    word, times = rng.choice(WORDS), rng.randint(2, 4)
    prompt = f'Repeat the word "{word}" {times} times. Answer with the words only, separated by spaces.'
    return prompt, " ".join([word] * times)


_GENERATORS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "sort_numbers": _sort_numbers,
    "reverse_words": _reverse_words,
    "uppercase": _uppercase,
    "count_items": _count_items,
    "add_numbers": _add_numbers,
    "subtract_numbers": _subtract_numbers,
    "json_object": _json_object,
    "extract_email": _extract_email,
    "convert_units": _convert_units,
    "max_number": _max_number,
    "min_number": _min_number,
    "last_word": _last_word,
    "repeat_word": _repeat_word,
}

TASK_TYPES: tuple[str, ...] = tuple(_GENERATORS)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def resolve_types(task_types: Sequence[str] | None) -> tuple[str, ...]:
    """The task types to cycle through, validated; None means all of TASK_TYPES."""
    if task_types is None:
        return TASK_TYPES
    if isinstance(task_types, str):
        task_types = [task_types]
    types = tuple(task_types)
    if not types:
        raise UsageError("task_types is empty; give at least one of: " + ", ".join(TASK_TYPES))
    unknown = [t for t in types if t not in _GENERATORS]
    if unknown:
        raise UsageError(
            f"unknown task type(s): {', '.join(map(repr, unknown))}; "
            f"known task types are: {', '.join(TASK_TYPES)}"
        )
    return types


def _generate(
    n: int, seed: int, types: tuple[str, ...], skip: frozenset[str] = frozenset(), unique: bool = False
) -> list[TaskItem]:
    """n items round-robin over `types`, redrawing any item whose prompt is in `skip`
    (and, with `unique`, any prompt already drawn: a held-out set counts each prompt once)."""
    if n < 0:
        raise UsageError(f"number of tasks must be >= 0, got {n}")
    rng = random.Random(seed)
    items: list[TaskItem] = []
    seen: set[str] = set()
    for i in range(n):
        task = types[i % len(types)]
        for _ in range(10_000):
            prompt, answer = _GENERATORS[task](rng)
            if prompt not in skip and prompt not in seen:
                break
        else:  # pragma: no cover - only when the held-out set covers a type's whole prompt space
            raise UsageError(f"could not draw a {task} prompt outside the eval set; lower n_eval")
        items.append(TaskItem(task=task, prompt=prompt, answer=answer))
        if unique:
            seen.add(prompt)
    return items


def generate_tasks(
    n: int, seed: int = 0, task_types: Sequence[str] | None = None
) -> list[TaskItem]:
    """n items, cycling through task types round-robin.

    Item i has type `task_types[i % k]`, so every type appears n//k or n//k + 1 times. The result
    depends only on (n, seed, task_types): one `random.Random(seed)` drives every draw, and a
    shorter list is a prefix of a longer one with the same seed and types.
    """
    return _generate(n, seed, resolve_types(task_types))


def generate_examples(
    n: int,
    seed: int = 0,
    task_types: Sequence[str] | None = None,
    source: str | None = None,
) -> list[Example]:
    """`generate_tasks` as Examples; source defaults to "tasks:seed=<seed>", line is 1-based."""
    src = source if source is not None else f"tasks:seed={seed}"
    examples = []
    for i, item in enumerate(generate_tasks(n, seed, task_types), start=1):
        ex = item.to_example(src)
        ex.line = i
        examples.append(ex)
    return examples


def generate_train_eval(
    n_train: int, n_eval: int, seed: int = 0, task_types: Sequence[str] | None = None
) -> tuple[list[TaskItem], list[TaskItem]]:
    """Train items and held-out eval items with no prompt in common.

    Eval items are drawn like `generate_tasks(n_eval, seed + EVAL_SEED_OFFSET, task_types)`, with
    no prompt twice. Train items
    are drawn like `generate_tasks(n_train, seed, task_types)`, except that a draw whose prompt
    is in the eval set is thrown away and redrawn (same type, so round-robin counts hold).
    """
    types = resolve_types(task_types)
    eval_items = _generate(n_eval, seed + EVAL_SEED_OFFSET, types, unique=True)
    skip = frozenset(item.prompt for item in eval_items)
    return _generate(n_train, seed, types, skip), eval_items


def _normalise(text: str) -> str:
    """Strip surrounding whitespace and one trailing period."""
    text = text.strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


def _canonical_json(text: str) -> str | None:
    """A canonical dump of parsed JSON (sorted keys), or None if `text` is not JSON.

    Comparing dumps rather than parsed values keeps types strict: true != 1 and 31.0 != 31.
    """
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except ValueError:
        return None


def check_answer(task: str, output: str, answer: str) -> bool:
    """Whether a model output matches the reference answer exactly.

    Both sides are stripped of surrounding whitespace and one trailing period. json_object
    outputs are parsed and compared as objects (key order and spacing do not matter, value
    types do); every other type needs exact, case-sensitive string equality.
    """
    resolve_types([task])
    out, ref = _normalise(output), _normalise(answer)
    if task == "json_object":
        ref_json = _canonical_json(ref)
        return ref_json is not None and _canonical_json(out) == ref_json
    return out == ref
