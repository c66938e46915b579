"""Packed attention without an L x L mask.

transformers' SDPA path turns a packed row into one [L, L] block-diagonal mask, and PyTorch's CPU
kernel then does the full L^2 work (and loses its fast causal path). Here the packed row is
scattered into a right-padded batch [n_samples, H, max_len, D] and attended with `is_causal=True`:
right padding sits after every real key, so causality alone keeps real queries off padding, the
work is n * max_len^2 instead of L^2, and the result is gathered back into the packed layout.

Used only through `packed_attention_enabled(model)` (training and loss evaluation); anything that
is not a single packed row with restarting position ids (generation with a KV cache, left-padded
batches) goes to the standard SDPA function unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "tunesmith_packed"


def _to_padded(x: torch.Tensor, slots: torch.Tensor, n: int, width: int) -> torch.Tensor:
    # x [1, H, L, D] -> [n, H, width, D] with token t at (sample, position) = divmod(slots[t], width)
    _, h, _, d = x.shape
    out = x.new_zeros(n * width, h, d)
    out = out.index_copy(0, slots, x[0].transpose(0, 1))  # [n*width, H, D]
    return out.view(n, width, h, d).transpose(1, 2)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention for one packed row (query [1, H, L, D], key/value [1, H_kv, L, D]) -> [1, L, H, D]."""
    pos = kwargs.get("position_ids")
    length = query.shape[2]
    if (query.shape[0] != 1 or pos is None or key.shape[2] != length or pos.shape[-1] != length
            or int(pos.reshape(-1)[0]) != 0):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    pos = pos.reshape(-1)  # [L], restarting at 0 for every sample, +1 per token
    drop = dropout if module.training else 0.0
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # GQA: share each key/value head among `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    starts = pos == 0
    n = int(starts.sum())
    if n == 1:
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=drop, is_causal=True, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    width = int(pos.max()) + 1
    sample = torch.cumsum(starts.long(), 0) - 1  # [L] which sample each token belongs to
    slots = sample * width + pos  # [L] flat index into the padded batch
    q, k, v = (_to_padded(t, slots, n, width) for t in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True, scale=scaling)  # [n, H, W, D]
    out = out.transpose(1, 2).reshape(n * width, out.shape[1], out.shape[3])[slots]  # [L, H, D]
    return out.unsqueeze(0), None


AttentionInterface.register(NAME, packed_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def packed_attention_enabled(model):
    """Use packed attention inside the block; the model's own setting is restored afterwards."""
    config = model.config
    old = config._attn_implementation
    if old not in ("sdpa", NAME):  # eager / flash models keep their own kernel
        yield
        return
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = old
