"""The slot KV cache's pools by prompt length, attention groups (kv.attention_partition) and row
sorting (SlotCache.sort_rows): a long prompt does not widen the short rows' slots, rows keep their
keys, values and lengths through joins, leaves and sorts, the split is the cheapest one, and the
engine's greedy tokens do not change when its rows are pooled, grouped and sorted."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from transformers.cache_utils import DynamicCache

from test_engine import PROMPTS, lively_llama, reference_greedy
from tunesmith.generation import kv
from tunesmith.generation.engine import Engine
from tunesmith.generation.kv import PromptKV, SlotCache, SlotPool, attention_partition, partition_cost
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


def _cache_with_rows(lengths: list[int], pooled: bool = True) -> tuple[SlotCache, list[torch.Tensor]]:
    """A 2-layer slot cache holding one row per length; row j's keys are all j + 1 (values -(j + 1))
    at its filled columns, so a row can be recognised wherever it moves."""
    prefill = DynamicCache()
    total = sum(lengths)
    marks = torch.cat([torch.full((n,), float(j + 1)) for j, n in enumerate(lengths)])  # [L]
    for layer in range(2):
        keys = marks[None, None, :, None].expand(1, 2, total, 4).clone()  # [1, H=2, L, D=4]
        prefill.update(keys, -keys, layer)
    cache = SlotCache(prefill, slots=len(lengths), pooled=pooled)
    start = 0
    for n in lengths:
        cache.add(PromptKV(prefill, start, n))
        start += n
    return cache, marks


def _row_marks(cache: SlotCache) -> list[int]:
    """Which row (its mark) each row of the cache holds, checked over its filled columns in every
    layer's keys and values."""
    marks = []
    for offset, pool in cache.segments():
        for slot in range(pool.n):
            n = pool._lens_host[slot]
            mark = int(pool.keys[0][slot, 0, 0, 0])
            assert pool.lens[slot] == n
            for layer in range(2):
                assert torch.all(pool.keys[layer][slot, :, :n] == mark)
                assert torch.all(pool.values[layer][slot, :, :n] == -mark)
            marks.append(mark)
    return marks


def test_pools_keep_a_long_prompt_from_widening_the_short_rows():
    """Rows join the pool of their length class; the cache's rows are the pools' rows in class
    order; a leave moves its pool's last row in; an emptied pool's buffers are dropped."""
    lengths = [100, 2591, 120, 700, 90]  # classes 512, 4096, 512, 1024, 512
    prefill = DynamicCache()
    marks = torch.cat([torch.full((n,), float(j + 1)) for j, n in enumerate(lengths)])
    for layer in range(2):
        keys = marks[None, None, :, None].expand(1, 2, len(marks), 4).clone()
        prefill.update(keys, -keys, layer)
    cache = SlotCache(prefill, slots=8)
    rows, start = [], 0
    for n in lengths:
        rows.append(cache.add(PromptKV(prefill, start, n)))
        start += n
    assert rows == [0, 1, 1, 2, 2]  # each new row goes after its own pool's rows
    assert [(offset, pool.n) for offset, pool in cache.segments()] == [(0, 3), (3, 1), (4, 1)]
    assert _row_marks(cache) == [1, 3, 5, 4, 2]
    assert cache.row_lengths().tolist() == [100, 120, 90, 700, 2591]
    short, middle, long = (pool for _, pool in cache.segments())
    assert short.capacity < 256 and long.capacity >= 2592  # the short rows are not 2,591 columns wide
    assert [short.slots, middle.slots, long.slots] == [4, 1, 1]  # 1 slot, doubled as rows join
    # 2 layers x (keys + values) x 2 heads x 4 dims x 4 bytes per slot column
    assert cache.memory_bytes() == 128 * (4 * short.capacity + middle.capacity + long.capacity)
    assert cache.remove(0) == 2  # row 0 (mark 1) ends: its pool's last row (mark 5) takes its slot
    assert _row_marks(cache) == [5, 3, 4, 2]
    assert cache.remove(3) == 3  # the long row ends: its pool empties and goes
    assert _row_marks(cache) == [5, 3, 4] and len(cache.segments()) == 2
    cache.before_step()
    cache.after_step()
    assert cache.row_lengths().tolist() == [91, 121, 701]
    with pytest.raises(IndexError):
        cache.remove(3)


def test_a_pool_grows_its_slots_and_columns_keeping_its_rows():
    cache, _ = _cache_with_rows([40 + j for j in range(11)])  # one class: one pool, at most 11 rows
    (_, pool), = cache.segments()
    assert pool.slots == pool.n == 11  # 1, 2, 4, 8, then 16 capped at the most rows
    capacity, width = pool.capacity, pool.width
    for _ in range(capacity - width + 1):
        cache.before_step()
        cache.after_step()
    assert pool.capacity > capacity and pool.width == capacity + 1
    for slot in range(pool.n):  # the prompt columns came along; the columns after them are zeros
        prompt = 40 + slot
        for buf, sign in ((pool.keys[1], 1), (pool.values[1], -1)):
            assert torch.all(buf[slot, :, :prompt] == sign * (slot + 1))
            assert torch.all(buf[slot, :, prompt:] == 0)


def test_sort_rows_moves_each_rows_keys_values_and_length_together_when_it_pays():
    lengths = [30, 400, 40, 380, 35, 410]  # long and short rows interleaved (one pool): every range mixes them
    cache, _ = _cache_with_rows(lengths)
    (_, pool), = cache.segments()
    for _ in range(kv.SORT_EVERY - 1):
        assert cache.sort_rows() is None  # only every SORT_EVERY calls
    order = cache.sort_rows()
    assert order == [5, 1, 3, 2, 4, 0]  # longest first
    assert pool._lens_host == [410, 400, 380, 40, 35, 30]
    assert _row_marks(cache) == [row + 1 for row in order]
    assert pool.attention_groups() == [(0, 3, 411), (3, 6, 41)]
    for _ in range(kv.SORT_EVERY):
        assert cache.sort_rows() is None  # sorted already


def test_sort_rows_leaves_rows_alone_when_the_copy_would_not_pay():
    cache, _ = _cache_with_rows([50, 60, 55, 52])  # one range is cheapest in any order
    assert [cache.sort_rows() for _ in range(kv.SORT_EVERY)] == [None] * kv.SORT_EVERY
    assert _row_marks(cache) == [1, 2, 3, 4]


@pytest.mark.parametrize("min_pool_columns", [512, 2])
def test_grouped_and_sorted_rows_decode_the_tokens_each_prompt_gets_alone(monkeypatch, min_pool_columns):
    """Steps split into ranges of rows (a small GROUP_COST for these short prompts) and the rows
    sorted whenever that saves anything at all, while requests of different lengths join and leave
    a batch of 4, in one pool or (classes from 2 columns) in pools of 2 to 32 columns: the greedy
    tokens are still model.generate's."""
    monkeypatch.setattr(kv, "MIN_POOL_COLUMNS", min_pool_columns)
    monkeypatch.setattr(kv, "GROUP_COST", 6)
    monkeypatch.setattr(kv, "SORT_EVERY", 1)
    monkeypatch.setattr(kv, "SORT_HORIZON", 10 ** 9)
    sorts, groups, pools = [], [], []
    sort_rows, attention_groups = SlotCache.sort_rows, SlotPool.attention_groups
    monkeypatch.setattr(SlotCache, "sort_rows",
                        lambda self: pools.append(len(self.segments())) or sorts.append(sort_rows(self)) or sorts[-1])
    monkeypatch.setattr(SlotPool, "attention_groups", lambda self: groups.append(attention_groups(self)) or groups[-1])
    model = lively_llama()
    engine = Engine(model, None, max_batch=4, stop_token_ids=set())
    prompts = PROMPTS + [p[::-1] + [7] * 9 for p in PROMPTS]
    max_tokens = [3, 14, 5, 11, 2, 9, 13, 4, 8, 12, 6, 10]
    handles = [engine.submit(p, SamplingParams(max_tokens=k)) for p, k in zip(prompts, max_tokens)]
    while not all(h.done.is_set() for h in handles):
        engine._step()
    if min_pool_columns == 512:
        assert max(pools) == 1
        assert sum(order is not None for order in sorts) >= 2  # rows did move
        assert any(len(g) > 1 for g in groups)  # and steps did attend per range
    else:
        assert max(pools) == 4  # up to 4 pools at once: rows joined and left pools in the middle of the batch
    for prompt, k, handle in zip(prompts, max_tokens, handles):
        assert handle.completions()[0].token_ids == reference_greedy(model, prompt, k)
