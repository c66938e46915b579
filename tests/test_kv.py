"""The slot KV cache's attention groups (kv.attention_partition) and row sorting (SlotCache.sort_rows):
the split is the cheapest one, a sort moves every row's keys, values and length together, and the
engine's greedy tokens do not change when its rows are grouped and sorted."""

from __future__ import annotations

import itertools
import random

import torch
from transformers.cache_utils import DynamicCache

from test_engine import PROMPTS, lively_llama, reference_greedy
from tunesmith.generation import kv
from tunesmith.generation.engine import Engine
from tunesmith.generation.kv import PromptKV, SlotCache, attention_partition, partition_cost
from tunesmith.generation.requests import SamplingParams


def all_partitions(n: int):
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [n]
        yield list(zip(bounds[:-1], bounds[1:]))


def test_attention_partition_is_the_cheapest_contiguous_split():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.choice([rng.randrange(1, 50), rng.randrange(200, 3000)]) for _ in range(rng.randrange(1, 9))]
        cost = rng.choice([0, 64, 768, 5000])
        got = attention_partition(lengths, cost)
        assert [s for s, _ in got][0] == 0 and got[-1][1] == len(lengths)
        assert all(e1 == s2 for (_, e1), (s2, _) in zip(got, got[1:]))  # contiguous, in order
        best = min(partition_cost(lengths, p, cost) for p in all_partitions(len(lengths)))
        assert partition_cost(lengths, got, cost) == best
    # a 2,600-token row among 100-token ones gets a range of its own; equal rows stay together
    assert attention_partition([100] * 5 + [2600] + [120] * 10, 768) == [(0, 5), (5, 6), (6, 16)]
    assert attention_partition([300] * 12, 768) == [(0, 12)]
    assert attention_partition([], 768) == []


def _cache_with_rows(lengths: list[int]) -> tuple[SlotCache, list[torch.Tensor]]:
    """A 2-layer slot cache holding one row per length; row j's keys are all j + 1 (values -(j + 1))
    at its filled columns, so a row can be recognised wherever it moves."""
    prefill = DynamicCache()
    total = sum(lengths)
    marks = torch.cat([torch.full((n,), float(j + 1)) for j, n in enumerate(lengths)])  # [L]
    for layer in range(2):
        keys = marks[None, None, :, None].expand(1, 2, total, 4).clone()  # [1, H=2, L, D=4]
        prefill.update(keys, -keys, layer)
    cache = SlotCache(prefill, slots=len(lengths))
    start = 0
    for n in lengths:
        cache.add(PromptKV(prefill, start, n))
        start += n
    return cache, marks


def test_sort_rows_moves_each_rows_keys_values_and_length_together_when_it_pays():
    lengths = [30, 900, 40, 880, 35, 910]  # long and short rows interleaved: every range mixes them
    cache, _ = _cache_with_rows(lengths)
    for _ in range(kv.SORT_EVERY - 1):
        assert cache.sort_rows() is None  # only every SORT_EVERY calls
    order = cache.sort_rows()
    assert order == [5, 1, 3, 2, 4, 0]  # longest first
    assert cache._lens_host[:6] == [910, 900, 880, 40, 35, 30]
    assert cache.lens[:6].tolist() == [910, 900, 880, 40, 35, 30]
    for slot, row in enumerate(order):
        n = lengths[row]
        for layer in range(2):
            assert torch.all(cache.keys[layer][slot, :, :n] == row + 1)
            assert torch.all(cache.values[layer][slot, :, :n] == -(row + 1))
    assert cache.attention_groups() == [(0, 3, 911), (3, 6, 41)]
    for _ in range(kv.SORT_EVERY):
        assert cache.sort_rows() is None  # sorted already


def test_sort_rows_leaves_rows_alone_when_the_copy_would_not_pay():
    cache, _ = _cache_with_rows([50, 60, 55, 52])  # one range is cheapest in any order
    assert [cache.sort_rows() for _ in range(kv.SORT_EVERY)] == [None] * kv.SORT_EVERY
    assert cache._lens_host[:4] == [50, 60, 55, 52]


def test_grouped_and_sorted_rows_decode_the_tokens_each_prompt_gets_alone(monkeypatch):
    """Steps split into ranges of rows (a small GROUP_COST for these short prompts) and the rows
    sorted whenever that saves anything at all, while requests of different lengths join and leave
    a batch of 4: the greedy tokens are still model.generate's."""
    monkeypatch.setattr(kv, "GROUP_COST", 6)
    monkeypatch.setattr(kv, "SORT_EVERY", 1)
    monkeypatch.setattr(kv, "SORT_HORIZON", 10 ** 9)
    sorts, groups = [], []
    sort_rows, attention_groups = SlotCache.sort_rows, SlotCache.attention_groups
    monkeypatch.setattr(SlotCache, "sort_rows", lambda self: sorts.append(sort_rows(self)) or sorts[-1])
    monkeypatch.setattr(SlotCache, "attention_groups", lambda self: groups.append(attention_groups(self)) or groups[-1])
    model = lively_llama()
    engine = Engine(model, None, max_batch=4, stop_token_ids=set())
    prompts = PROMPTS + [p[::-1] + [7] * 9 for p in PROMPTS]
    max_tokens = [3, 14, 5, 11, 2, 9, 13, 4, 8, 12, 6, 10]
    handles = [engine.submit(p, SamplingParams(max_tokens=k)) for p, k in zip(prompts, max_tokens)]
    while not all(h.done.is_set() for h in handles):
        engine._step()
    assert sum(order is not None for order in sorts) >= 2  # rows did move
    assert any(len(g) > 1 for g in groups)  # and steps did attend per range
    for prompt, k, handle in zip(prompts, max_tokens, handles):
        assert handle.completions()[0].token_ids == reference_greedy(model, prompt, k)
