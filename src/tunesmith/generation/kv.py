"""The running batch's KV cache: one slot per row, written in place. A row that joins is copied into
the next free slot; a row that leaves is replaced by the last row; nothing else ever moves.

Each layer keeps buffers [S, H, capacity, D] for S = the engine's max_batch slots. The live rows
occupy slots [0, n), so a decode step reads views, never copies. Row r's tokens fill columns
[0, lens[r]) (right padding): a decode step writes row r's new keys/values at column lens[r] and
attends over columns [0, W), W = max(lens) + 1, with a mask that keeps each row to its own prefix.
Row r's position id is lens[r], its count of real tokens, as `model.generate` computes it.

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
        super().__init__(layers=[SlotLayer(self, i) for i in range(len(layers))])
        self._grow(GROW)

    @property
    def width(self) -> int:
        """Columns the longest live row fills."""
        return max(self._lens_host[:self.n], default=0)

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
