"""Tests for the verifiable task generator and its exact checker."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from tunesmith.data.example import Example
from tunesmith.data.tasks import (
    TASK_TYPES,
    TaskItem,
    check_answer,
    generate_examples,
    generate_tasks,
    generate_train_eval,
)
from tunesmith.errors import UsageError


def _payload(prompt: str) -> str:
    """The data after the last ': ' of a prompt."""
    return prompt.rsplit(": ", 1)[1]


def _perturb(task: str, answer: str) -> str:
    """A plausible but wrong answer for the item."""
    if task == "sort_numbers":
        return ", ".join(reversed(answer.split(", ")))
    if task == "reverse_words":
        return " ".join(reversed(answer.split()))
    if task == "uppercase":
        return answer.lower()
    if task == "json_object":
        obj = json.loads(answer)
        key = next(iter(obj))
        obj[key] = obj[key] + 1 if isinstance(obj[key], int) else obj[key] + "x"
        return json.dumps(obj)
    if task == "extract_email":
        return answer.split("@")[0]
    if task == "repeat_word":
        return " ".join(answer.split()[:-1])
    if task == "last_word":
        return answer + "s"
    return str(int(answer) + 1)  # every other type answers with an integer


def test_task_types_fixed_and_complete():
    assert len(TASK_TYPES) >= 10
    assert len(set(TASK_TYPES)) == len(TASK_TYPES)
    assert TASK_TYPES[:5] == ("sort_numbers", "reverse_words", "uppercase", "count_items", "add_numbers")
    for name in ("json_object", "extract_email", "convert_units", "max_number"):
        assert name in TASK_TYPES


def test_deterministic_in_seed():
    a = generate_tasks(60, seed=3)
    assert a == generate_tasks(60, seed=3)
    assert a != generate_tasks(60, seed=4)
    assert generate_tasks(20, seed=3) == a[:20]  # a shorter list is a prefix


def test_pinned_seed_zero():
    items = generate_tasks(len(TASK_TYPES), seed=0)
    assert items[0] == TaskItem(
        "sort_numbers",
        "Sort these numbers in ascending order. Answer with the numbers only, separated by commas: "
        "97, 53, 5, 33",
        "5, 33, 53, 97",
    )
    assert items[4].prompt == "What is 9 + 49? Answer with the number only."
    assert items[4].answer == "58"
    assert items[6].prompt == (
        'Write a JSON object with the keys "name" and "score". '
        "Answer with the JSON only: name is Rosa, score is 19"
    )
    assert items[6].answer == '{"name": "Rosa", "score": 19}'
    assert items[8].answer == "4320"  # "Convert 72 h to min."


def test_round_robin_counts():
    n, k = 50, len(TASK_TYPES)
    items = generate_tasks(n, seed=1)
    assert [it.task for it in items[:k]] == list(TASK_TYPES)
    counts = Counter(it.task for it in items)
    assert set(counts) == set(TASK_TYPES)
    assert all(c in (n // k, n // k + 1) for c in counts.values())
    assert sum(counts.values()) == n

    sub = generate_tasks(7, seed=1, task_types=["add_numbers", "uppercase"])
    assert [it.task for it in sub] == ["add_numbers", "uppercase"] * 3 + ["add_numbers"]


def test_reference_passes_and_perturbed_fails_for_every_type():
    items = generate_tasks(len(TASK_TYPES) * 20, seed=5)
    for it in items:
        assert check_answer(it.task, it.answer, it.answer), it
        assert check_answer(it.task, f"  {it.answer}.\n", it.answer), it
        bad = _perturb(it.task, it.answer)
        assert bad != it.answer
        assert not check_answer(it.task, bad, it.answer), (it, bad)
        assert not check_answer(it.task, "", it.answer), it
        assert not check_answer(it.task, it.answer + " extra", it.answer), it


def test_answers_match_prompts():
    """Recompute each answer from its prompt for the types whose rule is easy to restate."""
    for it in generate_tasks(len(TASK_TYPES) * 15, seed=11):
        p = it.prompt
        if it.task == "sort_numbers":
            nums = [int(x) for x in _payload(p).split(", ")]
            assert 3 <= len(nums) <= 5
            assert it.answer == ", ".join(map(str, sorted(nums)))
        elif it.task == "reverse_words":
            assert it.answer.split() == _payload(p).split()[::-1]
        elif it.task == "uppercase":
            assert it.answer == _payload(p).upper()
        elif it.task == "count_items":
            assert int(it.answer) == len(_payload(p).split(", "))
        elif it.task in ("add_numbers", "subtract_numbers"):
            a, op, b = re.match(r"What is (\d+) ([+-]) (\d+)\?", p).groups()
            assert int(it.answer) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
        elif it.task == "convert_units":
            v, src, dst = re.match(r"Convert (\d+) (\w+) to (\w+)\.", p).groups()
            factor = {("km", "m"): 1000, ("m", "cm"): 100, ("kg", "g"): 1000,
                      ("h", "min"): 60, ("min", "s"): 60}[(src, dst)]
            assert int(it.answer) == int(v) * factor
        elif it.task in ("max_number", "min_number"):
            nums = [int(x) for x in _payload(p).split(", ")]
            assert int(it.answer) == (max(nums) if it.task == "max_number" else min(nums))
        elif it.task == "last_word":
            assert it.answer == _payload(p).split(", ")[-1]
        elif it.task == "extract_email":
            assert it.answer in p and re.fullmatch(r"[a-z]+\d*@[a-z]+\.[a-z]+", it.answer)
        elif it.task == "json_object":
            obj = json.loads(it.answer)
            assert _payload(p) == ", ".join(f"{k} is {v}" for k, v in obj.items())
        elif it.task == "repeat_word":
            word, times = re.match(r'Repeat the word "(\w+)" (\d+) times', p).groups()
            assert it.answer == " ".join([word] * int(times))


def test_items_short_and_input_dependent():
    items = generate_tasks(len(TASK_TYPES) * 30, seed=2)
    for it in items:
        assert len(it.prompt) <= 160, it.prompt
        assert len(it.answer) <= 40, it.answer
    for task in TASK_TYPES:
        answers = {it.answer for it in items if it.task == task}
        assert len(answers) >= 5, task


def test_json_checker_accepts_layout_and_order_variants():
    ref = '{"name": "Ana", "age": 31}'
    assert check_answer("json_object", '{"age":31,"name":"Ana"}', ref)
    assert check_answer("json_object", '\n{ "name" : "Ana",\n  "age": 31 }.', ref)
    assert not check_answer("json_object", '{"name": "Ana", "age": "31"}', ref)
    assert not check_answer("json_object", '{"name": "Ana", "age": 31.0}', ref)
    assert not check_answer("json_object", '{"name": "ana", "age": 31}', ref)
    assert not check_answer("json_object", '{"name": "Ana"}', ref)
    assert not check_answer("json_object", "name is Ana, age is 31", ref)
    assert not check_answer("json_object", '{"a": true}', '{"a": 1}')


def test_checker_is_case_sensitive_and_exact():
    assert check_answer("uppercase", "CAT DOG.", "CAT DOG")
    assert not check_answer("uppercase", "Cat Dog", "CAT DOG")
    assert not check_answer("sort_numbers", "3,17,42", "3, 17, 42")
    assert check_answer("add_numbers", " 41 ", "41")
    assert not check_answer("add_numbers", "The answer is 41", "41")


def test_train_eval_disjoint():
    train, held = generate_train_eval(600, 130, seed=0)
    assert len(train) == 600 and len(held) == 130
    assert not {it.prompt for it in train} & {it.prompt for it in held}
    assert len({it.prompt for it in held}) == len(held)  # each held-out prompt counts once
    assert Counter(it.task for it in train) == Counter(it.task for it in generate_tasks(600, 0))
    # convert_units and repeat_word have small prompt spaces, so collisions really occur and
    # the redraw is exercised: train differs from the plain generate_tasks list.
    assert train != generate_tasks(600, seed=0)
    assert generate_train_eval(600, 130, seed=0) == (train, held)
    assert generate_train_eval(600, 130, seed=1)[1] != held


def test_generate_examples():
    exs = generate_examples(5, seed=7)
    items = generate_tasks(5, seed=7)
    assert all(isinstance(e, Example) for e in exs)
    assert [e.line for e in exs] == [1, 2, 3, 4, 5]
    assert exs[0].source == "tasks:seed=7"
    assert exs[2].messages == [
        {"role": "user", "content": items[2].prompt},
        {"role": "assistant", "content": items[2].answer},
    ]
    assert exs[2].meta == {"task": items[2].task, "answer": items[2].answer}
    assert generate_examples(2, seed=7, source="x")[1].source == "x"
    assert items[0].to_example().source == "tasks"


def test_unknown_task_type_raises_usage_error():
    with pytest.raises(UsageError, match="unknown task type.*'nope'"):
        generate_tasks(3, task_types=["add_numbers", "nope"])
    with pytest.raises(UsageError):
        generate_train_eval(3, 3, task_types=["nope"])
    with pytest.raises(UsageError):
        generate_tasks(3, task_types=[])
    with pytest.raises(UsageError):
        check_answer("nope", "1", "1")
    with pytest.raises(UsageError):
        generate_tasks(-1)
