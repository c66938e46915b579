"""The running batch's KV cache: one left-padded block per layer, written in place, rebuilt when
sequences join or leave.

Every row of the batch ends at the same column `length`; row r's first `pads[r]` columns are
padding (masked out, kept at zero). A decode step writes each layer's new keys/values at column
`length` of a preallocated buffer, so no step concatenates (DynamicCache's `torch.cat` was ~17% of
a batch-16 decode step on CPU). When rows leave or new ones join, `merge` copies the surviving rows
into a new block that is right-aligned at the longest row and holds no column that every row pads,
so memory follows the live sequences.

The cache is a transformers `Cache`, so any causal LM's forward takes it as `cache=`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

GROW = 64  # spare columns allocated at a time, so a buffer is reallocated every ~GROW steps at most


class SlabLayer(DynamicLayer):
    """One layer's keys and values in buffers [B, H, capacity, D]; columns [0, length) are filled."""

    def __init__(self, k_buf: torch.Tensor | None = None, v_buf: torch.Tensor | None = None, length: int = 0):
        super().__init__()
        self.length = length
        if k_buf is not None:
            self.k_buf, self.v_buf = k_buf, v_buf
            self.device, self.is_initialized = k_buf.device, True
            self._view()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self.k_buf = key_states.new_zeros((b, h, 0, d))
        self.v_buf = value_states.new_zeros((b, h, 0, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new columns [B, H, q, D] after the filled ones; return the filled views."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.k_buf.shape[-2]:
            self._grow(end)
        self.k_buf[:, :, self.length:end] = key_states
        self.v_buf[:, :, self.length:end] = value_states
        self.length = end
        self._view()
        return self.keys, self.values

    def _grow(self, need: int) -> None:
        cap = need + max(GROW, need // 4)
        for name in ("k_buf", "v_buf"):
            old = getattr(self, name)
            new = old.new_zeros((old.shape[0], old.shape[1], cap, old.shape[3]))
            new[:, :, :self.length] = old[:, :, :self.length]
            setattr(self, name, new)

    def _view(self) -> None:
        self.keys = self.k_buf[:, :, :self.length]  # [B, H, length, D]
        self.values = self.v_buf[:, :, :self.length]

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def reset(self) -> None:
        self.length = 0
        super().reset()


class BatchCache(Cache):
    """A left-padded KV cache for a batch of sequences; `pads[r]` = padding columns of row r."""

    def __init__(self, layers: list[SlabLayer] | None = None, pads: torch.Tensor | None = None):
        if layers is None:
            super().__init__(layer_class_to_replicate=SlabLayer)
        else:
            super().__init__(layers=layers)
        self.pads = pads  # [B] long, on the model's device

    @property
    def length(self) -> int:
        """Columns filled in every layer (padding included)."""
        return self.layers[0].length if self.layers else 0

    @property
    def rows(self) -> int:
        return 0 if self.pads is None else int(self.pads.shape[0])

    def lengths(self) -> torch.Tensor:
        """Real (unpadded) tokens of each row: [B]."""
        return self.length - self.pads


def merge(parts: list[tuple[BatchCache, list[int]]], spare: int = GROW) -> BatchCache | None:
    """A new cache holding, in order, rows `rows` of each (cache, rows) part (a row may repeat: a
    prompt's prefill copied once per completion), right-aligned at the end of the longest kept row;
    columns that every kept row pads are dropped. None when no row is kept."""
    parts = [(c, rows) for c, rows in parts if rows]
    if not parts:
        return None
    device = parts[0][0].pads.device
    picks, width = [], 0
    for cache, rows in parts:
        idx = torch.tensor(rows, dtype=torch.long, device=device)
        first = int(cache.pads.index_select(0, idx).min())  # leading columns all these rows pad
        contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
        picks.append((cache, idx, first, contiguous, rows))
        width = max(width, cache.length - first)
    total = sum(len(p[4]) for p in picks)
    pads = torch.cat([width - cache.lengths().index_select(0, idx) for cache, idx, *_ in picks])
    layers = []
    for i in range(len(parts[0][0].layers)):
        bufs = []
        for name in ("k_buf", "v_buf"):
            ref = getattr(parts[0][0].layers[i], name)
            out = ref.new_zeros((total, ref.shape[1], width + spare, ref.shape[3]))  # [B, H, W + spare, D]
            r0 = 0
            for cache, idx, first, contiguous, rows in picks:
                src = getattr(cache.layers[i], name)[:, :, first:cache.length]  # [B_part, H, T_part - first, D]
                src = src[rows[0]:rows[0] + len(rows)] if contiguous else src.index_select(0, idx)
                out[r0:r0 + len(rows), :, width - src.shape[2]:width] = src
                r0 += len(rows)
            bufs.append(out)
        layers.append(SlabLayer(bufs[0], bufs[1], width))
    return BatchCache(layers, pads)
