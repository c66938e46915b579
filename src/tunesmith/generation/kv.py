"""The running batch's KV cache: slots written in place, in pools by prompt length. A row that joins
is copied into the next free slot of its pool; a row that leaves is replaced by its pool's last row;
nothing else moves, except when sort_rows() puts a pool's rows in order of length (below).

A pool keeps, per layer, buffers [S, H, capacity, D]: S slots (grown as rows join, up to the
engine's max_batch) of `capacity` columns (grown as its longest row grows). Its live rows occupy
slots [0, n), so a decode step reads views, never copies. Row r's tokens fill columns [0, lens[r])
(right padding): a decode step writes row r's new keys/values at column lens[r] and attends over
columns up to its longest row's, with a mask that keeps each row to its own prefix. Row r's position
id is lens[r], its count of real tokens, as `model.generate` computes it.

Why pools: every slot of a pool has the pool's capacity, so one long row would make every row
that long. On IFBench (one 2,591-token prompt beside prompts of 45-264 tokens, 512 new tokens each)
a single pool of 48 slots held 48 x 3,240 columns (7.2 GB in fp32 for SmolLM2-135M) where the rows
needed ~1.6 GB. A prompt joins the pool of its length class (`length_class`: the next power of two,
at least MIN_POOL_COLUMNS), so short rows share a short pool and the long one gets its own; a pool
that empties gives its memory back. The cache's rows are the pools' rows one pool after another,
pools in order of class (`segments()`); the model's own forward (no written-out step) needs one
block of rows, so it gets one pool (`pooled=False`).

A decode step need not read a pool's whole width for every row either: rows differ in length (a
row that joined 500 steps after another), and reading the KV cache is most of a step's cost.
`SlotPool.attention_groups()` splits a pool's live rows into contiguous slot ranges, each of which
attends over its own longest row only; the split minimises the columns read plus a fixed cost per
range (`GROUP_COST`), and is recomputed only when rows join or leave (every row grows by one column
per step, which leaves the best split the best). A leaving row's slot takes the last row, which
mixes short rows into long ranges over time; `sort_rows()` puts a pool's rows back in order of
length when the columns that saves within SORT_HORIZON steps outweigh the copy.

Why slots: the layout before them (one left-padded block, rebuilt whenever a row joined or left)
copied the whole cache on every join and leave. Under a steady stream of requests that happens
every few steps, and on IFBench (outputs up to 512 tokens, 32 rows) each rebuild copied ~0.9 GB.
Here a join copies the newcomer's prompt once and a leave copies one row.

The cache is a transformers `Cache`, so any causal LM's forward takes it as `cache=` (one pool).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

GROW = 64  # spare columns allocated at a time, so a pool's buffers are reallocated every ~GROW steps at most
FIRST_SLOTS = 1  # slots a new pool starts with (doubled as rows join, up to max_batch): a pool of one long row holds one slot
MIN_POOL_COLUMNS = 512  # the shortest length class: prompts up to this many tokens share one pool
# The fixed cost of one more attention group, in row-columns of keys and values read: on this 2-core
# CPU one group's attention in one layer costs ~60 us (fp32) / ~130 us (bf16) whatever its size,
# plus ~0.1 us (fp32) / ~0.14 us (bf16) per row-column (SmolLM2-135M: 3 KV heads of 64).
GROUP_COST = 768
SORT_EVERY = 16  # decode steps between two checks of whether sorting the rows pays
SORT_HORIZON = 32  # steps a sort must pay back in (rows join and leave every few steps)


def attention_partition(lengths: list[int], group_cost: int | None = None) -> list[tuple[int, int]]:
    """Contiguous ranges [start, end) covering rows 0..n-1 that minimise, summed over the ranges,
    rows x (longest length in the range) + group_cost (default GROUP_COST; an exact O(n^2) dynamic
    program)."""
    group_cost = GROUP_COST if group_cost is None else group_cost
    n = len(lengths)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of rows [0, j)
    cut = [0] * (n + 1)  # cut[j]: where the last range of that split starts
    for j in range(1, n + 1):
        longest = 0
        for i in range(j - 1, -1, -1):
            longest = max(longest, lengths[i])
            cost = best[i] + (j - i) * longest + group_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    ranges, end = [], n
    while end > 0:
        ranges.append((cut[end], end))
        end = cut[end]
    return ranges[::-1]


def partition_cost(lengths: list[int], ranges: list[tuple[int, int]], group_cost: int | None = None) -> int:
    """What attention_partition minimises, for the given ranges of rows."""
    group_cost = GROUP_COST if group_cost is None else group_cost
    return sum((end - start) * max(lengths[start:end]) + group_cost for start, end in ranges)


def length_class(prompt_tokens: int) -> int:
    """The pool a prompt of this many tokens joins: the smallest power of two that holds it, at least
    MIN_POOL_COLUMNS."""
    columns = MIN_POOL_COLUMNS
    while columns < prompt_tokens:
        columns *= 2
    return columns


def prefill_cache() -> DynamicCache:
    """The cache a prefill fills (one row: the prompts' columns one after another)."""
    return DynamicCache()


@dataclass(frozen=True)
class PromptKV:
    """One prompt's keys and values: columns [start, start + length) of a prefill cache."""

    cache: DynamicCache
    start: int
    length: int


class SlotPool:
    """Slots for the rows of one length class: per layer, keys [S, H, capacity, D] and values
    [S, H, capacity, D_v]; live rows in slots [0, n); lens[r] = tokens cached for row r."""

    def __init__(self, shapes: list[tuple[int, int, int]], dtype: torch.dtype, device: torch.device,
                 max_slots: int):
        """shapes: (heads, key size, value size) per layer."""
        self.shapes, self.dtype, self.device, self.max_slots = shapes, dtype, device, max_slots
        self.n = self.slots = self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lens = torch.zeros(0, dtype=torch.long, device=device)
        self.row_ids = torch.arange(0, device=device)
        self._lens_host: list[int] = []  # lens of the live rows on the host: no device sync for widths
        self._ranges: list[tuple[int, int]] | None = None  # attention_groups' split, until rows change

    @property
    def width(self) -> int:
        """Columns the longest live row fills."""
        return max(self._lens_host, default=0)

    def attention_groups(self) -> list[tuple[int, int, int]]:
        """(start, end, columns): contiguous ranges of live rows and the columns each must read in
        the next decode step (its longest row's length + the new column); see the module docstring."""
        if self._ranges is None:
            self._ranges = attention_partition(self._lens_host)
        return [(start, end, max(self._lens_host[start:end]) + 1) for start, end in self._ranges]

    def sort_if_it_pays(self) -> list[int] | None:
        """If the columns saved within SORT_HORIZON steps outweigh the copy: move the live rows into
        order of length, longest first, and return the order (slot r now holds the row that was in
        slot order[r]); else None."""
        lengths = self._lens_host
        order = sorted(range(self.n), key=lambda r: -lengths[r])
        if order == list(range(self.n)):
            return None
        if self._ranges is None:
            self._ranges = attention_partition(lengths)
        ordered = [lengths[r] for r in order]
        ordered_ranges = attention_partition(ordered)
        now, after = partition_cost(lengths, self._ranges), partition_cost(ordered, ordered_ranges)
        width = self.width
        copy = 2 * self.n * width  # the live rows' columns [0, width) read and written once
        if (now - after) * SORT_HORIZON <= copy:
            return None
        index = torch.tensor(order, device=self.device)
        for buf in (*self.keys, *self.values):
            buf[:self.n, :, :width] = buf[index, :, :width]  # gathered into a new tensor, then copied back
        self.lens[:self.n] = self.lens[index]
        self._lens_host = ordered
        self._ranges = ordered_ranges
        return order

    def add(self, prompt: PromptKV) -> int:
        """Copy one prompt's keys and values into the next free slot; return the slot."""
        if self.n >= self.max_slots:
            raise RuntimeError(f"all {self.max_slots} slots are in use")
        length = prompt.length
        self._reserve(self.n + 1, length + 1)
        slot, start = self.n, prompt.start
        for i, layer in enumerate(prompt.cache.layers):
            self.keys[i][slot, :, :length] = layer.keys[0, :, start:start + length]  # [H, L, D]
            self.values[i][slot, :, :length] = layer.values[0, :, start:start + length]
        self.lens[slot] = length
        self._lens_host.append(length)
        self.n += 1
        self._ranges = None
        return slot

    def remove(self, slot: int) -> None:
        """Free `slot`: the last live row moves into it."""
        last = self.n - 1
        if slot != last:
            length = self._lens_host[last]
            for buf in (*self.keys, *self.values):
                buf[slot, :, :length] = buf[last, :, :length]
            self.lens[slot] = length
            self._lens_host[slot] = length
        self._lens_host.pop()
        self.n -= 1
        self._ranges = None

    def before_step(self) -> None:
        """Make room for one more column in every live row."""
        self._reserve(self.n, self.width + 1)

    def after_step(self) -> None:
        """Count the column a decode step just wrote in every live row."""
        self.lens[:self.n] += 1
        self._lens_host = [length + 1 for length in self._lens_host]

    def _reserve(self, rows: int, columns: int) -> None:
        """Reallocate the buffers if they lack `rows` slots or `columns` columns (slots double, columns
        grow by a quarter or GROW), keeping the live rows' columns."""
        if rows <= self.slots and columns <= self.capacity:
            return
        slots = self.slots if rows <= self.slots else min(self.max_slots, max(rows, 2 * self.slots, FIRST_SLOTS))
        capacity = self.capacity if columns <= self.capacity else columns + max(GROW, columns // 4)
        keep = self.width
        for bufs, dim in ((self.keys, 1), (self.values, 2)):
            for i, (heads, *sizes) in enumerate(self.shapes):
                new = torch.zeros((slots, heads, capacity, sizes[dim - 1]), dtype=self.dtype,
                                  device=self.device)  # [S, H, capacity, D]
                if i < len(bufs):
                    new[:self.n, :, :keep] = bufs[i][:self.n, :, :keep]
                    bufs[i] = new
                else:
                    bufs.append(new)
        lens = torch.zeros(slots, dtype=torch.long, device=self.device)
        lens[:self.n] = self.lens[:self.n]
        self.lens, self.row_ids = lens, torch.arange(slots, device=self.device)
        self.slots, self.capacity = slots, capacity


class SlotLayer(DynamicLayer):
    """One layer's view of the slot buffers of a one-pool SlotCache, for the model's own forward."""

    def __init__(self, owner: "SlotCache", index: int):
        super().__init__()
        self.owner, self.index = owner, index
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new column per live row (key_states [n, H, 1, D]) at column lens[r]; return
        the live rows' keys and values over all columns: [n, H, capacity, D]. Whole slots are
        contiguous, so attention reads them in place; the step's mask hides every column at or
        past a row's length + 1."""
        pool = self.owner.single_pool()
        n = key_states.shape[0]
        if key_states.shape[-2] != 1 or n != pool.n:
            raise ValueError(f"a slot cache takes one new token for each of its {pool.n} rows, "
                             f"got {tuple(key_states.shape)}")
        k_buf, v_buf = pool.keys[self.index], pool.values[self.index]
        rows, cols = pool.row_ids[:n], pool.lens[:n]
        k_buf[rows, :, cols] = key_states[:, :, 0]  # [n, H, D] scattered to each row's own column
        v_buf[rows, :, cols] = value_states[:, :, 0]
        return k_buf[:n], v_buf[:n]

    def get_seq_length(self) -> int:
        return self.owner.width

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.single_pool().capacity, 0

    def get_max_length(self) -> int:
        return -1


class SlotCache(Cache):
    """KV slots for up to `slots` rows, in pools by length class (module docstring). The cache's rows
    are the pools' live rows, pool after pool in order of class; `n` rows are live."""

    def __init__(self, template: DynamicCache, slots: int, pooled: bool = True):
        """template: a prefill cache (its layers' head counts, head sizes, dtype and device);
        pooled=False keeps every row in one pool (what the model's own forward needs)."""
        layers = template.layers
        first = layers[0].keys  # [1, H, L, D]
        self.device, self.dtype = first.device, first.dtype
        self.max_rows, self.pooled = slots, pooled
        self.shapes = [(lay.keys.shape[1], lay.keys.shape[3], lay.values.shape[3]) for lay in layers]
        self._pools: dict[int, SlotPool] = {}  # length class -> pool, in order of class; none without rows
        self._sort_calls = 0
        super().__init__(layers=[SlotLayer(self, i) for i in range(len(layers))])

    @property
    def n(self) -> int:
        """Live rows."""
        return sum(pool.n for pool in self._pools.values())

    @property
    def width(self) -> int:
        """Columns the longest live row fills."""
        return max((pool.width for pool in self._pools.values()), default=0)

    def segments(self) -> list[tuple[int, SlotPool]]:
        """(first row, pool) for each pool, in row order."""
        out, offset = [], 0
        for pool in self._pools.values():
            out.append((offset, pool))
            offset += pool.n
        return out

    def single_pool(self) -> SlotPool:
        """The one pool of a cache made with pooled=False."""
        if self.pooled or len(self._pools) != 1:
            raise RuntimeError("the model's own forward needs a slot cache with one pool (pooled=False)")
        return next(iter(self._pools.values()))

    def memory_bytes(self) -> int:
        """Bytes the pools' key and value buffers hold."""
        return sum(buf.numel() * buf.element_size() for pool in self._pools.values()
                   for buf in (*pool.keys, *pool.values))

    def row_lengths(self) -> torch.Tensor:
        """Tokens cached for each live row: [n]."""
        lens = [pool.lens[:pool.n] for _, pool in self.segments()]
        return lens[0] if len(lens) == 1 else torch.cat(lens)

    def add(self, prompt: PromptKV) -> int:
        """Copy one prompt's keys and values into a free slot of its length class's pool; return its
        row (rows of later pools move up by one)."""
        if self.n >= self.max_rows:
            raise RuntimeError(f"all {self.max_rows} slots are in use")
        cls = length_class(prompt.length) if self.pooled else 0
        if cls not in self._pools:
            self._pools[cls] = SlotPool(self.shapes, self.dtype, self.device, self.max_rows)
            self._pools = dict(sorted(self._pools.items()))  # rows are numbered pool by pool, in class order
        offset = sum(pool.n for c, pool in self._pools.items() if c < cls)
        return offset + self._pools[cls].add(prompt)

    def remove(self, row: int) -> int:
        """Free `row`: the last row of its pool moves into it, and rows of later pools move down by one.
        Returns the row that moved into `row`, as it was numbered before (`row` itself if it was its
        pool's last); callers reorder their rows the same way."""
        offset = 0
        for cls, pool in self._pools.items():
            if offset <= row < offset + pool.n:
                last = offset + pool.n - 1
                pool.remove(row - offset)
                if pool.n == 0:  # its buffers go back now
                    del self._pools[cls]
                return last
            offset += pool.n
        raise IndexError(f"row {row} of {self.n}")

    def sort_rows(self) -> list[int] | None:
        """Every SORT_EVERY calls, sort each pool's rows by length where that pays (SlotPool.
        sort_if_it_pays); return the order (row r now holds what row order[r] held; callers reorder
        their rows the same way), or None when nothing moved."""
        self._sort_calls += 1
        if self._sort_calls % SORT_EVERY or self.n < 2:
            return None
        order, moved = [], False
        for offset, pool in self.segments():
            local = pool.sort_if_it_pays() if pool.n > 1 else None
            moved |= local is not None
            order += [offset + r for r in (local if local is not None else range(pool.n))]
        return order if moved else None

    def before_step(self) -> None:
        """Make room for one more column in every live row (call before a decode forward)."""
        for pool in self._pools.values():
            pool.before_step()

    def after_step(self) -> None:
        """Count the column the decode forward just wrote in every live row."""
        for pool in self._pools.values():
            pool.after_step()
