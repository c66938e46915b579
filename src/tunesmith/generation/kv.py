"""The running batch's KV cache: one slot per row, written in place. A row that joins is copied into
the next free slot; a row that leaves is replaced by the last row; nothing else moves, except when
sort_rows() puts the rows in order of length (below).

Each layer keeps buffers [S, H, capacity, D] for S = the engine's max_batch slots. The live rows
occupy slots [0, n), so a decode step reads views, never copies. Row r's tokens fill columns
[0, lens[r]) (right padding): a decode step writes row r's new keys/values at column lens[r] and
attends over columns [0, W), W = max(lens) + 1, with a mask that keeps each row to its own prefix.
Row r's position id is lens[r], its count of real tokens, as `model.generate` computes it.

A decode step need not read all of [0, W) for every row: rows differ in length (a 2,600-token
prompt next to 100-token ones, a row that joined 500 steps after another), and reading the KV cache
is most of a step's cost. `attention_groups()` splits the live rows into contiguous slot ranges,
each of which attends over its own longest row only; the split minimises the columns read plus a
fixed cost per range (`GROUP_COST`), and is recomputed only when rows join or leave (every row
grows by one column per step, which leaves the best split the best). A leaving row's slot takes
the last row, which mixes short rows into long ranges over time; `sort_rows()` puts the rows back
in order of length when the columns that saves within SORT_HORIZON steps outweigh the copy.

Why slots: the previous layout (one left-padded block, rebuilt whenever a row joined or left)
copied the whole cache on every join and leave. Under a steady stream of requests that happens
every few steps, and on IFBench (outputs up to 512 tokens, 32 rows) each rebuild copied ~0.9 GB.
Here a join copies the newcomer's prompt once and a leave copies one row.

The caches are transformers `Cache`s, so any causal LM's forward takes them as `cache=`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

GROW = 64  # spare columns allocated at a time, so the buffers are reallocated every ~GROW steps at most
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


def prefill_cache() -> DynamicCache:
    """The cache a prefill fills (one row: the prompts' columns one after another)."""
    return DynamicCache()


@dataclass(frozen=True)
class PromptKV:
    """One prompt's keys and values: columns [start, start + length) of a prefill cache."""

    cache: DynamicCache
    start: int
    length: int


class SlotLayer(DynamicLayer):
    """One layer's view of the slot buffers of its SlotCache (see the module docstring)."""

    def __init__(self, owner: "SlotCache", index: int):
        super().__init__()
        self.owner, self.index = owner, index
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new column per live row (key_states [n, H, 1, D]) at column lens[r]; return
        the live rows' keys and values over all columns: [n, H, capacity, D]. Whole slots are
        contiguous, so attention reads them in place; the step's mask hides every column at or
        past a row's length + 1 (at most a quarter of them, see _ensure)."""
        owner = self.owner
        n = key_states.shape[0]
        if key_states.shape[-2] != 1 or n != owner.n:
            raise ValueError(f"a slot cache takes one new token for each of its {owner.n} rows, "
                             f"got {tuple(key_states.shape)}")
        k_buf, v_buf = owner.keys[self.index], owner.values[self.index]
        rows, cols = owner.row_ids[:n], owner.lens[:n]
        k_buf[rows, :, cols] = key_states[:, :, 0]  # [n, H, D] scattered to each row's own column
        v_buf[rows, :, cols] = value_states[:, :, 0]
        return k_buf[:n], v_buf[:n]

    def get_seq_length(self) -> int:
        return self.owner.width

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.capacity, 0

    def get_max_length(self) -> int:
        return -1


class SlotCache(Cache):
    """KV slots for up to `slots` rows; `n` are live; `lens[r]` = tokens cached for row r."""

    def __init__(self, template: DynamicCache, slots: int):
        """template: a prefill cache (its layers' head counts, head sizes, dtype and device)."""
        layers = template.layers
        first = layers[0].keys  # [1, H, L, D]
        self.device, self.dtype = first.device, first.dtype
        self.slots, self.n, self.capacity = slots, 0, 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.shapes = [(lay.keys.shape[1], lay.keys.shape[3], lay.values.shape[3]) for lay in layers]
        self.lens = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.row_ids = torch.arange(slots, device=self.device)
        self._lens_host = [0] * slots  # lens on the host: width and growth without a device sync
        self._ranges: list[tuple[int, int]] | None = None  # attention_groups' split, until rows change
        self._sort_calls = 0
        super().__init__(layers=[SlotLayer(self, i) for i in range(len(layers))])
        self._grow(GROW)

    @property
    def width(self) -> int:
        """Columns the longest live row fills."""
        return max(self._lens_host[:self.n], default=0)

    def attention_groups(self) -> list[tuple[int, int, int]]:
        """(start, end, columns): contiguous ranges of live rows and the columns each must read in
        the next decode step (its longest row's length + the new column); see the module docstring."""
        if self._ranges is None:
            self._ranges = attention_partition(self._lens_host[:self.n])
        return [(start, end, max(self._lens_host[start:end]) + 1) for start, end in self._ranges]

    def sort_rows(self) -> list[int] | None:
        """Every SORT_EVERY calls, if it pays (module docstring): move the live rows into order of
        length, longest first, and return the order (slot r now holds the row that was in slot
        order[r]; callers reorder their rows the same way); else None."""
        self._sort_calls += 1
        if self._sort_calls % SORT_EVERY or self.n < 2:
            return None
        lengths = self._lens_host[:self.n]
        order = sorted(range(self.n), key=lambda r: -lengths[r])
        if order == list(range(self.n)):
            return None
        if self._ranges is None:
            self._ranges = attention_partition(lengths)
        ordered = [lengths[r] for r in order]
        ordered_ranges = attention_partition(ordered)
        now, after = partition_cost(lengths, self._ranges), partition_cost(ordered, ordered_ranges)
        copy = 2 * self.n * self.width  # the live rows' columns [0, width) read and written once
        if (now - after) * SORT_HORIZON <= copy:
            return None
        index = torch.tensor(order, device=self.device)
        width = self.width
        for buf in (*self.keys, *self.values):
            buf[:self.n, :, :width] = buf[index, :, :width]  # gathered into a new tensor, then copied back
        self.lens[:self.n] = self.lens[index]
        self._lens_host[:self.n] = ordered
        self._ranges = ordered_ranges
        return order

    def row_lengths(self) -> torch.Tensor:
        """Tokens cached for each live row: [n]."""
        return self.lens[:self.n]

    def add(self, prompt: PromptKV) -> int:
        """Copy one prompt's keys and values into the next free slot; return the slot."""
        if self.n >= self.slots:
            raise RuntimeError(f"all {self.slots} slots are in use")
        start, length = prompt.start, prompt.length
        self._ensure(length + 1)
        slot = self.n
        for i, layer in enumerate(prompt.cache.layers):
            self.keys[i][slot, :, :length] = layer.keys[0, :, start:start + length]  # [H, L, D]
            self.values[i][slot, :, :length] = layer.values[0, :, start:start + length]
        self.lens[slot] = length
        self._lens_host[slot] = length
        self.n += 1
        self._ranges = None
        return slot

    def remove(self, slot: int) -> None:
        """Free `slot`: the last live row moves into it (callers reorder their rows the same way)."""
        last = self.n - 1
        if slot != last:
            length = self._lens_host[last]
            for buf in (*self.keys, *self.values):
                buf[slot, :, :length] = buf[last, :, :length]
            self.lens[slot] = length
            self._lens_host[slot] = length
        self.n -= 1
        self._ranges = None

    def before_step(self) -> None:
        """Make room for one more column in every live row (call before a decode forward)."""
        self._ensure(self.width + 1)

    def after_step(self) -> None:
        """Count the column the decode forward just wrote in every live row."""
        self.lens[:self.n] += 1
        for r in range(self.n):
            self._lens_host[r] += 1

    def _ensure(self, columns: int) -> None:
        if columns > self.capacity:
            self._grow(columns + max(GROW, columns // 4))

    def _grow(self, capacity: int) -> None:
        """Reallocate every buffer with `capacity` columns, keeping the live rows' columns."""
        keep = self.width
        for bufs, dim in ((self.keys, 1), (self.values, 2)):
            for i, (heads, *dims) in enumerate(self.shapes):
                new = torch.zeros((self.slots, heads, capacity, dims[dim - 1]), dtype=self.dtype,
                                  device=self.device)  # [S, H, capacity, D]
                if i < len(bufs):
                    new[:self.n, :, :keep] = bufs[i][:self.n, :, :keep]
                    bufs[i] = new
                else:
                    bufs.append(new)
        self.capacity = capacity
