"""Robustness phrasings: every task type parses and every phrasing keeps the item's data."""

import re

import pytest

from tunesmith.data.tasks import TASK_TYPES, generate_tasks
from tunesmith.evalsets.phrasings import PHRASINGS, n_phrasings, rephrase


def test_every_task_type_has_phrasings_and_canonical_round_trips():
    assert set(PHRASINGS) == set(TASK_TYPES)
    assert n_phrasings() >= 3
    for item in generate_tasks(13 * 20, seed=4):
        assert rephrase(item, 0) == item.prompt  # template 0 is the canonical wording
        variants = [rephrase(item, t) for t in range(n_phrasings())]
        assert len(set(variants)) == len(variants)  # really different phrasings
        # The payload (numbers / words / e-mail) survives every rephrasing.
        payload = re.findall(r"\d+|[\w.]+@[\w.]+", item.prompt)
        for v in variants:
            assert re.findall(r"\d+|[\w.]+@[\w.]+", v) == payload or sorted(re.findall(r"\d+|[\w.]+@[\w.]+", v)) == sorted(payload)


def test_unparseable_prompt_is_an_error():
    from tunesmith.data.tasks import TaskItem

    with pytest.raises(ValueError, match="does not match its robustness parser"):
        rephrase(TaskItem("add_numbers", "add 2 and 3", "5"), 1)
