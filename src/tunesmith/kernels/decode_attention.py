"""Attention for one new token per row over a KV cache (the generation engine's decode step).

PyTorch's CPU SDPA sends a one-token query with a mask to its flash kernel, which on this 2-core CPU
spent 70% of a 32-row decode step in attention (5.8 ms per layer for 32 x 9 heads x 330 columns:
about 24 MFLOP of work). Two batched matmuls and a softmax do the same in a fraction of that:
with grouped-query attention the query heads of one key/value head are one [group, D] matrix, so
keys and values are read in place, never repeated or copied.

Used only inside `decode_attention_enabled(model)`, which the engine's decode step enters; any call
with more than one query position (a prefill) goes to the standard SDPA function unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from .attention import attention_enabled

NAME = "tunesmith_decode"


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """query [n, H, 1, D], key/value [n, H_kv, W, D], attention_mask bool [n, 1, 1, W] (True: attend)
    or additive float, or None -> [n, 1, H, D]."""
    rows, heads, q_len, dim = query.shape
    if q_len != 1 or module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    kv_heads = key.shape[1]
    q = query.reshape(rows, kv_heads, heads // kv_heads, dim)  # [n, H_kv, group, D]
    scale = scaling if scaling is not None else dim ** -0.5
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale  # [n, H_kv, group, W]
    if attention_mask is not None:
        mask = attention_mask.reshape(rows, 1, 1, -1)  # [n, 1, 1, W]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1).to(value.dtype)  # softmax in fp32, as SDPA accumulates
    out = torch.matmul(probs, value)  # [n, H_kv, group, D]
    return out.reshape(rows, 1, heads, dim), None


AttentionInterface.register(NAME, decode_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def decode_attention_enabled(model):
    """Use decode attention inside the block (see kernels.attention.attention_enabled)."""
    return attention_enabled(model, NAME)
